"""Training: the whole data set held as tensors, batched augmentation, one-cycle SGD."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import allocator
from .config import EVAL_BATCH_CPU, EVAL_BATCH_GPU, PIXEL_MEAN, PIXEL_STD, ConfigError, Recipe
from .model import Net, NetShape

# Random affine augmentation, drawn per digit: translations up to 2 px, rotations
# up to ~8.6 degrees, scaling by up to 10% — small enough that a digit stays the
# same digit (a 6 never turns into a 9).
MAX_SHIFT_PX = 2.0
MAX_ROTATION_RAD = 0.15
MAX_SCALE = 0.10
# One-cycle learning rate: a linear warm-up over the first quarter of the steps
# from 1/25 of the peak (large steps on an untrained net diverge), then a linear
# decay to zero so the last steps settle into a minimum.
WARMUP_FRACTION = 0.25
WARMUP_START = 1 / 25
MOMENTUM = 0.9
# Gradient-norm clip: without it, at the peak learning rate one seed in a few blows up in its first epoch.
CLIP_NORM = 2.0
# Progress bars redraw at most this often: a log file stays readable.
PROGRESS_SECONDS = 1.0
# Digits per batch of the pass that recomputes the batch norms' statistics (recompute_norm_stats).
NORM_STATS_BATCH = 500
# Digits per batch of the features pass on a CPU: bf16 convolutions want larger batches than scoring's 64.
FEATURE_BATCH_CPU = 500


@dataclass(frozen=True)
class Precision:
    """Where the forward pass runs in bfloat16 (autocast); weights stay float32."""

    autocast: bool

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when present, else the CPU; ConfigError for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    number = name.partition(":")[2]
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and number.isdigit()):
        raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {name!r}")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device: {name} asked for, but this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")
    return device


def resolve_precision(name: str, device: torch.device) -> Precision:
    """'auto' -> bf16 autocast where the hardware runs it natively, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return Precision(torch.cuda.is_bf16_supported())
        return Precision(bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return Precision(name == "bf16")


def setup(device: str, threads: int | None, precision: str) -> tuple[torch.device, Precision]:
    """Allocator, threads, device and precision for this process: a run's driver or worker, an
    experiment, a benchmark (so its timings are of the same process set-up as a run's)."""
    allocator.keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    resolved = resolve_device(device)
    return resolved, resolve_precision(precision, resolved)


def one_cycle(step: int, total: int) -> float:
    """Learning-rate factor at `step` of `total` (0 <= step < total): up linearly, then down to 0."""
    warm = max(1, round(WARMUP_FRACTION * total))
    if step < warm:
        return WARMUP_START + (1 - WARMUP_START) * step / warm
    return max(0.0, 1 - (step - warm) / max(total - warm, 1))


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 normalised, channels-last."""
    # astype copies: the cached arrays are read-only views of the verified bytes.
    x = torch.from_numpy(images.astype(np.float32)).to(device).div_(255)
    x = x.sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random small affine transform of every digit of a (B, 1, H, W) batch at once."""
    n, side = x.shape[0], x.shape[-1]
    u = torch.rand(n, 4, generator=gen, device=gen.device).to(x.device) * 2 - 1
    shift = u[:, :2] * (2 * MAX_SHIFT_PX / side)  # affine_grid spans [-1, 1]
    angle, scale = u[:, 2] * MAX_ROTATION_RAD, 1 + u[:, 3] * MAX_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = -PIXEL_MEAN / PIXEL_STD  # a blank pixel after normalisation
    out = F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background
    return out.contiguous(memory_format=torch.channels_last)


def steps_per_epoch(n: int, recipe: Recipe) -> int:
    """Batches in an epoch of n digits. Where the network's batch norm cannot train on one digit
    (Recipe.norm_needs_two), a last batch of a single digit joins the batch before it (_epoch), so every digit
    trains in every epoch; a training set of one digit is refused."""
    if recipe.norm_needs_two and n % recipe.batch_size == 1:
        if n == 1:
            raise ConfigError("--train-limit: a network with --hidden or four --widths stages trains on at least "
                              "2 digits, got 1")
        return n // recipe.batch_size
    return math.ceil(n / recipe.batch_size)


def diverged(recipe: Recipe, why: str) -> ConfigError:
    """Training that diverged, blamed on the step-size flags typed above their defaults (--lr where none is)."""
    raised = [(flag, value) for flag, value, default in (("--lr", recipe.lr, Recipe.lr),
                                                         ("--weight-decay", recipe.weight_decay, Recipe.weight_decay))
              if value > default] or [("--lr", recipe.lr)]
    lower = " or ".join(f"{flag} than {value}" for flag, value in raised)
    return ConfigError(f"{raised[0][0]}: training diverged ({why}); try a lower {lower}")


# A function called during training with the model and the epochs done so far
# (a float); the benchmark uses it to evaluate at finer intervals than an epoch.
Hook = Callable[[Net, float], None]
# Called after every epoch but the last with the whole training state (see
# training_state): the driver saves it so an interrupted member resumes exactly.
EpochHook = Callable[[dict], None]


@dataclass(frozen=True)
class Runtime:
    """Where and how one training runs; changes no number."""

    device: torch.device
    precision: Precision
    progress: bool = False
    on_epoch: EpochHook | None = None
    hook: Hook | None = None  # called hooks_per_epoch times an epoch
    hooks_per_epoch: int = 1


class Dynamics:
    """What each training step already computes, kept per training digit and epoch (Dataset Cartography, AUM):
    values[e, 0, i] = the given label's probability, values[e, 1, i] = its logit minus the largest other
    logit, for digit i in epoch e; NaN where a digit has not been trained on (yet). Filled in place."""

    def __init__(self, epochs: int, n: int, device: torch.device | str = "cpu"):
        self.values = torch.full((epochs, 2, n), math.nan, device=device)

    @torch.no_grad()
    def record(self, epoch: int, idx: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.detach().float()
        given = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], -math.inf).amax(1)
        self.values[epoch, 0, idx] = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
        self.values[epoch, 1, idx] = given - other

    def numpy(self) -> np.ndarray:
        """(epochs, 2, N) float16: small, and the scores average 40 of them (docs/method.md)."""
        return self.values.cpu().numpy().astype(np.float16)


@dataclass
class _Loop:
    """One training's moving parts, shared by its epochs."""

    model: Net
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    recipe: Recipe
    rt: Runtime
    steps: int
    dynamics: Dynamics | None = None


def _epoch(loop: _Loop, x: torch.Tensor, y: torch.Tensor, bar, epoch: int) -> tuple[float, float]:
    """One pass of loop.steps batches over the shuffled training set; returns (mean loss, accuracy)."""
    model, rt, batch, steps = loop.model, loop.rt, loop.recipe.batch_size, loop.steps
    perm = torch.randperm(len(x), generator=loop.gen, device=loop.gen.device).to(x.device)
    hook_at = {round(steps * (j + 1) / rt.hooks_per_epoch) for j in range(rt.hooks_per_epoch)} if rt.hook else set()
    loss_sum = correct = 0.0
    for i in range(steps):
        # The last step takes the rest: one digit more than a batch where a lone digit joins it (steps_per_epoch).
        idx = perm[i * batch : len(x) if i == steps - 1 else (i + 1) * batch]
        xb, yb = x[idx], y[idx]
        if loop.recipe.augment:
            xb = augment(xb, loop.gen)
        with torch.autocast(x.device.type, dtype=rt.precision.dtype, enabled=rt.precision.autocast):
            logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
        if loop.dynamics is not None:
            loop.dynamics.record(epoch, idx, logits, yb)
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        loop.opt.step()
        loop.sched.step()
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == yb).sum().item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if i + 1 in hook_at:
            rt.hook(model, epoch + (i + 1) / steps)
            model.train()
    return loss_sum / len(x), correct / len(x)


def training_state(epoch: int, loop: _Loop, history: list[dict]) -> dict:
    """A snapshot of everything the rest of training depends on, as tensors and plain values
    (torch.load(..., weights_only=True) reads it back); copied, so training on does not change it."""
    state = {"epoch": epoch, "model": loop.model.state_dict(), "optimizer": loop.opt.state_dict(),
             "scheduler": loop.sched.state_dict(), "generator": loop.gen.get_state(),
             "torch_rng": torch.get_rng_state(), "history": history}
    if loop.dynamics is not None:
        state["dynamics"] = loop.dynamics.values
    return copy.deepcopy(state)


def _restore(state: dict, loop: _Loop) -> list[dict]:
    loop.model.load_state_dict(state["model"])
    loop.opt.load_state_dict(state["optimizer"])
    loop.sched.load_state_dict(state["scheduler"])
    loop.gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if loop.dynamics is not None:
        loop.dynamics.values.copy_(state["dynamics"])
    assert len(state["history"]) == state["epoch"]
    return list(state["history"])


def new_net(recipe: Recipe, num_classes: int) -> Net:
    """An untrained network of the recipe's shape with num_classes outputs."""
    return Net(NetShape(num_classes, recipe.widths, recipe.hidden, recipe.pad_first))


def _start(images: np.ndarray, recipe: Recipe, seed: int, rt: Runtime, num_classes: int, init: Net | None) -> _Loop:
    """The seeded network, optimiser and schedule of a training on len(images) digits."""
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model = new_net(recipe, num_classes)
    if init is not None:
        model.load_state_dict(init.state_dict())  # copies the weights and batch-norm statistics
    model = model.to(rt.device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=MOMENTUM, nesterov=True,
                          weight_decay=recipe.weight_decay)
    steps = steps_per_epoch(len(images), recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(one_cycle, total=recipe.epochs * steps))
    return _Loop(model, opt, sched, gen, recipe, rt, steps)


def train(images: np.ndarray, labels: np.ndarray, recipe: Recipe, seed: int, rt: Runtime, *, num_classes: int,
          init: Net | None = None, state: dict | None = None,
          dynamics: Dynamics | None = None) -> tuple[Net, list[dict]]:
    """Train one CNN on (N, 28, 28) uint8 images and (N,) labels in 0..num_classes-1.

    Returns the network (num_classes logits) and its per-epoch history. `init`, when given, is a
    trained model of the same shape to start from (a fine-tune; copied, never changed). `state`
    (from training_state) continues an interrupted training to the same result. `dynamics`
    (Dynamics(recipe.epochs, N)), when given, is filled from the training steps' own logits.
    """
    loop = _start(images, recipe, seed, rt, num_classes, init)
    loop.dynamics = dynamics
    x, y = to_tensor(images, rt.device), torch.from_numpy(labels.astype(np.int64)).to(rt.device)
    history = [] if state is None else _restore(state, loop)
    loop.model.train()
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        start = time.perf_counter()
        with tqdm(total=loop.steps, desc=f"epoch {epoch}/{recipe.epochs}", disable=not rt.progress, leave=False,
                  mininterval=PROGRESS_SECONDS) as bar:
            loss, acc = _epoch(loop, x, y, bar, epoch - 1)
        if not math.isfinite(loss):  # before on_epoch: a diverged state is never saved to resume from
            raise diverged(recipe, f"seed {seed}: the loss of epoch {epoch} is {loss}")
        history.append({"epoch": epoch, "loss": loss, "train_acc": acc, "seconds": time.perf_counter() - start})
        if rt.progress:
            tqdm.write(f"epoch {epoch}/{recipe.epochs}: loss {loss:.4f}, train accuracy {acc:.2%}")
        if rt.on_epoch is not None and epoch < recipe.epochs:
            rt.on_epoch(training_state(epoch, loop, history))
    if recipe.augment:  # the test digits are clean: so should the norms' statistics be
        recompute_norm_stats(loop.model, x)
    loop.model.eval()
    return loop.model, history


@torch.no_grad()
def recompute_norm_stats(model: Net, x: torch.Tensor, batch: int = NORM_STATS_BATCH) -> None:
    """Recompute the running mean and variance of every batch norm but the first over the clean
    (un-augmented) normalised digits x, in one pass in training mode (every norm normalising by its
    batch's statistics, as in training). The first norm keeps the averages of training.

    Training on augmented digits leaves statistics of augmented digits; the test digits are clean.
    All but the first, as measured best (docs/lab-notebook.md). If the pass fails, every norm is left as it was.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if len(norms) < 2:
        return  # nothing to recompute
    first, rest = norms[0], norms[1:]
    saved = [(m.momentum, m.track_running_stats, copy.deepcopy(m.state_dict())) for m in norms]
    was_training = model.training
    try:
        for m in rest:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: every batch counts the same
        first.track_running_stats = False  # normalises by the batch, leaves its averages as they are
        model.train()
        starts = list(range(0, len(x), batch))
        if len(starts) > 1 and len(x) - starts[-1] == 1:
            starts.pop()  # a norm of one value per channel (a hidden layer's) cannot take a batch of one digit
        for start, end in zip(starts, starts[1:] + [len(x)]):
            model(x[start:end])
    except BaseException:
        for m, (_, _, state) in zip(norms, saved):
            m.load_state_dict(state)
        raise
    finally:
        for m, (momentum, track, _) in zip(norms, saved):
            m.momentum, m.track_running_stats = momentum, track
        model.train(was_training)


def eval_batch(device: torch.device, cpu: int = EVAL_BATCH_CPU) -> int:
    """Images per chunk when scoring on `device` (see config.EVAL_BATCH_CPU), or `cpu` of them on a CPU."""
    return cpu if device.type == "cpu" else EVAL_BATCH_GPU


@torch.no_grad()
def predict_probs(model: Net, images: np.ndarray, device: torch.device, batch: int | None = None) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, K) float32 class probabilities, row i = image i.

    Runs in float32 (no autocast): the probabilities are the product, so they are
    not rounded to bfloat16's 3 significant digits. `batch`: images per chunk
    (default: eval_batch(device)). Puts `model` in eval mode and channels-last, in place.
    """
    # Channels-last, as training leaves a model: a checkpoint loads in the default layout, whose
    # probabilities differ in the 7th digit from those the run saved.
    model.eval().to(memory_format=torch.channels_last)
    batch = batch or eval_batch(device)
    out = []
    for start in range(0, len(images), batch):
        logits = model(to_tensor(images[start : start + batch], device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def feature_maps(model: Net, images: np.ndarray, device: torch.device, batch: int | None = None,
                 precision: Precision = Precision(False)) -> Iterator[np.ndarray]:
    """(N, 28, 28) uint8 -> the last stage's maps (B, C, side, side) float32, a chunk of images at a time, in
    order; a pass can reduce each chunk as it comes. With `precision`'s autocast, in bfloat16 as training ran
    (2.6x faster on an AMX CPU, docs/lab-notebook.md)."""
    model.eval().to(memory_format=torch.channels_last)
    batch = batch or eval_batch(device, FEATURE_BATCH_CPU)
    for start in range(0, len(images), batch):
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.autocast):
            maps = model.features(to_tensor(images[start : start + batch], device))
        yield maps.float().cpu().numpy()


def predict_features(model: Net, images: np.ndarray, device: torch.device, batch: int | None = None,
                     spatial: str = "mean", precision: Precision = Precision(False)) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, D) float32 penultimate features, row i = image i: the last stage's maps
    averaged over space (D = its channels) or flattened (the output layer's input, D = C x side x side)."""
    return np.concatenate([maps.mean(axis=(2, 3)) if spatial == "mean" else maps.reshape(len(maps), -1)
                           for maps in feature_maps(model, images, device, batch, precision)])

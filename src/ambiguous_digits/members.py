"""One CNN of an ensemble (or of an audit fold) as an independent job, and its files in the run directory.

The job (train_member) is a function of the recipe, its seed and the data only:
it trains one CNN and predicts the evaluation digits; it reads and writes no
files, so it can run anywhere (as Ray tasks, for one). The
driver saves each finished job under its stem at once (save_member), and the
training state after every epoch (save_state), so an interrupted run loses at
most the epoch in progress and `--resume` gives the same result as no interruption.

Files, for a stem such as `members/member-3` (all listed in manifest.json):
  <stem>.npz          probs (N, K) float32 (row i = evaluation digit i), seed, history (JSON text); a
                      cross-fitted run member's also holdout_probs (row j = the j-th training digit of its
                      held-out fold) and dynamics (epochs, 2, its training digits)
  <stem>.epoch-E.pt   training state after epoch E (train.training_state); deleted when the member is done
  models/member-M.pt  the trained CNN (run members only; model.checkpoint)
  models/member-M.npz the same CNN's weights for forward.NumpyNet (model.arrays), which `predict` reads
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import files, manifest, rundir
from .config import ConfigError, Recipe
from .model import Net, arrays, checkpoint, from_checkpoint
from .train import Dynamics, Runtime, diverged, predict_probs, train


@dataclass
class MemberResult:
    """What one job produces. `model` is None once loaded back from the run directory."""

    seed: int
    probs: np.ndarray  # (N, K) float32, row i = evaluation digit i
    history: list[dict]
    model: Net | None = None
    predict_seconds: float = 0.0
    # Cross-fitted run members: the held-out training digits' probabilities (H, K) float32, and the training
    # steps' record of the digits it trained on (train.Dynamics.numpy: (epochs, 2, N_train - H) float16).
    holdout_probs: np.ndarray | None = None
    dynamics: np.ndarray | None = None


def train_member(recipe: Recipe, seed: int, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray,
                 num_classes: int, rt: Runtime, state: dict | None = None,
                 held_out: np.ndarray | None = None) -> MemberResult:
    """Train one CNN with `seed` (continuing from `state` when given) and predict x_eval (N, 28, 28) -> (N, K).
    With `held_out` ((N_train,) bool), it trains on the other training digits only, recording their dynamics,
    and also predicts the held-out ones."""
    dynamics = None
    x_fit, y_fit = x_train, y_train
    if held_out is not None:
        x_fit, y_fit = x_train[~held_out], y_train[~held_out]
        dynamics = Dynamics(recipe.epochs, len(y_fit), rt.device)
    model, history = train(x_fit, y_fit, recipe, seed, rt, num_classes=num_classes, state=state, dynamics=dynamics)
    start = time.perf_counter()
    probs = predict_probs(model, x_eval, rt.device)
    holdout_probs = None if held_out is None else predict_probs(model, x_train[held_out], rt.device)
    if not np.isfinite(probs).all():  # a finite loss but overflowing weights; refused before it is saved
        raise diverged(recipe, f"the CNN of seed {seed} gives NaN probabilities")
    return MemberResult(seed, probs, history, model, time.perf_counter() - start, holdout_probs,
                        None if dynamics is None else dynamics.numpy())


# ---------------------------------------------------------------------------
# Finished members
# ---------------------------------------------------------------------------
def save_member(run_dir: Path, stem: str, result: MemberResult, model_name: str | None = None) -> None:
    """Write the member's probabilities (and its CNN) atomically, list them together, drop its epoch states."""
    paths = []
    if model_name is not None:
        paths.append(_save_torch(run_dir / model_name, checkpoint(result.model)))
        paths.append(_save_arrays(run_dir / rundir.weights_file(model_name), arrays(result.model)))
    path = run_dir / f"{stem}.npz"
    files.make_dirs(path.parent)
    extra = ({} if result.holdout_probs is None else
             {"holdout_probs": result.holdout_probs.astype(np.float32), "dynamics": result.dynamics})
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, probs=result.probs.astype(np.float32), seed=np.uint64(result.seed),
                 history=np.array(json.dumps(result.history)), **extra)
    manifest.record(run_dir, *paths, path)  # one update: listed together, or not at all
    drop_states(run_dir, stem)


def load_model(run_dir: Path, model_name: str) -> Net:
    """A run member's CNN saved as `model_name` (checked against the manifest, loaded weights-only)."""
    path = manifest.verified(run_dir, model_name)
    return from_checkpoint(torch.load(path, weights_only=True, map_location="cpu"))


def load_member(run_dir: Path, stem: str, seed: int) -> MemberResult | None:
    """The member saved under `stem`, or None when it has not finished; ConfigError if changed or foreign."""
    name = f"{stem}.npz"
    if not manifest.listed(run_dir, name):
        return None
    path = manifest.verified(run_dir, name)
    with np.load(path, allow_pickle=False) as z:
        probs, saved_seed, history = z["probs"], int(z["seed"]), json.loads(str(z["history"]))
        holdout = (z["holdout_probs"], z["dynamics"]) if "holdout_probs" in z.files else (None, None)
    if saved_seed != seed:
        raise ConfigError(f"{path}: trained with seed {saved_seed}, but this run's member has seed {seed}")
    return MemberResult(seed, probs, history, holdout_probs=holdout[0], dynamics=holdout[1])


# ---------------------------------------------------------------------------
# Epoch checkpoints of the member in progress
# ---------------------------------------------------------------------------
def _state_pattern(stem: str) -> re.Pattern:
    return re.compile(re.escape(stem) + r"\.epoch-(\d+)\.pt")


def save_state(run_dir: Path, stem: str, state: dict) -> None:
    """Save the training state after an epoch as <stem>.epoch-E.pt, list it, then drop the older ones.

    A new name per epoch: a kill at any moment leaves a listed, intact state to resume from.
    """
    path = _save_torch(run_dir / f"{stem}.epoch-{state['epoch']}.pt", state)
    manifest.record(run_dir, path)
    drop_states(run_dir, stem, keep=path.name)


def latest_state(run_dir: Path, stem: str) -> dict | None:
    """The listed training state of the latest epoch (checked against the manifest), or None."""
    pattern = _state_pattern(stem)
    epochs = {int(m.group(1)): name for name in manifest.load(run_dir) if (m := pattern.fullmatch(name))}
    if not epochs:
        return None
    path = manifest.verified(run_dir, epochs[max(epochs)])
    return torch.load(path, weights_only=True, map_location="cpu")


def drop_states(run_dir: Path, stem: str, keep: str | None = None) -> None:
    """Delete and unlist the member's epoch states (listed or left unlisted by a kill), but `keep`."""
    pattern = _state_pattern(stem)
    folder = (run_dir / stem).parent
    names = [f"{Path(stem).parent.as_posix()}/{p.name}" for p in folder.glob("*.pt") if p.name != keep]
    stale = [n for n in names if pattern.fullmatch(n)]
    manifest.forget(run_dir, *stale)
    for name in stale:
        (run_dir / name).unlink(missing_ok=True)


def _save_arrays(path: Path, named: dict[str, np.ndarray]) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **named)
    files.make_dirs(path.parent)
    files.write_bytes(path, buf.getvalue())
    return path


def _save_torch(path: Path, obj: dict) -> Path:
    # Serialised in memory (a checkpoint is ~1 MB), written by files: a full disk is then an
    # OSError there, a one-line WriteError, not torch's RuntimeError from its zip writer.
    buf = io.BytesIO()
    torch.save(obj, buf)
    files.make_dirs(path.parent)
    files.write_bytes(path, buf.getvalue())
    return path

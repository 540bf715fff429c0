"""Does a hand-written max-pool for scoring earn its place? Side by side with nn.MaxPool2d, in one process.

A run's members use the no-autograd CPU pool in two places: the pass that recomputes the
batch norms' statistics over the clean training digits (after augmented training), and the
scoring of the test digits. Both are timed here for one default member, with torch's
nn.MaxPool2d and with the quarter-map maximum an earlier version shipped (kept below),
alternating the two `--repeats` times so a busy machine slows both alike. Reported: the
median seconds of each per member, the saving for a default run's members, and that saving as
a share of `--run-seconds` (the default run's wall time on this machine). The two pools give
equal probabilities (checked here).

    python bench/maxpool.py --repeats 5 --run-seconds 330 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from ambiguous_digits.config import Recipe
from ambiguous_digits.data import load_mnist
from ambiguous_digits.train import new_net, predict_probs, recompute_norm_stats, setup, to_tensor


class QuarterMaxPool(nn.MaxPool2d):
    """nn.MaxPool2d(2) whose no-autograd CPU path takes the elementwise maximum of the four interleaved
    quarter-maps, without writing each maximum's index (the variant measured here)."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() not in (3, 4):
            return super().forward(x)
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        if min(*x.shape[:-2], h, w) < 2:  # its layout may differ from MaxPool2d's there
            return super().forward(x)
        quads = x[..., : 2 * h, : 2 * w].unflatten(-1, (w, 2)).unflatten(-3, (h, 2))
        rows = torch.maximum(quads[..., 0, :, :], quads[..., 1, :, :])
        return torch.maximum(rows[..., 0], rows[..., 1])


def with_pool(model: nn.Module, pool: type) -> nn.Module:
    """The same network (weights shared) with every max-pool replaced by `pool()`."""
    for name, child in model.named_children():
        if isinstance(child, nn.MaxPool2d):
            setattr(model, name, pool())
        else:
            with_pool(child, pool)
    return model


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="alternations of the two pools")
    p.add_argument("--run-seconds", type=float, required=True, help="the default run's wall time here")
    p.add_argument("--data-dir", default=None, help="MNIST cache (as for `run`)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores; on a busy machine "
                   "1 keeps other processes' load from timing thread synchronisation instead of the pools)")
    a = p.parse_args(argv)
    recipe = Recipe()
    device, _ = setup("cpu", a.threads, recipe.precision)
    ds = load_mnist(a.data_dir, progress=False)
    x_train = to_tensor(ds.x_train, device)
    torch.manual_seed(0)
    base = new_net(recipe, 10).to(memory_format=torch.channels_last)
    nets = {"MaxPool2d": base, "quarter-map maximum": with_pool(new_net(recipe, 10), QuarterMaxPool)}
    nets["quarter-map maximum"].load_state_dict(base.state_dict())
    nets["quarter-map maximum"].to(memory_format=torch.channels_last)
    times = {name: {"norm_stats": [], "score": []} for name in nets}
    for _ in range(a.repeats):
        for name, net in nets.items():
            times[name]["norm_stats"].append(_time(lambda: recompute_norm_stats(net, x_train)))
            times[name]["score"].append(_time(lambda: predict_probs(net, ds.x_test, device)))
    same = np.array_equal(predict_probs(nets["MaxPool2d"], ds.x_test, device),
                          predict_probs(nets["quarter-map maximum"], ds.x_test, device))
    per_member = {n: sum(float(np.median(v)) for v in t.values()) for n, t in times.items()}
    saved = (per_member["MaxPool2d"] - per_member["quarter-map maximum"]) * recipe.members
    result = {"median_seconds": {n: {k: float(np.median(v)) for k, v in t.items()} for n, t in times.items()},
              "per_member_seconds": per_member, "members": recipe.members,
              "saved_seconds_per_run": saved, "share_of_run": saved / a.run_seconds,
              "equal_probabilities": bool(same), "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

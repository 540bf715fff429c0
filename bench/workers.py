"""Members one at a time with every core against members side by side in local workers, alternating in one process.

Each round trains the same cross-fitted members (MNIST, the default recipe but --epochs, one fold held out each)
twice, through the run's own job and backend: once one after another with torch's threads over every core
(`--workers 1`), once in `--workers` processes of `--threads` threads each (the default on a CPU). The order
alternates between rounds, so a host that slows down or speeds up mid-benchmark weighs on both. Reported: each
round's wall seconds per member, their ratio, and whether the side-by-side probabilities equal those of one
member at a time on the workers' threads (checked once, on request: it costs a third pass).

    python bench/workers.py --members 2 --epochs 1 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ambiguous_digits import backend, data, jobs
from ambiguous_digits.config import Invocation, Recipe
from ambiguous_digits.train import setup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not the package
from bench.train_speed import cpu_model  # noqa: E402


def train_once(recipe: Recipe, inv: Invocation, x: np.ndarray, y: np.ndarray,
               x_eval: np.ndarray) -> tuple[float, np.ndarray]:
    """Wall seconds to train the recipe's cross-fitted members on `inv`'s placement, and their test probabilities."""
    folds = np.arange(len(y)) % recipe.members
    shared = {"num_classes": 10, "x_train": x, "y_train": y, "x_eval": x_eval, "folds": folds}
    member_jobs = [{"recipe": recipe, "device": "cpu", "threads": backend.member_threads(inv), "seed": seed,
                    "fold": m} for m, seed in enumerate(recipe.member_seeds())]
    start = time.perf_counter()
    results = backend.map_jobs(jobs.member_job, member_jobs, shared, inv, lambda i, r: "", "members", progress=False,
                               work=recipe.epochs * int((folds != 0).sum()))
    return time.perf_counter() - start, np.stack([r.probs for r in results])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=backend.cores())
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    p.add_argument("--train-limit", type=int, default=None, help="the first N training digits (smoke tests)")
    p.add_argument("--check-bytes", action="store_true",
                   help="also train once one at a time on the workers' threads and compare the probabilities")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")
    a = p.parse_args(argv)
    setup("cpu", None, "auto")
    ds = data.load_mnist(progress=False)
    x, y = ds.x_train[:a.train_limit], ds.y_train[:a.train_limit]
    recipe = Recipe(members=a.members, epochs=a.epochs, seed=0)
    placements = {"one at a time": Invocation(workers=1, progress=False),
                  "side by side": Invocation(workers=a.workers, threads=a.threads, progress=False)}
    seconds: dict[str, list[float]] = {name: [] for name in placements}
    probs = {}
    for r in range(a.rounds):
        order = list(placements) if r % 2 == 0 else list(placements)[::-1]
        for name in order:
            took, probs[name] = train_once(recipe, placements[name], x, y, ds.x_test)
            seconds[name].append(took / a.members)
            print(f"round {r + 1}, {name}: {took / a.members:.1f} s a member", flush=True)
    ratios = [one / side for one, side in zip(seconds["one at a time"], seconds["side by side"])]
    result = {"cpu": cpu_model(), "cores": backend.cores(),
              "recipe": dataclasses.asdict(recipe), "workers": a.workers, "threads_per_worker": a.threads,
              "seconds_per_member": seconds, "speedup_per_round": ratios,
              "speedup_mean": statistics.mean(ratios),
              "speedup_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0}
    if a.check_bytes:
        _, same_threads = train_once(recipe, Invocation(workers=1, threads=a.threads, progress=False), x, y,
                                     ds.x_test)
        result["side_by_side_equals_one_at_a_time_on_its_threads"] = bool(
            np.array_equal(same_threads, probs["side by side"]))
    print(json.dumps({k: v for k, v in result.items() if k != "recipe"}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

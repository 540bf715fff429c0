"""Which network should the ensemble use? Shapes compared on the same seeds, on the same machine.

For each seed, one member of every `--net WIDTHS:EPOCHS[:fcN][:padP]` is trained in turn (alternating,
so a slow hour of a shared machine slows every shape alike), at the default recipe
otherwise, and scores the test digits. Reported per shape: member accuracy and NLL
(mean ± std over the seeds), training and scoring seconds, and what a
`--members`-member ensemble of them gives: every `--members` of the seeds' members
averaged (all combinations, at most MAX_ENSEMBLES of them), accuracy and NLL,
mean, min and max. Writes a JSON report and each member's probabilities (float32
(seeds, N, K) per shape), so other ensembles can be scored without retraining.

    python bench/networks.py --net 32,64,128:4 --net 16,32,128:6 --seeds 8
    python bench/networks.py --net 16,32,128:8 --net 16,32,128:8:fc128 --seeds 8
    python bench/networks.py --net 16,32,128:8 --net 16,32,96,192:8 --seeds 8
    python bench/networks.py --net 16,32,128:8:pad1 --net 16,32,128:8:pad0 --seeds 5

fcN: N units in a linear-BN-ReLU layer before the output layer (default: the
recipe's, none: fc0). padP: the first convolution's zero padding, 0 or 1 (default: the recipe's).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import numpy as np
import torch

from ambiguous_digits import files
from ambiguous_digits.config import ConfigError, Recipe
from ambiguous_digits.data import DataError, load_mnist
from ambiguous_digits.scores import nll, predicted
from ambiguous_digits.train import Runtime, predict_probs, setup, train

REPO = Path(__file__).resolve().parents[1]
# Ensembles scored per shape at most (C(8, 5) = 56; C(20, 5) would be 15,504).
MAX_ENSEMBLES = 1000


def parse_net(text: str) -> tuple[tuple[int, ...], int, int, int]:
    """'16,32,128:6' -> ((16, 32, 128), 6, 0, the recipe's pad_first); '16,32,128:8:fc128:pad1' -> (..., 8, 128, 1);
    argparse's error otherwise."""
    widths, sep, rest = text.partition(":")
    epochs, *options = rest.split(":")
    expected = (f"expected WIDTHS:EPOCHS[:fcN][:padP] such as 16,32,128:6, 16,32,128:8:fc128 or 16,32,128:8:pad1, "
                f"got {text!r}")
    given = {key: [o[len(key):] for o in options if o.startswith(key) and o[len(key):].isdigit()]
             for key in ("fc", "pad")}
    if not sep or sum(map(len, given.values())) < len(options) or any(len(v) > 1 for v in given.values()):
        raise argparse.ArgumentTypeError(expected)
    try:
        shape = tuple(int(w) for w in widths.split(","))
        n = int(epochs)
        hidden = int(given["fc"][0]) if given["fc"] else Recipe().hidden
        pad = int(given["pad"][0]) if given["pad"] else Recipe().pad_first
        Recipe(widths=shape, epochs=n, hidden=hidden, pad_first=pad)  # Recipe checks widths, epochs, units, pad
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(f"{expected} ({e})") from None
    return shape, n, hidden, pad


def net_name(widths: tuple[int, ...], epochs: int, hidden: int = Recipe().hidden, pad: int = Recipe().pad_first) -> str:
    fc = f"+fc{hidden}" if hidden else ""
    cut = f" pad {pad}" if pad != Recipe().pad_first else ""
    return f"{'/'.join(map(str, widths))}{fc}{cut} x {epochs} epochs"


def npz_key(name: str) -> str:
    """The key of a shape's (S, N, K) probabilities in the .npz written beside the report."""
    return name.replace(" ", "_").replace("/", "-")


def ensemble_stats(probs: np.ndarray, labels: np.ndarray, members: int, limit: int = MAX_ENSEMBLES,
                   seed: int = 0) -> dict:
    """Accuracy and NLL of ensembles of `members` of the (S, N, K) members (mean probabilities):
    every combination, or `limit` distinct ones drawn uniformly at random when there are more."""
    total = comb(len(probs), members)
    if total <= limit:
        combos = list(itertools.combinations(range(len(probs)), members))
    else:
        rng, drawn = np.random.default_rng(seed), {}
        while len(drawn) < limit:  # total > limit, so this ends
            drawn.setdefault(tuple(sorted(int(i) for i in rng.choice(len(probs), members, replace=False))), None)
        combos = list(drawn)
    acc = np.array([(predicted(probs[list(c)].mean(0)) == labels).mean() for c in combos])
    nlls = np.array([nll(probs[list(c)].mean(0), labels) for c in combos])
    return {"ensembles": len(combos), "of": total, "size": members, "accuracy_mean": float(acc.mean()),
            "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()), "nll_mean": float(nlls.mean())}


def summarize(name: str, rows: list[dict], probs: np.ndarray, labels: np.ndarray, members: int) -> dict:
    """One shape's report from its per-seed rows and (S, N, K) probabilities."""
    acc = np.array([r["accuracy"] for r in rows])
    out = {"npz_key": npz_key(name), "seeds": [r["seed"] for r in rows], "member_accuracy_mean": float(acc.mean()),
           "member_accuracy_std": float(acc.std()), "member_nll_mean": float(np.mean([r["nll"] for r in rows])),
           "train_seconds": [r["train_seconds"] for r in rows], "score_seconds": [r["score_seconds"] for r in rows],
           "per_seed": rows}
    if len(rows) >= members:
        out["ensembles"] = ensemble_stats(probs, labels, members)
    return out


def render(report: dict) -> str:
    lines = [f"{'network':<24} {'member accuracy':>18} {'NLL':>7} {'ensembles of ' + str(report['ensemble_size']):>30} "
             f"{'train s':>13} {'score s':>11}"]
    for name, r in report["networks"].items():
        e = r.get("ensembles")
        ens = (f"{e['accuracy_mean']:.3%} ({e['accuracy_min']:.2%}-{e['accuracy_max']:.2%})" if e else "-")
        lines.append(f"{name:<24} {r['member_accuracy_mean']:>9.3%} ± {r['member_accuracy_std']:.3%} "
                     f"{r['member_nll_mean']:>7.4f} {ens:>30} {min(r['train_seconds']):>6.1f}-{max(r['train_seconds']):<6.1f}"
                     f" {min(r['score_seconds']):>5.2f}-{max(r['score_seconds']):<5.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="networks.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net", type=parse_net, action="append", required=True,
                   help="WIDTHS:EPOCHS[:fcN][:padP] of a shape to compare, e.g. 16,32,128:8, 16,32,128:8:fc128 "
                        "or 16,32,128:8:pad1 (give two or more)")
    p.add_argument("--seeds", type=int, default=8, help="members per shape: seeds 1..N")
    p.add_argument("--members", type=int, default=Recipe().members, help="ensemble size to score")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST cache (as for `run`)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training digits (smoke tests)")
    p.add_argument("--test-limit", type=int, default=None, help="first N test digits (smoke tests)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "networks.json", help="JSON report")
    a = p.parse_args(argv)
    if len(set(a.net)) < len(a.net):
        p.error("--net: a shape is given twice")
    if a.out.suffix == ".npz":
        p.error(f"--out: {a.out} ends in .npz; the probabilities go beside the report, in its .npz")
    parent = next(q for q in (a.out.parent.resolve(), *a.out.parent.resolve().parents) if q.exists())
    try:
        if a.out.is_dir():
            raise OSError(f"{a.out} is a directory")
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        p.error(f"--out: cannot write {a.out}: {e.strerror or e}")
    for flag in ("seeds", "members", "threads", "train_limit", "test_limit"):
        value = getattr(a, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')}: expected a positive number, got {value}")
    if a.threads is not None and a.threads > (os.cpu_count() or 1):
        p.error(f"--threads {a.threads}: this machine has {os.cpu_count() or 1} cores (more threads only slow "
                f"the timings down)")
    try:  # Recipe knows MNIST's sizes: a limit beyond them is refused before the data are loaded
        Recipe(train_limit=a.train_limit, test_limit=a.test_limit)
    except ConfigError as e:
        p.error(str(e))
    if a.members > a.seeds:
        p.error(f"--members {a.members}: more than the {a.seeds} members (--seeds) each shape trains")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    # The process set-up of every run and audit: allocator, threads, device, precision.
    device, precision = setup("cpu", a.threads, Recipe().precision)
    try:
        ds = load_mnist(a.data_dir.expanduser().resolve() if a.data_dir else None, log=print)
    except (DataError, ConfigError) as e:
        sys.exit(f"networks.py: error: {e}")
    x, y = ds.x_train[: a.train_limit], ds.y_train[: a.train_limit]
    x_test, y_test = ds.x_test[: a.test_limit], ds.y_test[: a.test_limit]
    rows: dict[str, list[dict]] = {net_name(*n): [] for n in a.net}
    pads = {net_name(*n): n[3] for n in a.net}  # in the report: a name without "pad" means the default of its version
    probs: dict[str, list[np.ndarray]] = {name: [] for name in rows}
    for seed in range(1, a.seeds + 1):
        for widths, epochs, hidden, pad in a.net:
            name = net_name(widths, epochs, hidden, pad)
            recipe = Recipe(widths=widths, epochs=epochs, hidden=hidden, pad_first=pad)
            start = time.perf_counter()
            model, _ = train(x, y, recipe, seed, Runtime(device, precision), num_classes=ds.num_classes)
            trained = time.perf_counter()
            p = predict_probs(model, x_test, device)
            scored = time.perf_counter()
            probs[name].append(p)
            rows[name].append({"seed": seed, "accuracy": float((predicted(p) == y_test).mean()),
                               "nll": nll(p, y_test), "train_seconds": round(trained - start, 2),
                               "score_seconds": round(scored - trained, 3)})
            print(f"seed {seed}, {name}: {rows[name][-1]}", flush=True)
    report = {"ensemble_size": a.members, "test_digits": len(y_test), "train_digits": len(y),
              "torch_threads": torch.get_num_threads(), "bf16_autocast": precision.autocast,
              "networks": {name: {**summarize(name, rows[name], np.stack(probs[name]), y_test, a.members),
                                  "pad_first": pads[name]} for name in rows}}
    print(render(report))
    try:  # the probabilities first: a report is never left beside another run's probabilities
        with files.atomic_path(a.out.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, labels=y_test, **{npz_key(name): np.stack(p) for name, p in probs.items()})
        files.write_json(a.out, report)
    except (OSError, files.WriteError) as e:
        sys.exit(f"networks.py: error: --out: cannot write {a.out}: {e}")
    print(f"wrote {a.out} and {a.out.with_suffix('.npz')}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

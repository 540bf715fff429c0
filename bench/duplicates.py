"""Planted near-duplicates in the whole of MNIST: does health.near_duplicates find every copy, and what else?

Known answers: copies planted over randomly chosen training digits (the digit there is gone), seeded:
  - exact: a training digit copied;
  - shifted: a training digit moved one pixel (up, down, left or right);
  - noisy: a training digit under Gaussian pixel noise of NOISE grey levels;
  - relabelled: a training digit copied under another label;
  - leak: a test digit copied into the training set, as it is;
  - leak shifted: a test digit moved one pixel, into the training set.
Reported per seed: recall per kind, the farthest copy found of each kind (as a share of the median
nearest-neighbour distance; the threshold is health.DUPLICATE_THRESHOLD of it), and the pairs found that were
not planted, split into those the untouched MNIST has too (its own near-duplicates) and the rest (false pairs), with a sheet of the false pairs
to look at. No training: the check is on pixels.

    python bench/duplicates.py --out dups [--seeds 0 1 2] [--per-kind 50]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ambiguous_digits import data, files, health, outputs

KINDS = ("exact", "shifted", "noisy", "relabelled", "leak", "leak shifted")
NOISE = 8  # grey levels (of 255): a re-saved or re-scanned copy


def _shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    axis, step = int(rng.integers(2)), int(rng.choice([-1, 1]))
    return np.roll(image, step, axis=axis)


def plant(ds, per_kind: int, seed: int):
    """Training images and labels with copies planted; returns (x_train, y_train, planted) where planted maps
    frozenset({(split, i), (split, j)}) -> kind."""
    rng = np.random.default_rng(seed)
    x, y = ds.x_train.copy(), ds.y_train.copy()
    n = len(y)
    slots = rng.choice(n, len(KINDS) * per_kind, replace=False)  # where the copies go
    sources = rng.permutation(np.setdiff1d(np.arange(n), slots))  # untouched training digits to copy
    test_sources = rng.permutation(len(ds.y_test))
    planted, s, t = {}, iter(sources), iter(test_sources)
    for k, kind in enumerate(KINDS):
        for slot in slots[k * per_kind:(k + 1) * per_kind]:
            if kind.startswith("leak"):
                src = ("test", int(next(t)))
                image, label = ds.x_test[src[1]], ds.y_test[src[1]]
            else:
                src = ("train", int(next(s)))
                image, label = ds.x_train[src[1]], ds.y_train[src[1]]
            if kind in ("shifted", "leak shifted"):
                image = _shift(image, rng)
            elif kind == "noisy":
                image = np.clip(image + rng.normal(0, NOISE, image.shape), 0, 255).astype(np.uint8)
            if kind == "relabelled":
                label = (label + 1 + rng.integers(9)) % 10
            x[slot], y[slot] = image, label
            planted[frozenset({src, ("train", int(slot))})] = kind
    return x, y, planted


def found_pairs(x_train, y_train, x_test, y_test) -> dict[frozenset, float]:
    """Each pair found -> its distance as a share of the median nearest-neighbour distance (Datalab's threshold's
    unit)."""
    table, numbers = health.near_duplicates(health.joined(x_train, x_test), health.joined(y_train, y_test),
                                            len(y_train))
    return {frozenset({(str(a), int(i)), (str(b), int(j))}): float(d) / numbers["median_nearest_distance"]
            for a, i, b, j, d in zip(table["split_a"], table["index_a"], table["split_b"], table["index_b"],
                                     table["distance"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-kind", type=int, default=50)
    a = p.parse_args(argv)
    files.make_dirs(a.out)
    ds = data.load_mnist(progress=False)
    own = set(found_pairs(ds.x_train, ds.y_train, ds.x_test, ds.y_test))  # MNIST's own near-duplicates
    results = {"threshold": health.DUPLICATE_THRESHOLD, "mnist_own_pairs": len(own), "seeds": {}}
    for seed in a.seeds:
        x, y, planted = plant(ds, a.per_kind, seed)
        found = found_pairs(x, y, ds.x_test, ds.y_test)
        recall = {kind: sum(p in found for p, k in planted.items() if k == kind) / a.per_kind for kind in KINDS}
        farthest = {kind: max((found[p] for p, k in planted.items() if k == kind and p in found), default=None)
                    for kind in KINDS}
        extra = set(found) - set(planted)
        false = sorted(extra - own, key=sorted)
        results["seeds"][seed] = {"recall": recall, "farthest_found": farthest, "found": len(found),
                                  "not_planted": len(extra),
                                  "mnist_own": len(extra & own), "false_pairs": len(false),
                                  "false_share": len(false) / max(len(found), 1),
                                  "false": [sorted(p) for p in false]}
        print(f"seed {seed}: recall {recall}; farthest found (x median) {farthest}; found {len(found)}, "
              f"not planted {len(extra)} ({len(extra & own)} MNIST's own), false {len(false)} "
              f"({len(false) / max(len(found), 1):.2%})")
        if false:
            shown = false[:40]
            images = np.stack([(x if s == "train" else ds.x_test)[i] for pair in shown for s, i in sorted(pair)])
            titles = [f"{s} #{i}" for pair in shown for s, i in sorted(pair)]
            outputs.contact_sheet(a.out / f"false_pairs_seed{seed}.png", images, titles, f"False pairs, seed {seed}")
    files.write_text(a.out / "duplicates.json", json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

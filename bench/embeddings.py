"""Which embedding gives neighbours that agree with the labels? Poolings of a run's members compared.

For every test digit, its k nearest training digits (cosine) in each pooling of the members'
penultimate features; reported per pooling: the fraction of them that carry the ensemble's
predicted class (and the test digit's given label), averaged over the test set, the size of
the embeddings of all 70,000 digits in float16, and the seconds the features and the
neighbours took. Poolings: one member or the mean of the members' L2-normalised features, or
their concatenation; each of the last stage's maps averaged over space (its channels) or
flattened (the output layer's input itself).

    python bench/embeddings.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ambiguous_digits import data, neighbours
from ambiguous_digits.model import from_checkpoint
from ambiguous_digits.train import predict_features, setup

K = 8


def _features(models, x: np.ndarray, device, spatial: str) -> list[np.ndarray]:
    return [predict_features(m, x, device, spatial=spatial) for m in models]


def _normalise(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def poolings(feats_train: list[np.ndarray], feats_test: list[np.ndarray], tag: str) -> dict:
    """name -> (train (60000, D), test (10000, D)) for one member, the mean, the concatenation."""
    norm_tr, norm_te = [_normalise(f) for f in feats_train], [_normalise(f) for f in feats_test]
    out = {f"{tag}, member 0": (norm_tr[0], norm_te[0])}
    if len(norm_tr) > 1:
        out[f"{tag}, mean of members"] = (np.mean(norm_tr, axis=0), np.mean(norm_te, axis=0))
        out[f"{tag}, concatenation"] = (np.concatenate(norm_tr, axis=1), np.concatenate(norm_te, axis=1))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--dataset", default="mnist", help="the run's --dataset")
    a = p.parse_args(argv)
    device, _ = setup("cpu", None, "fp32")
    with np.load(a.run_dir / "probs.npz") as z:
        member_probs = z["probs"]
    pred = member_probs.mean(axis=0).argmax(axis=1)
    models = [from_checkpoint(torch.load(a.run_dir / f"models/member-{m}.pt", weights_only=True)).eval()
              for m in range(len(member_probs))]
    ds = data.load_dataset(a.dataset, None, log=lambda _: None, progress=False)
    result = {}
    for spatial in ("mean", "flatten"):
        start = time.perf_counter()
        used = models if spatial == "mean" else models[:1]  # flattened maps are 9x wider: one member only
        tr, te = _features(used, ds.x_train, device, spatial), _features(used, ds.x_test, device, spatial)
        seconds = (time.perf_counter() - start) / len(used)
        for name, (f_tr, f_te) in poolings(tr, te, f"maps {spatial}").items():
            start = time.perf_counter()
            idx, _ = neighbours.nearest(f_tr, f_te, a.k)
            found = ds.y_train[idx]
            result[name] = {"agree_with_prediction": float((found == pred[:, None]).mean()),
                            "agree_with_label": float((found == ds.y_test[:, None]).mean()),
                            "dims": int(f_tr.shape[1]), "megabytes_float16": 70000 * f_tr.shape[1] * 2 / 1e6,
                            "feature_seconds_per_member": round(seconds, 2),
                            "neighbour_seconds": round(time.perf_counter() - start, 2)}
            print(name, json.dumps(result[name]))
    return result


if __name__ == "__main__":
    main()

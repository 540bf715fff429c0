"""Which pooling of the members' features gives neighbours that agree with the labels? Compared on one run.

Each member's penultimate features (its last stage's maps averaged over space) come from the run's saved
CNNs, as the run's features pass computes them (in bf16 where it did). For every test digit, its k nearest
training digits (cosine) are found in each pooling of them: one member's, the mean of the members'
L2-normalised features (what the run writes to embeddings.npz), and their concatenation. Reported per
pooling: the fraction of the neighbours that carry the ensemble's predicted class and the fraction that carry
the digit's own label, averaged over the test set; the embedding's width and its size in float16 for every
digit; the seconds the neighbour search took.

    python bench/embeddings.py RUN_DIR [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ambiguous_digits import evidence, manifest, neighbours, predict, rundir

K = evidence.EVIDENCE_K


def member_features(run_dir: Path, x_train: np.ndarray, x_test: np.ndarray,
                    device: str) -> list[dict[str, np.ndarray]]:
    """Each member's features: {"train": (N_train, D), "eval": (N, D)} float32."""
    with np.load(manifest.verified(run_dir, rundir.EMBEDDINGS_FILE)) as z:
        bf16 = bool(z["features_bf16"])
    ensemble, _, _ = predict.load_ensemble(run_dir, device, in_numpy=False)
    train, test = (ensemble.member_features(x, "mean", bf16) for x in (x_train, x_test))
    return [{"train": a, "eval": b} for a, b in zip(train, test)]


def poolings(feats: list[dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (train (N_train, D), test (N, D)) embeddings."""
    def norm(f):
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return {"member 0": (norm(feats[0]["train"]), norm(feats[0]["eval"])),
            f"mean of the {len(feats)} members (the run's)": (evidence.pool([f["train"] for f in feats]),
                                                              evidence.pool([f["eval"] for f in feats])),
            f"concatenation of the {len(feats)} members": (np.concatenate([norm(f["train"]) for f in feats], axis=1),
                                                           np.concatenate([norm(f["eval"]) for f in feats], axis=1))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="the JSON report (default: print only)")
    p.add_argument("--device", default="cpu", help="where the features pass runs: auto, cpu, cuda[:N] (default: cpu)")
    a = p.parse_args(argv)
    with np.load(manifest.verified(a.run_dir, rundir.PROBS_FILE)) as z:
        member_probs, labels = z["probs"], z["labels"]
    summary = json.loads(manifest.verified(a.run_dir, rundir.SUMMARY_FILE).read_text())
    from ambiguous_digits import data
    recipe = summary["recipe"]
    ds = data.load_dataset(recipe["dataset"], summary["invocation"]["data_dir"], log=lambda _: None, progress=False)
    y_train = ds.y_train[: recipe["train_limit"]]
    pred = member_probs.mean(axis=0).argmax(axis=1)
    result = {}
    feats = member_features(a.run_dir, ds.x_train[: recipe["train_limit"]], ds.x_test[: recipe["test_limit"]],
                            a.device)
    for name, (train, test) in poolings(feats).items():
        start = time.perf_counter()
        idx, _ = neighbours.nearest(train, test, K)
        found = y_train[idx]
        result[name] = {"agree_with_prediction": float((found == pred[:, None]).mean()),
                        "agree_with_label": float((found == labels[:, None]).mean()),
                        "dims": int(train.shape[1]),
                        "megabytes_float16": (len(train) + len(test)) * train.shape[1] * 2 / 1e6,
                        "search_seconds": round(time.perf_counter() - start, 1)}
        print(name, json.dumps(result[name]), flush=True)
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

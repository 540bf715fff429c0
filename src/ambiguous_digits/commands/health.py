"""The run's health stage: duplicates.csv, health.json, and the outlier and map columns of the per-digit tables.

It reads what the run already holds (the pixels, the embeddings, the cross-fitted out-of-sample probabilities)
and trains nothing; health.py measures, this module writes.
"""

from __future__ import annotations

import collections

import numpy as np

from .. import health, manifest, outputs, rundir
from .common import Log, timed


def write_health(out, data: tuple[np.ndarray, ...], embedded: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                 names: tuple[str, ...], seed: int, threads: int, log: Log) -> tuple[dict[str, dict], dict]:
    """`data` (x_train, y_train, x_test, y_test), `embedded` and `probs` (out-of-sample, (N, K)) by split.
    Writes duplicates.csv and health.json; returns each split's per-digit columns (outlier_score, is_outlier,
    map_x, map_y; row i = digit i) and the run summary's part (with its stages' seconds)."""
    x_train, y_train, x_test, y_test = data
    n_train, labels = len(y_train), health.joined(y_train, y_test)
    seconds: dict[str, float] = {}
    embedding = health.joined(embedded["train"], embedded["test"])
    with timed(seconds, "duplicates"):
        pairs, numbers = health.near_duplicates(health.joined(x_train, x_test), labels, n_train)
    with timed(seconds, "outliers"):
        graph = health.embedding_graph(embedding)
        score, flagged = health.outliers(graph)
    with timed(seconds, "classes"):
        classes = health.class_health(labels, health.joined(probs["train"], probs["test"]), names)
    with timed(seconds, "map"):
        coords = health.layout(embedding, graph, seed, threads)
    outputs.write_table(out / rundir.DUPLICATES_FILE, pairs)
    manifest.record(out, out / rundir.DUPLICATES_FILE)
    found = summary(pairs, flagged, n_train, numbers, classes)
    rundir.save_json(out, rundir.HEALTH_FILE, found)
    log(f"health: {found['duplicates']['pairs']} near-duplicate pairs ({found['duplicates']['leaks']} across "
        f"train and test), {found['outliers']['flagged']} outliers, label health {classes['label_health_score']:.4f}")
    columns = {}
    for split, rows in (("train", np.arange(n_train)), ("test", np.arange(n_train, len(labels)))):
        columns[split] = {"outlier_score": score[rows], "is_outlier": flagged[rows].astype(np.int8),
                          "map_x": coords[rows, 0], "map_y": coords[rows, 1]}
    return columns, {**{k: found[k] for k in ("duplicates", "outliers")},
                     "label_health_score": classes["label_health_score"], "seconds": seconds}


def summary(pairs: dict[str, np.ndarray], flagged: np.ndarray, n_train: int, numbers: dict, classes: dict) -> dict:
    """health.json: what was found, how, and the classes' health."""
    kinds = collections.Counter(f"{a}-{b}" for a, b in zip(pairs["split_a"], pairs["split_b"]))
    return {
        "duplicates": {"pairs": len(pairs["distance"]), "train-train": kinds["train-train"],
                       "test-test": kinds["test-test"], "leaks": kinds["train-test"],
                       "different_labels": int((~pairs["same_label"].astype(bool)).sum()),
                       "method": health.DUPLICATE_METHOD, **numbers},
        "outliers": {"flagged": int(flagged.sum()), "train": int(flagged[:n_train].sum()),
                     "test": int(flagged[n_train:].sum()), "method": health.OUTLIER_METHOD},
        "map": {"method": health.MAP_METHOD},
        **classes,
    }

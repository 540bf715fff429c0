"""Nearest training digits in an embedding (cosine), by scikit-learn: for evidence and for unfamiliarity."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def nearest(reference: np.ndarray, queries: np.ndarray, k: int,
            own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `reference` (R, D) nearest each of `queries` (Q, D) by cosine distance, nearest first:
    (Q, k) indices into reference and (Q, k) distances in [0, 2] (LOWER = closer). `own` (Q,): each
    query's own row of reference, left out of its neighbours (queries drawn from the reference)."""
    extra = 0 if own is None else 1
    k = min(k, len(reference) - extra)
    index = NearestNeighbors(n_neighbors=k + extra, metric="cosine", algorithm="brute").fit(reference)
    dist, idx = index.kneighbors(queries)
    if own is not None:
        dist, idx = _without(dist, idx, own)
    return idx[:, :k], dist[:, :k]


def _without(dist: np.ndarray, idx: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row without its own index (a tie may have put it second), keeping the order."""
    mine = idx == np.asarray(own)[:, None]
    mine[~mine.any(axis=1), -1] = True  # rows whose own index fell outside k: drop their farthest instead
    keep = ~mine
    return dist[keep].reshape(len(idx), -1), idx[keep].reshape(len(idx), -1)


def nearest_of_class(reference: np.ndarray, labels: np.ndarray, queries: np.ndarray, classes: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query i, the k nearest rows of `reference` whose label is classes[i]: (Q, k) indices into
    reference and distances (fewer than k in a class: padded with -1 and inf)."""
    idx = np.full((len(queries), k), -1, dtype=np.int64)
    dist = np.full((len(queries), k), np.inf)
    for c in np.unique(classes):
        members, asked = np.flatnonzero(labels == c), np.flatnonzero(classes == c)
        if not len(members):
            continue
        found, d = nearest(reference[members], queries[asked], k)
        idx[asked, : found.shape[1]], dist[asked, : found.shape[1]] = members[found], d
    return idx, dist

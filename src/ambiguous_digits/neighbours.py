"""Nearest training digits in an embedding (cosine): for evidence and for unfamiliarity.

Searches of many digits (a run, an audit, a benchmark) are exact and brute force, in torch: each chunk of queries
times every reference row in one float32 matrix product, and torch.topk over only the blocks of the reference
whose best similarity is among the chunk's k best (the k nearest lie in those k blocks). On 10,000 x 60,000
(128 dimensions, 2 cores) it took 1.0-1.1 s where scikit-learn's brute force took 2.1-2.4 s (faiss's flat index
was slower still), the same neighbours but for ties (docs/lab-notebook.md, 0.11.1). A few images scored against a
fitted index (`predict`) go through faiss's exact inner-product index: faiss imports in 0.28 s, where
scikit-learn took 0.86 s and torch 1.5-2.5 s, and predict does without torch (docs/lab-notebook.md). Each is
imported only when needed.
"""

from __future__ import annotations

import numpy as np

# Queries multiplied at once: their similarities to 60,000 rows (30 MB) stay near the cache.
QUERY_CHUNK = 128
# Reference rows whose best similarity is taken together, to pass only the best blocks to topk.
BLOCK = 250


def unit(rows: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to length 1 (float32); an all-zero row stays zero."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


class Fitted:
    """`reference` (N, D) held in faiss's exact inner-product index, for many small searches (predict)."""

    def __init__(self, reference: np.ndarray):
        import faiss

        self._index = faiss.IndexFlatIP(np.shape(reference)[1])
        self._index.add(unit(reference))
        self.size = len(reference)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) indices into the reference, nearest first, and their cosine distances (as `nearest` gives)."""
        similarity, idx = self._index.search(unit(queries), min(k, self.size))
        return idx, 1 - similarity


def nearest(reference: np.ndarray, queries: np.ndarray, k: int,
            own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `reference` (R, D) nearest each of `queries` (Q, D) by cosine distance, nearest first:
    (Q, k) indices into reference and (Q, k) float32 distances in [0, 2] (LOWER = closer). `own` (Q,): each
    query's own row of reference, left out of its neighbours (queries drawn from the reference)."""
    import torch

    extra = 0 if own is None else 1
    k = min(k, len(reference) - extra)
    columns = torch.from_numpy(unit(reference)).T.contiguous()
    idx = np.zeros((len(queries), k + extra), dtype=np.int64)
    dist = np.zeros((len(queries), k + extra), dtype=np.float32)
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        idx[rows], dist[rows] = _best(torch.from_numpy(unit(queries[rows])), columns, k + extra)
    if own is not None:
        dist, idx = _without(dist, idx, own)
    return idx[:, :k], dist[:, :k]


def _best(queries, reference_t, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) unit query rows and (D, R) unit reference columns (torch) -> (C, k) indices of the most similar
    columns, most similar first, and their cosine distances."""
    import torch

    similarity = queries @ reference_t
    whole = similarity.shape[1] // BLOCK * BLOCK
    if whole // BLOCK > 4 * k:  # the k best lie in the k blocks with the best maxima, and in the tail
        blocks = similarity[:, :whole].reshape(len(similarity), -1, BLOCK).amax(dim=2).topk(k, dim=1).indices
        columns = torch.cat([(blocks[:, :, None] * BLOCK + torch.arange(BLOCK)).reshape(len(similarity), -1),
                             torch.arange(whole, similarity.shape[1]).expand(len(similarity), -1)], dim=1)
        value, at = similarity.gather(1, columns).topk(k, dim=1)
        index = columns.gather(1, at)
    else:
        value, index = similarity.topk(k, dim=1)
    return index.numpy(), (1 - value).clamp_(0, 2).numpy()


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

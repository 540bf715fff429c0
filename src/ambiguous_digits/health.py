"""The whole data set's health: near-duplicate images and leaks, outliers, overlapping classes, label health, and a
2-D map of every image.

Rows are the training images, then the test images (`joined`): row r < N_train is training image r, row
N_train + j is test image j. Near-duplicates are judged on the pixels, aligned (each image moved so its centre
of mass sits at the centre, so a copy shifted by a pixel or two lines up again), since an embedding calls many
distinct digits alike; outliers and the map use the run's embeddings (evidence.pool), where the networks'
"alike" lives. cleanlab's Datalab finds the near-duplicate sets and scores the outliers on neighbour graphs
searched here with faiss; cleanlab's dataset module gives the class health; openTSNE lays out the map.
"""

from __future__ import annotations

import numpy as np

from . import neighbours

SPLITS = ("train", "test")
# Candidate neighbours per image searched for near-duplicates: a set of more copies than this is cut.
DUPLICATE_K = 5
# Datalab's near-duplicate threshold, a fraction of the median distance to the nearest neighbour (its default,
# 0.13): on planted copies it found every exact, shifted and noisy copy (bench/duplicates.py, docs/results.md).
DUPLICATE_THRESHOLD = 0.13
# Ink below this (of full scale) counts as background: faint pixel noise on the background would otherwise
# outweigh a copy's likeness (planted copies with noise of 8 grey levels, bench/duplicates.py).
INK_FLOOR = 0.1
# Largest centring shift, in pixels: a digit is centred by its mass already, a copy is off by a few pixels.
MAX_SHIFT = 4
# The duplicate search finds its candidates on this many principal components of the aligned pixels (a copy stays
# close there), then measures each candidate in full; recall is measured by bench/duplicates.py.
DUPLICATE_COMPONENTS = 48
# Neighbours behind Datalab's outlier score (its default) and the map's affinities.
OUTLIER_K = 10
MAP_K = 15
# Up to this many images a search is exact; above, faiss's inverted lists (exact on 70,000 x 70,000 took 25.7 s on
# 2 cores, IVF_LISTS lists with IVF_PROBES probed 2.5 s, docs/lab-notebook.md).
EXACT_UP_TO = 20000
IVF_LISTS = 256
IVF_PROBES = 8
# t-SNE's two phases, iterations each: early exaggeration (12, openTSNE's), then plain. 300 kept 10-NN as well as
# 400 within 0.025 at two thirds of the time (docs/lab-notebook.md).
MAP_ITERATIONS = (100, 200)
MAP_EXAGGERATION = 12.0
MAP_METHOD = (f"t-SNE (openTSNE: FFT gradients, Barnes-Hut under 10,000 images) on the embedding's {MAP_K} "
              f"nearest neighbours, {sum(MAP_ITERATIONS)} iterations, PCA start")
DUPLICATE_METHOD = (f"Datalab's near_duplicate (threshold {DUPLICATE_THRESHOLD} x the median nearest-neighbour "
                    f"distance) on pixels centred by their mass and lightly blurred, {DUPLICATE_K} neighbours")
OUTLIER_METHOD = f"Datalab's outlier score on the embedding's {OUTLIER_K} nearest neighbours (cosine)"


def joined(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Training rows then test rows: row r of the result is `place(r)`'s image."""
    return np.concatenate([train, test])


def place(rows: np.ndarray, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Joined rows (R,) -> (R,) split names and (R,) indices within the split."""
    rows = np.asarray(rows, dtype=np.int64)
    test = rows >= n_train
    return np.where(test, "test", "train"), np.where(test, rows - n_train, rows)


# ---------------------------------------------------------------------------
# Features and neighbour graphs
# ---------------------------------------------------------------------------
def aligned(images: np.ndarray) -> np.ndarray:
    """(N, H, W) images (0-255) -> (N, H*W) float32 in [0, 1]: ink under INK_FLOOR dropped, each moved (bilinear,
    at most MAX_SHIFT pixels) so its centre of mass sits at the centre, then blurred by a 3-tap [1, 2, 1] / 4
    kernel, which damps pixel noise."""
    x = np.maximum(np.asarray(images, dtype=np.float32) / 255.0 - INK_FLOOR, 0) / (1 - INK_FLOOR)
    n, h, w = x.shape
    mass = x.sum(axis=(1, 2))
    safe = np.maximum(mass, 1e-6)
    cy = np.where(mass > 0, (x.sum(axis=2) * np.arange(h)).sum(axis=1) / safe, (h - 1) / 2)
    cx = np.where(mass > 0, (x.sum(axis=1) * np.arange(w)).sum(axis=1) / safe, (w - 1) / 2)
    dy = np.clip((h - 1) / 2 - cy, -MAX_SHIFT, MAX_SHIFT)
    dx = np.clip((w - 1) / 2 - cx, -MAX_SHIFT, MAX_SHIFT)
    return _blur(_shifted(x, dy, dx)).reshape(n, -1)


def _shifted(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """out[n, r, c] = x[n, r - dy[n], c - dx[n]], bilinear, zero outside."""
    n, h, w = x.shape
    pad = MAX_SHIFT + 1
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (pad, pad), (pad, pad))), (h, w),
                                                       axis=(1, 2))
    oy, ox = np.floor(dy).astype(np.int64), np.floor(dx).astype(np.int64)
    fy, fx = (dy - oy)[:, None, None], (dx - ox)[:, None, None]
    rows = np.arange(n)

    def moved(a: int, b: int) -> np.ndarray:  # the image moved by whole pixels (oy + a, ox + b)
        return windows[rows, pad - oy - a, pad - ox - b]

    return ((1 - fy) * (1 - fx) * moved(0, 0) + fy * (1 - fx) * moved(1, 0) + (1 - fy) * fx * moved(0, 1)
            + fy * fx * moved(1, 1)).astype(np.float32)


def _blur(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    p = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4


def graph(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by Euclidean distance: (N, k) indices, nearest first, and (N, k) distances.
    Exact up to EXACT_UP_TO rows, faiss's inverted lists above (approximate; every row still gets k)."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    n, d = x.shape
    k = min(k, n - 1)
    if n <= EXACT_UP_TO:
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, IVF_LISTS)
        index.train(x[np.random.default_rng(0).choice(n, min(n, 50 * IVF_LISTS), replace=False)])
        index.nprobe = IVF_PROBES
    index.add(x)
    squared, idx = index.search(x, k + 1)
    assert (idx >= 0).all(), "a neighbour search came back short"
    dist, idx = neighbours._without(np.sqrt(np.maximum(squared, 0)), idx, np.arange(n))
    return idx, dist


def _components(x: np.ndarray, k: int) -> np.ndarray:
    """(N, D) rows projected on their first k principal components (fitted on a seeded sample of 5,000 rows)."""
    sample = x[np.random.default_rng(0).choice(len(x), min(len(x), 5000), replace=False)]
    centre = sample.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(sample - centre, rowvar=False))
    return (x - centre) @ vectors[:, ::-1][:, :k]


def _full_distances(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate neighbours (N, k) re-measured in the full rows x (N, D): (N, k) indices and distances, nearest
    first."""
    # a column at a time: all (N, k, D) at once would take GBs
    dist = np.stack([np.linalg.norm(x[idx[:, j]] - x, axis=1) for j in range(idx.shape[1])], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)


def _csr(idx: np.ndarray, dist: np.ndarray):
    """Datalab's knn_graph: a sparse (N, N) matrix, row r holding its neighbours' distances in ascending order."""
    from scipy.sparse import csr_matrix

    n, k = idx.shape
    return csr_matrix((dist.ravel().astype(np.float64), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def _datalab(n: int, idx: np.ndarray, dist: np.ndarray, issue: str, settings: dict):
    """Datalab's `issue` on the neighbour graph of n images. It gets no labels: neither check reads them, and
    handing it 70,000 costs 2 s (it reads them back one row at a time)."""
    from cleanlab import Datalab

    lab = Datalab(data={"row": np.arange(n)}, verbosity=0)
    lab.find_issues(knn_graph=_csr(idx, dist), issue_types={issue: settings})
    return lab


# ---------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------
def near_duplicates(images: np.ndarray, labels: np.ndarray, n_train: int) -> tuple[dict[str, np.ndarray], dict]:
    """Near-duplicate pairs among the joined images (N, H, W) with labels (N,): duplicates.csv's table, one row per
    pair (split_a, index_a, split_b, index_b, distance, same_label; the pair's first image the earlier row), closest
    first; and Datalab's numbers behind it."""
    pixels = aligned(images)
    idx, dist = _full_distances(pixels, graph(_components(pixels, DUPLICATE_COMPONENTS), DUPLICATE_K)[0])
    lab = _datalab(len(labels), idx, dist, "near_duplicate", {"threshold": DUPLICATE_THRESHOLD})
    info = lab.get_info("near_duplicate")
    pairs = np.array(sorted({(min(a, int(b)), max(a, int(b))) for a, found in enumerate(info["near_duplicate_sets"])
                             for b in found if int(b) != a}), dtype=np.int64).reshape(-1, 2)
    gap = np.linalg.norm(pixels[pairs[:, 0]] - pixels[pairs[:, 1]], axis=1) if len(pairs) else np.zeros(0)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], gap))
    pairs, gap = pairs[order], gap[order]
    (split_a, index_a), (split_b, index_b) = place(pairs[:, 0], n_train), place(pairs[:, 1], n_train)
    table = {"split_a": split_a, "index_a": index_a, "split_b": split_b, "index_b": index_b,
             "distance": gap.astype(np.float32),
             "same_label": (labels[pairs[:, 0]] == labels[pairs[:, 1]]).astype(np.int8)}
    return table, {"median_nearest_distance": float(info["median_distance_to_nearest_neighbor"]),
                   "threshold": DUPLICATE_THRESHOLD}


def embedding_graph(embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The joined embeddings' (N, D) neighbour graph (cosine, as unit vectors), MAP_K deep: the outliers' and the
    map's, searched once."""
    return graph(neighbours.unit(embedding), max(MAP_K, OUTLIER_K))


def outliers(near: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Datalab's outlier score of each image from its embedding's neighbours (embedding_graph): (N,) in [0, 1], LOWER
    = more unlike its neighbours, and (N,) bool its flag."""
    idx, dist = near[0][:, :OUTLIER_K], near[1][:, :OUTLIER_K]
    found = _datalab(len(idx), idx, dist, "outlier", {}).get_issues("outlier")
    return found["outlier_score"].to_numpy(np.float32), found["is_outlier_issue"].to_numpy(bool)


def class_health(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict:
    """From out-of-sample probabilities (N, K) and labels (N,): cleanlab's overall label health score (HIGHER =
    cleaner), each class's label quality, and the class pairs whose labels overlap most."""
    from cleanlab.count import compute_confident_joint
    from cleanlab.dataset import find_overlapping_classes, overall_label_health_score, rank_classes_by_label_quality

    labels = np.asarray(labels, dtype=np.int64)
    joint = compute_confident_joint(labels, probs)
    ranked = rank_classes_by_label_quality(labels, probs, confident_joint=joint)
    overlap = find_overlapping_classes(labels, probs, confident_joint=joint)
    return {
        "label_health_score": float(overall_label_health_score(labels, probs, verbose=False)),
        "classes": [{"class": names[int(r["Class Index"])], "label_quality": _finite(r["Label Quality Score"]),
                     "label_noise": _finite(r["Label Noise"]), "label_issues": int(r["Label Issues"])}
                    for _, r in ranked.sort_values("Class Index").iterrows()],
        "overlapping": [{"a": names[int(r["Class Index A"])], "b": names[int(r["Class Index B"])],
                         "examples": int(r["Num Overlapping Examples"]),
                         "joint_probability": float(r["Joint Probability"])}
                        for _, r in overlap.head(10).iterrows() if r["Num Overlapping Examples"] > 0],
    }


def _finite(x) -> float | None:
    """A float for JSON, None where cleanlab gives NaN (a class with no image)."""
    return float(x) if np.isfinite(x) else None


def layout(embedding: np.ndarray, near: tuple[np.ndarray, np.ndarray], seed: int, threads: int) -> np.ndarray:
    """(N, D) embeddings and their neighbours (embedding_graph) -> (N, 2) float32 map coordinates (MAP_METHOD)."""
    from openTSNE import TSNEEmbedding, affinity, initialization, nearest_neighbors

    unit = neighbours.unit(embedding)
    idx, dist = near[0][:, :MAP_K], near[1][:, :MAP_K]
    similar = affinity.Uniform(knn_index=nearest_neighbors.PrecomputedNeighbors(idx, dist), verbose=False)
    start = initialization.pca(unit, random_state=seed)
    rate = max(len(unit) / MAP_EXAGGERATION, 50.0)  # openTSNE's "auto" rule: N / exaggeration, at least 50
    mapped = TSNEEmbedding(start, similar, n_jobs=threads, random_state=seed, negative_gradient_method="auto",
                           verbose=False)
    mapped = mapped.optimize(n_iter=MAP_ITERATIONS[0], exaggeration=MAP_EXAGGERATION, learning_rate=rate)
    mapped = mapped.optimize(n_iter=MAP_ITERATIONS[1], learning_rate=rate)
    return np.asarray(mapped, dtype=np.float32)

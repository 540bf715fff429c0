"""Why a digit is suspect, from measured facts: its embedding's neighbours, how unfamiliar it is, and the votes.

Numpy, the neighbour search in torch (neighbours.nearest): the embeddings are the members' penultimate features,
pooled (POOLING); row i is digit i of its split. Unfamiliarity is the mean cosine distance to the
UNFAMILIAR_K nearest training digits (HIGHER = less like anything trained on), in an embedding of its own that
keeps where the strokes lie (Layout), raised by however much a quarter turn lowers it (`upright`), given also as
a percentile of the training digits' own scores, each left out of its own neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import neighbours, scores

# The members' features averaged over each last-stage map, L2-normalised, then averaged over the
# members: the pooling whose neighbours agreed best with the predictions (docs/lab-notebook.md).
POOLING = "mean over space, mean of the L2-normalised members"
# Nearest training digits shown as evidence, per class (the given and the predicted or suggested one).
EVIDENCE_K = 8
# Nearest training digits averaged into the unfamiliarity score.
UNFAMILIAR_K = 10
# Probability a member must give its vote for the reason to call it a confident one.
CONFIDENT_P = 0.9
# Training digits whose own unfamiliarity is the percentiles' reference: a seeded sample, since each costs a
# search of every training digit (all 60,000 took a sixth of a run; docs/lab-notebook.md).
CALIBRATION_DIGITS = 10000
CALIBRATION_SEED = 0
# Calibration digits every one of which is looked at turned, for the upright check (more_familiar_turned): an
# evenly spaced fifth of the seeded sample: MNIST 0.8-1.0%, Fashion-MNIST 16.4% (of all 10,000: 0.9%, 16.7%).
CHECK_DIGITS = 2000
# Quarter turns (np.rot90's k, each way) a digit is also looked at in: one that is more familiar turned than as
# given is not upright, which the stroke layout alone misses for a turned 0 (docs/lab-notebook.md, 0.11).
TURNS = (1, 3)
# Turns are looked at only where at most this share of the sampled training images is more familiar turned: an
# upright to check. MNIST: 0.9%; Fashion-MNIST: 16.7% (coats, shirts, pullovers), where turns cost 0.026 AUROC on MNIST.
UPRIGHT_SHARE = 0.05
# The unfamiliarity's embedding: the members' flattened last-stage maps, pooled as POOLING pools, projected
# uncentred on their LAYOUT_DIMS strongest directions: it keeps where the strokes lie, which the pooled
# features average away (docs/lab-notebook.md; centred, as PCA does, it did worse than the pooled features).
LAYOUT_DIMS = 128
# Mutual information above this percentile of the test set: "networks disagree".
DISAGREE_PERCENTILE = 99.0
# At or above this percentile of the training digits' own unfamiliarity a digit, or a user's image in `predict`,
# is "unlike any training digit": it flags under 1% of MNIST's own test digits (0.60-0.76% on seeds 0-2,
# docs/results.md), and bench/ood.py measures what it catches.
PREDICT_UNFAMILIAR_PCT = 99.5


def pool(member_features: list[np.ndarray]) -> np.ndarray:
    """(M,) arrays (N, D) of per-member features -> (N, D) float32 embedding: each member's rows
    L2-normalised, then averaged over the members."""
    normed = [f.astype(np.float32) / np.maximum(np.linalg.norm(f.astype(np.float32), axis=1, keepdims=True), 1e-12)
              for f in member_features]
    return np.mean(normed, axis=0)


def unfamiliarity(train: np.ndarray, queries: np.ndarray | None = None, k: int = UNFAMILIAR_K) -> np.ndarray:
    """Mean cosine distance of each query (Q, D) to its k nearest rows of `train` (N, D): (Q,), HIGHER =
    less familiar. Without queries, of every training row to the others (each left out of its own)."""
    if queries is None:
        _, dist = neighbours.nearest(train, train, k, own=np.arange(len(train)))
    else:
        _, dist = neighbours.nearest(train, queries, k)
    return dist.mean(axis=1)


def turned(images: np.ndarray) -> np.ndarray:
    """(N, H, W) images -> (len(TURNS) * N, H, W): every image in each quarter turn of TURNS, turn by turn."""
    return np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in TURNS])


def best_turn(turns: np.ndarray) -> np.ndarray:
    """(len(TURNS) * N,) unfamiliarity of N digits turned (turned's order) -> (N,) that of each digit's most
    familiar turn."""
    return np.asarray(turns).reshape(len(TURNS), -1).min(axis=0)


def upright(as_given: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """(N,) unfamiliarity as given and (len(TURNS) * N,) of the same digits turned (turned's order) -> (N,) the
    score: as given, plus however much the most familiar turn lowers it (nothing where no turn does)."""
    return as_given + np.maximum(as_given - best_turn(turns), 0)


def calibration_rows(n: int, sample: int = CALIBRATION_DIGITS) -> np.ndarray:
    """Sorted indices of the seeded sample of n training digits whose own unfamiliarity is the percentiles'
    reference (all n when n <= sample)."""
    if sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(CALIBRATION_SEED).choice(n, sample, replace=False))


def own_unfamiliarity(train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(S,) the training digits `rows`' own unfamiliarity, each left out of its own neighbours; `train` (N, D)
    every training digit's embedding."""
    return neighbours.nearest(train, train[rows], UNFAMILIAR_K, own=rows)[1].mean(axis=1)


def own_turned(train: np.ndarray, rows: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """(len(TURNS) * S,) the unfamiliarity of the training digits `rows` turned, `turns` (len(TURNS) * S, D) their
    turned embeddings (turned's order), each searched with its own digit left out (as own_unfamiliarity does)."""
    return neighbours.nearest(train, turns, UNFAMILIAR_K, own=np.tile(rows, len(TURNS)))[1].mean(axis=1)


def more_familiar_turned(own: np.ndarray, turns: np.ndarray) -> float:
    """The share of training digits, (S,) `own` unfamiliarity and (len(TURNS) * S,) theirs turned, that some quarter
    turn makes more familiar."""
    return float((best_turn(turns) < own).mean())


def check_rows(n: int, check: int = CHECK_DIGITS) -> np.ndarray:
    """Positions in a calibration sample of n digits of the `check` evenly spaced ones the upright check looks at
    turned (all n when n <= check)."""
    return np.arange(n) if n <= check else np.arange(check) * n // check


def within_reach(own: np.ndarray, pct: float = PREDICT_UNFAMILIAR_PCT) -> np.ndarray:
    """(S,) the calibration sample's own unfamiliarity as given -> (S,) bool: the digits a turn could lift to the
    sample's `pct` percentile. A turn adds at most the score itself (upright), and the line with turns is at or
    above the line as given, so a digit under half of that cannot reach it: leaving its turns out leaves every
    percentile at or above the line exact (those below it can read a little high)."""
    line = np.percentile(own, pct, method="lower")  # an order statistic: at or under the line with turns
    return 2 * np.asarray(own) >= line


def has_upright(share: float) -> bool:
    """Whether training digits of which `share` (more_familiar_turned) is more familiar turned have an upright to
    check: at most UPRIGHT_SHARE."""
    return share <= UPRIGHT_SHARE


@dataclass(frozen=True)
class Layout:
    """The unfamiliarity's embedding: pooled flattened maps (N, D) -> (N, min(D, LAYOUT_DIMS)) unit rows, on
    the strongest directions of the training digits' own (the eigenvectors of their uncentred Gram matrix)."""

    basis: np.ndarray  # (D, LAYOUT_DIMS) float32, strongest first

    @classmethod
    def fit(cls, reference: np.ndarray, dims: int = LAYOUT_DIMS) -> Layout:
        """`reference` (N, D): the training digits' pooled flattened maps."""
        reference = np.asarray(reference, dtype=np.float32)
        _, vectors = np.linalg.eigh(reference.T @ reference)  # ascending eigenvalues
        return cls(np.ascontiguousarray(vectors[:, ::-1][:, :dims]))

    def __call__(self, flat: np.ndarray) -> np.ndarray:
        return neighbours.unit(np.asarray(flat, dtype=np.float32) @ self.basis)


@dataclass(frozen=True)
class Familiar:
    """The training digits' embeddings fitted once for many queries, their own unfamiliarity (S,), the embedding
    they are in: `layout` (pooled flattened maps) or, in a run made before 0.10, the pooled features (layout
    None), whether the run's features pass ran in bfloat16 (`bf16`), and whether its scores look at the quarter
    turns too (`turns`: `upright`; False in a run made before 0.11)."""

    index: neighbours.Fitted
    own: np.ndarray  # sorted: percentile_of's reference
    layout: Layout | None = None
    bf16: bool = False
    turns: bool = False
    k: int = UNFAMILIAR_K

    @classmethod
    def fit(cls, reference: np.ndarray, own: np.ndarray, layout: Layout | None = None, bf16: bool = False,
            turns: bool = False, k: int = UNFAMILIAR_K) -> Familiar:
        """`reference` (N, D) embeddings and `own` (S,) the unfamiliarity of (a sample of) them, each left out of
        its own neighbours."""
        return cls(neighbours.Fitted(reference), np.sort(own), layout, bf16, turns, k)

    @property
    def spatial(self) -> str:
        """The members' features a query is embedded from: "flat" (maps) or "mean" (over space)."""
        return "mean" if self.layout is None else "flat"

    def embed(self, member_features: list[np.ndarray]) -> np.ndarray:
        """(M,) arrays (Q, D) of each member's `spatial` features -> (Q, d) queries for `score`."""
        pooled = pool(member_features)
        return pooled if self.layout is None else self.layout(pooled)

    def score(self, queries: np.ndarray, turns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) embeddings, and with `self.turns` (len(TURNS) * Q, D) theirs turned (turned's order) -> (Q,)
        unfamiliarity (HIGHER = less familiar; `upright` where turns count) and (Q,) its percentile of the
        training digits' own, in [0, 100]."""
        return self.scored(queries, turns)[:2]

    def scored(self, queries: np.ndarray,
               turns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`score`'s two, and the (Q,) unfamiliarity as given (no turn looked at: `as_given`)."""
        as_given = self.as_given(queries)
        if not self.turns:
            return as_given, percentile_of(as_given, self.own), as_given
        if turns is None or len(turns) != len(TURNS) * len(queries):
            raise ValueError(f"Familiar.score: {len(TURNS)} turned embeddings a query expected")
        found = upright(as_given, self.as_given(turns))
        return found, percentile_of(found, self.own), as_given

    def as_given(self, queries: np.ndarray) -> np.ndarray:
        """(Q, D) embeddings -> (Q,) mean cosine distance to their k nearest training digits, no turn looked at."""
        return self.index.search(queries, self.k)[1].mean(axis=1)


def percentile_of(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Percent of `reference` (R,) strictly below each of `values` (N,): in [0, 100]."""
    ordered = np.sort(reference)
    return 100.0 * np.searchsorted(ordered, values, side="left") / len(ordered)


def neighbour_rows(split: str, rows: np.ndarray, classes: dict[str, np.ndarray], train: np.ndarray,
                   train_labels: np.ndarray, queries: np.ndarray, k: int = EVIDENCE_K) -> dict[str, np.ndarray]:
    """neighbours.csv's columns for the digits `rows` of `split` (queries (Q, D) their embeddings): for each
    role in `classes` (e.g. "given": (Q,) labels, "predicted": (Q,) classes), the k nearest training digits
    of that class. One row per (digit, role, rank)."""
    out: dict[str, list] = {c: [] for c in ("split", "index", "role", "class", "rank", "train_index", "distance")}
    for role, cls in classes.items():
        idx, dist = neighbours.nearest_of_class(train, train_labels, queries, cls, k)
        for q, r in enumerate(rows):
            for rank in range(k):
                if idx[q, rank] < 0:
                    continue
                for key, value in zip(out, (split, int(r), role, int(cls[q]), rank + 1, int(idx[q, rank]),
                                            float(dist[q, rank]))):
                    out[key].append(value)
    return {k_: np.array(v) for k_, v in out.items()}


def near_labels(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q, EVIDENCE_K) labels of each query's nearest training digits, nearest first."""
    idx, _ = neighbours.nearest(train, queries, EVIDENCE_K)
    return train_labels[idx]


def reasons(member_probs: np.ndarray, labels: np.ndarray, near_labels: np.ndarray, unfamiliar_pct: np.ndarray,
            names: tuple[str, ...]) -> list[str]:
    """One short sentence of facts per digit: how the networks voted, whether they disagree, what its
    nearest training digits are, whether it is unlike them all. `near_labels` (N, k): the labels of each digit's
    nearest training digits (near_labels)."""
    probs = member_probs.mean(axis=0)
    pred, votes = probs.argmax(axis=1), member_probs.argmax(axis=2)
    mi = scores.mutual_information(member_probs)
    disagree = mi >= np.percentile(mi, DISAGREE_PERCENTILE)
    m, k = len(member_probs), near_labels.shape[1]
    out = []
    for i in range(len(labels)):
        voted = int((votes[:, i] == pred[i]).sum())
        sure = int(((votes[:, i] == pred[i]) & (member_probs[:, i, pred[i]] >= CONFIDENT_P)).sum())
        parts = [f"{voted} of {m} networks read {names[pred[i]]}" + (f" ({sure} with p ≥ {CONFIDENT_P})" if sure else "")]
        if disagree[i]:
            parts.append(f"networks disagree (mutual information in the top {100 - DISAGREE_PERCENTILE:g}%)")
        common = np.bincount(near_labels[i], minlength=len(names)).argmax()
        parts.append(f"{int((near_labels[i] == common).sum())} of its {k} nearest training digits are "
                     f"{names[common]}s")
        if unfamiliar_pct[i] >= PREDICT_UNFAMILIAR_PCT:
            parts.append(f"unlike any training digit (unfamiliarity at the {unfamiliar_pct[i]:.1f}th percentile)")
        out.append("; ".join(parts))
    return out


def label_issue_reasons(table: dict[str, np.ndarray], near_labels: np.ndarray, names: tuple[str, ...]) -> list[str]:
    """One short sentence of facts per audited digit: its rank in the audit, cleanlab's verdict, the suggested class,
    and its nearest training digits. `table` is audit.label_issue_table's; `near_labels` (N, k) the labels of each digit's
    nearest training digits, -1 where none was searched (a row of -1: that part is left out)."""
    out = []
    for i in range(len(table["index"])):
        given, suggested = names[table["given_label"][i]], names[table["suggested_label"][i]]
        # cleanlab's default thresholds flag few on a clean test set: the rank is what to read, not the flag
        flagged = "flagged by cleanlab" if table["is_label_issue"][i] else "not flagged at cleanlab's thresholds"
        parts = [f"rank {int(table['rank'][i]):,} of {len(table['index']):,}; {flagged} "
                 f"(quality {table['label_quality'][i]:.2g})"]
        if suggested != given:
            parts.append(f"given {given}, the out-of-sample networks suggest {suggested}")
        near = near_labels[i][near_labels[i] >= 0]  # fewer training digits than k: padded with -1
        if len(near):
            common = np.bincount(near, minlength=len(names)).argmax()
            parts.append(f"{int((near == common).sum())} of its {len(near)} nearest training digits are "
                         f"{names[common]}s")
        out.append("; ".join(parts))
    return out

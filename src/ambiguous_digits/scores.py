"""Ambiguity measures and error summaries: pure numpy over class probabilities and labels.

The measures take `probs` (N, K), rows summing to 1, and `labels` (N,) integers
in [0, K), and return one value per digit: row i is test image i. Ranks are 1
for the most ambiguous digit; ties are broken by the lower index, so a ranking
is reproducible. The error summaries at the end take labels and predictions
(N,) and return counts, accuracies and means that the report quotes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Rows of a float32 softmax sum to 1 only up to rounding.
SUM_TOLERANCE = 1e-3


def validate(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check the public inputs once; return them as float64 (N, K) and int64 (N,)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs: expected shape (N, K) with K >= 2, got {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels: expected shape ({probs.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got dtype {labels.dtype}")
    probs = probs.astype(np.float64)
    if not np.isfinite(probs).all():
        raise ValueError("probs: contains NaN or infinity")
    if (probs < 0).any():
        raise ValueError("probs: contains negative values")
    if len(probs) and np.abs(probs.sum(axis=1) - 1).max() > SUM_TOLERANCE:
        raise ValueError("probs: rows must sum to 1")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels: values must lie in [0, {probs.shape[1]})")
    return probs, labels.astype(np.int64)


def predicted(probs: np.ndarray) -> np.ndarray:
    """(N,) the most probable class (the lower class on a tie)."""
    return probs.argmax(axis=1)


def prob_pred(probs: np.ndarray) -> np.ndarray:
    """(N,) probability of the predicted class; LOWER means more ambiguous."""
    return probs.max(axis=1)


def prob_label(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) probability given to the true label; lower means the model disagrees more."""
    return probs[np.arange(len(labels)), labels]


def margin(probs: np.ndarray) -> np.ndarray:
    """(N,) top-1 minus top-2 probability, in [0, 1]; LOWER means more ambiguous."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy(probs: np.ndarray) -> np.ndarray:
    """(N,) predictive entropy in nats, in [0, log K]; HIGHER means more ambiguous."""
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=1)


def rank(badness: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N,) float ranks, 1 = highest `badness`; NaN where `mask` is False."""
    ranks = np.full(len(badness), np.nan)
    idx = np.flatnonzero(np.ones(len(badness), bool) if mask is None else mask)
    order = idx[np.argsort(-badness[idx], kind="stable")]
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def _confident_wrong(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return rank(prob_pred(probs), mask=predicted(probs) != labels)


def _least_confident(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return rank(-prob_pred(probs))


def _margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return rank(-margin(probs))


def _entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return rank(entropy(probs))


def ambiguity(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) 1 - (ensemble-mean) probability of the given label, in [0, 1]; HIGHER is more ambiguous.

    High both when the networks split their belief between classes and when they
    all agree on a class other than the label.
    """
    return 1.0 - prob_label(probs, labels)


def _ambiguity(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return rank(ambiguity(probs, labels))


# Each ranking: name -> (probs, labels) -> ranks. confident_wrong ranks only the
# misclassified digits by how sure the wrong prediction is (the original
# analysis's main definition); the others rank every digit.
RANKINGS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "confident_wrong": _confident_wrong,
    "least_confident": _least_confident,
    "margin": _margin,
    "entropy": _entropy,
    "ambiguity": _ambiguity,
}


def rank_by(name: str, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) ranks under the named definition (see RANKINGS); NaN = not ranked."""
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; choose from {', '.join(RANKINGS)}")
    probs, labels = validate(probs, labels)
    return RANKINGS[name](probs, labels)


def score_table(member_probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure and rank as named (N,) columns, from per-member probabilities (M, N, K).

    The single-model measures use the ensemble mean; a single model is M = 1.
    """
    member_probs, labels = validate_members(member_probs, labels)
    probs = member_probs.mean(axis=0)
    table = {
        "index": np.arange(len(labels)),
        "label": labels,
        "pred": predicted(probs),
        "prob_pred": prob_pred(probs),
        "prob_label": prob_label(probs, labels),
        "margin": margin(probs),
        "entropy": entropy(probs),
        "vote_disagreement": vote_disagreement(member_probs),
        "expected_entropy": expected_entropy(member_probs),
        "mutual_information": mutual_information(member_probs),
        "members_wrong": members_wrong(member_probs, labels),
        "ambiguity": ambiguity(probs, labels),
    }
    for name, fn in RANKINGS.items():
        table[f"rank_{name}"] = fn(probs, labels)
    return table


def top_indices(ranks: np.ndarray, k: int) -> np.ndarray:
    """Row positions of ranks 1..k (fewer if fewer are ranked), most ambiguous first."""
    ranked = np.flatnonzero(~np.isnan(ranks))
    order = ranked[np.argsort(ranks[ranked], kind="stable")]
    return order[:k]


# ---------------------------------------------------------------------------
# Calibration: is a stated confidence of 0.9 right 90% of the time?
# ---------------------------------------------------------------------------
# 15 equal-width confidence bins, the convention of Guo et al. (2017) that most
# papers report ECE with.
ECE_BINS = 15
# log(0) guard for the NLL: probabilities below this count as this.
MIN_PROB = 1e-12


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (nats); lower is better."""
    probs, labels = validate(probs, labels)
    return float(-np.log(np.maximum(prob_label(probs, labels), MIN_PROB)).mean())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin (bins,): mean confidence, accuracy and count (NaN where empty)."""
    probs, labels = validate(probs, labels)
    conf, right = prob_pred(probs), predicted(probs) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, right, bins) / count
    return {"confidence": mean_conf, "accuracy": acc, "count": count,
            "edges": np.linspace(0, 1, bins + 1)}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Count-weighted mean |accuracy - confidence| over the bins; 0 is perfectly calibrated."""
    r = reliability(probs, labels, bins)
    filled = r["count"] > 0
    gap = np.abs(r["accuracy"][filled] - r["confidence"][filled])
    return float((gap * r["count"][filled]).sum() / r["count"].sum())


# ---------------------------------------------------------------------------
# Ensembles: per-member probabilities (M, N, K) from independently seeded CNNs.
# Total uncertainty = aleatoric (the digit itself is unclear to every member)
#                   + epistemic (the members disagree; BALD's mutual information).
# ---------------------------------------------------------------------------


def validate_members(member_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check (M, N, K) probabilities and (N,) labels once; return float64 / int64 copies."""
    member_probs, labels = np.asarray(member_probs), np.asarray(labels)
    if member_probs.ndim != 3 or member_probs.shape[0] < 1:
        raise ValueError(f"member_probs: expected shape (M, N, K), got {member_probs.shape}")
    m, n, k = member_probs.shape
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
    flat, tiled = validate(member_probs.reshape(m * n, k), np.tile(labels, m))
    return flat.reshape(m, n, k), tiled[:n]


def vote_disagreement(member_probs: np.ndarray) -> np.ndarray:
    """(N,) fraction of members NOT voting for the plurality class, in [0, 1 - 1/M]; HIGHER is worse."""
    m, _, k = member_probs.shape
    votes = member_probs.argmax(axis=2)  # (M, N)
    counts = np.stack([(votes == c).sum(axis=0) for c in range(k)], axis=1)  # (N, K)
    return 1.0 - counts.max(axis=1) / m


def expected_entropy(member_probs: np.ndarray) -> np.ndarray:
    """(N,) mean over members of each member's entropy: the aleatoric part (nats)."""
    m, n, k = member_probs.shape
    return entropy(member_probs.reshape(m * n, k)).reshape(m, n).mean(axis=0)


def mutual_information(member_probs: np.ndarray) -> np.ndarray:
    """(N,) entropy of the mean minus the mean entropy: the epistemic part (nats, >= 0)."""
    total = entropy(member_probs.mean(axis=0))
    # Jensen makes this >= 0; clip the float rounding that can dip a hair below.
    return np.maximum(total - expected_entropy(member_probs), 0.0)


def members_wrong(member_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) how many members' top class differs from the label, in [0, M]."""
    return (member_probs.argmax(axis=2) != labels[None, :]).sum(axis=0)


# ---------------------------------------------------------------------------
# Errors: what the report quotes. `labels` and `preds` are (N,) integers in [0, K).
# ---------------------------------------------------------------------------


def error_confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts of misclassified images, row = true class, column = prediction; diagonal 0.

    A HIGHER cell is a pair the classifier confuses more often.
    """
    conf = np.zeros((k, k), dtype=np.int64)
    wrong = labels != preds
    np.add.at(conf, (labels[wrong], preds[wrong]), 1)
    return conf


def top_confusions(conf: np.ndarray, n: int = 3) -> list[tuple[int, int, int]]:
    """The n largest cells of a (K, K) confusion as (true, predicted, count), largest first.

    Ties go to the lower (true, predicted) pair; empty cells are left out, so fewer may come back.
    """
    flat = np.argsort(-conf, axis=None, kind="stable")[:n]
    cells = zip(*np.unravel_index(flat, conf.shape))
    return [(int(t), int(p), int(conf[t, p])) for t, p in cells if conf[t, p] > 0]


def class_accuracy(labels: np.ndarray, preds: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    """One dict per class of the (K,) `names`: its index, name, test images `n`, `correct` ones and
    `accuracy` in [0, 1] (HIGHER is better; None where no test image has that class)."""
    out = []
    for c, name in enumerate(names):
        mine = labels == c
        right = int((preds[mine] == c).sum())
        out.append({"class": c, "name": name, "n": int(mine.sum()), "correct": right,
                    "accuracy": right / mine.sum() if mine.any() else None})
    return out


def errors_in_top(ranks: np.ndarray, wrong: np.ndarray, k: int) -> int:
    """How many of the k top-ranked images (ranks (N,), 1 = most ambiguous, NaN = unranked) are
    misclassified (`wrong` (N,) bool); in [0, k]. HIGHER means the ranking finds more errors."""
    return int(wrong[top_indices(ranks, k)].sum())


def uncertainty_split(expected: np.ndarray, mutual: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """Mean total, aleatoric and epistemic entropy (nats) over the images where `rows` (N,) is True.

    `expected` (N,) is expected_entropy (aleatoric), `mutual` (N,) mutual_information (epistemic);
    their sum is the total. `epistemic_share` in [0, 1]: HIGHER means more of the uncertainty is the
    members disagreeing. All 0.0 when no row is chosen.
    """
    if not rows.any():
        return {"total": 0.0, "aleatoric": 0.0, "epistemic": 0.0, "epistemic_share": 0.0}
    alea, epi = float(expected[rows].mean()), float(mutual[rows].mean())
    total = alea + epi
    return {"total": total, "aleatoric": alea, "epistemic": epi, "epistemic_share": epi / total if total else 0.0}

"""Suspected label errors: out-of-sample probabilities by K-fold cross-validation, ranked by cleanlab.

For the test split, fold f's model trains on all 60,000 training digits plus the
other K-1 test folds and predicts fold f; for the train split it trains on the
other K-1 training folds. Every digit is predicted exactly once, by a model that
never saw it. Confident learning itself is cleanlab's (not reimplemented here).
"""

from __future__ import annotations

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from . import scores
from .config import ConfigError

# cleanlab's label-quality score: 'normalized_margin' (the given label's probability
# minus the largest other class's), the score Northcutt et al. ranked MNIST's test
# labels with before their human review, so `validate` compares like with like.
QUALITY_METHOD = "normalized_margin"


def fold_ids(n: int, k: int, seed: int) -> np.ndarray:
    """(n,) fold number in [0, k) of each digit: a seeded shuffle cut into k near-equal folds."""
    if not 2 <= k <= n:
        raise ConfigError(f"--folds: need 2 <= K <= {n} digits, got {k}")
    order = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n) % k
    return ids


def fold_training_set(extra_x, extra_y, x, y, folds: np.ndarray, f: int):
    """Training digits for fold f: all of `extra` (may be empty) plus every digit not in fold f."""
    keep = folds != f
    return np.concatenate([extra_x, x[keep]]), np.concatenate([extra_y, y[keep]])


def label_issue_table(labels: np.ndarray, pred_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per digit (row i = digit i): given and suggested label, cleanlab's quality and issue flag, rank.

    `label_quality` in [0, 1]: LOWER means the label is more likely wrong; rank 1 = most suspect.
    """
    labels = np.asarray(labels, dtype=np.int64)
    quality = get_label_quality_scores(labels, pred_probs, method=QUALITY_METHOD)
    is_issue = find_label_issues(labels, pred_probs)
    ranks = scores.rank(-quality).astype(np.int64)  # lowest quality first, ties by index
    return {
        "index": np.arange(len(labels)),
        "given_label": labels,
        "suggested_label": pred_probs.argmax(axis=1),
        "label_quality": quality,
        "rank": ranks,
        "is_label_issue": is_issue.astype(np.int64),
    }

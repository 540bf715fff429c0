"""Training dynamics of every training digit, from the members' own training steps (pure numpy).

Each cross-fitted member records, for every digit it trains on and every epoch,
the given label's probability and its margin (that label's logit minus the
largest other logit) as its training step computed them (train.Dynamics). From
those, per digit, averaged over the members that trained on it:

- confidence, variability: mean and standard deviation over epochs of the given
  label's probability (Dataset Cartography, Swayamdipta et al. 2020);
- correctness: the fraction of epochs in which the given label won;
- forgetting: epochs in which a digit won, then lost in the next epoch it was seen (Toneva et al. 2019); a digit never learnt
  counts as forgotten in every epoch it was seen (Toneva's "infinitely often", capped: a learnt digit of E
  epochs is forgotten at most E / 2 times);
- aum: the mean margin, the area under the margin (Pleiss et al. 2020): a wrong
  label is learnt late, by memorising, so its margin stays low or negative.
"""

from __future__ import annotations

import numpy as np

# Cartography's regions, on its two axes: a digit whose given label's probability swings by this much
# (standard deviation over epochs) is "ambiguous"; a steady one below HARD_CONFIDENCE is "hard to learn".
AMBIGUOUS_VARIABILITY = 0.2
HARD_CONFIDENCE = 0.5
REGIONS = ("easy to learn", "ambiguous", "hard to learn")
# Training digits shown per region that is not "easy to learn" (the report's galleries; their images in the run).
SHOWN = 20
COLUMNS = ("confidence", "variability", "correctness", "forgetting", "aum")


def member_dynamics(values: np.ndarray) -> dict[str, np.ndarray]:
    """(epochs, 2, n) recorded values (NaN: an epoch with no record of a digit; before 0.14.1 a lone last digit sat
    its epoch out, and a resumed member keeps its earlier epochs) -> the five per-digit scores of one member, and
    `seen`: whether it saw the digit at all."""
    values = np.asarray(values, dtype=np.float64)
    prob, margin = values[:, 0], values[:, 1]
    seen = ~np.isnan(prob)
    count = np.maximum(seen.sum(0), 1)
    confidence = np.where(seen, prob, 0).sum(0) / count
    variability = np.sqrt(np.where(seen, (prob - confidence) ** 2, 0).sum(0) / count)
    won = seen & (margin > 0)
    # Won in one seen epoch, lost in the next seen one: a sat-out epoch in between is skipped.
    forgotten = np.zeros(values.shape[2], dtype=np.int64)
    last = np.zeros(values.shape[2], dtype=bool)  # won in the last epoch seen
    for e in range(len(prob)):
        forgotten += seen[e] & last & ~won[e]
        last = np.where(seen[e], won[e], last)
    forgotten = np.where(won.any(0), forgotten, seen.sum(0))
    return {"confidence": confidence, "variability": variability, "correctness": won.sum(0) / count,
            "forgetting": forgotten.astype(np.float64), "aum": np.where(seen, margin, 0).sum(0) / count,
            "seen": seen.any(0)}


def pool(recorded: list[tuple[np.ndarray, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """Each member's (rows it trained on (n_m,), its recorded values (epochs, 2, n_m)) -> per training digit
    (row i = digit i) the mean of each score over the members that trained on it, and how many did."""
    sums = {k: np.zeros(n) for k in COLUMNS}
    members = np.zeros(n, dtype=np.int64)
    for rows, values in recorded:
        found = member_dynamics(values)
        seen = found.pop("seen")
        for k, v in found.items():
            sums[k][rows[seen]] += v[seen]
        members[rows[seen]] += 1
    if (members == 0).any():
        raise ValueError(f"{int((members == 0).sum())} training digit(s) were trained on by no member")
    return {**{k: v / members for k, v in sums.items()}, "members_trained": members}


def regions(confidence: np.ndarray, variability: np.ndarray) -> np.ndarray:
    """Each digit's cartography region (REGIONS): ambiguous, hard to learn, or easy to learn."""
    out = np.full(len(confidence), REGIONS[0], dtype=object)
    out[confidence < HARD_CONFIDENCE] = REGIONS[2]
    out[variability >= AMBIGUOUS_VARIABILITY] = REGIONS[1]
    return out


def dynamics_table(recorded: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray) -> dict[str, np.ndarray]:
    """train_dynamics.csv's columns: index, label, the five scores, members_trained, region; row i = digit i."""
    scores = pool(recorded, len(labels))
    return {"index": np.arange(len(labels)), "label": np.asarray(labels, dtype=np.int64), **scores,
            "region": regions(scores["confidence"], scores["variability"])}


def region_counts(table: dict[str, np.ndarray]) -> dict[str, int]:
    """How many digits sit in each region (REGIONS order)."""
    return {region: int((table["region"] == region).sum()) for region in REGIONS}


def shown(table: dict[str, np.ndarray], k: int = SHOWN) -> dict[str, np.ndarray]:
    """The galleries' rows: the k most typical digits of the ambiguous and of the hard-to-learn region."""
    return {region: most(table, region, k) for region in REGIONS[1:]}


def most(table: dict[str, np.ndarray], region: str, k: int) -> np.ndarray:
    """Up to k rows of `region`, most typical first: the most variable ambiguous digits, the least confident
    hard-to-learn ones (ties by index)."""
    rows = np.flatnonzero(table["region"] == region)
    key = -table["variability"][rows] if region == REGIONS[1] else table["confidence"][rows]
    return rows[np.argsort(key, kind="stable")][:k]

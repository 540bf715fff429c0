"""Check a ranking of suspected label errors against a human review nobody here wrote.

Northcutt, Athalye & Mueller (2021) had 5 reviewers judge each of 100 MNIST test
digits; under their 3-of-5 rule 15 are label errors (references/mnist_test_mturk.json).
"""

from __future__ import annotations

import json
from importlib.resources import files as package_files

import numpy as np
from sklearn.metrics import average_precision_score

# Human reviews of a data set's test labels, by --dataset: only MNIST's exists here.
REVIEWS = {"mnist": "mnist_test_mturk.json"}
TOP_KS = (10, 20, 50, 100)
# For scale: the ranking that chose these 100 digits (cleanlab's normalized margin on
# the authors' own cross-validated probabilities), as the issue that asked for this states.
AUTHORS_AP = 0.51
AUTHORS_TOP10 = 5
# The reviewers' 3-of-5 verdict -> a review row's: a majority for the guessed label relabels the digit to it; a
# majority for neither label, or no majority, leaves no label to trust, so the digit is excluded.
REVIEW_VERDICTS = {"correct": "correct", "correctable": "relabel", "neither": "exclude", "no_majority": "exclude"}


def load_review(dataset: str = "mnist") -> list[dict]:
    """The reviewed test images of `dataset` (one of REVIEWS): index, given_label, guessed_label, votes, verdict."""
    text = package_files("ambiguous_digits").joinpath("references", REVIEWS[dataset]).read_text()
    return json.loads(text)["records"]


def review_rows(review: list[dict]) -> list[dict]:
    """The review's records (load_review) as `clean`'s review rows, one per record in order: split, index,
    given_label, verdict (correct, relabel or exclude), new_label (relabel only, else None), note, reviewed_at."""
    rows = []
    for r in review:
        if r["verdict"] not in REVIEW_VERDICTS:
            raise ValueError(f"test digit {r['index']}: unknown verdict {r['verdict']!r}")
        verdict, votes = REVIEW_VERDICTS[r["verdict"]], r["votes"]
        note = (f"{r['verdict']}: {votes['given']} of {sum(votes.values())} reviewers chose the given label, "
                f"{votes['guessed']} the guessed {r['guessed_label']}, {votes['neither']} neither")
        rows.append({"split": "test", "index": r["index"], "given_label": r["given_label"], "verdict": verdict,
                     "new_label": r["guessed_label"] if verdict == "relabel" else None, "note": note,
                     "reviewed_at": ""})  # the votes carry no date
    return rows


def review_errors(review: list[dict]) -> np.ndarray:
    """(E,) int64 indices the reviewers judged label errors (any verdict but 'correct'); empty without a review."""
    return np.array(sorted(r["index"] for r in review if r["verdict"] != "correct"), dtype=np.int64)


def validate_ranking(ranks: np.ndarray, review: list[dict]) -> dict:
    """Compare (N,) ranks of suspected label errors (1 = most suspect; row i = test digit i) with the review.

    Returns how many reviewed errors are in our top 10/20/50/100 and the average
    precision of our ranking over the reviewed digits (positives = the errors).
    """
    ranks = np.asarray(ranks, dtype=float)
    reviewed = np.array([r["index"] for r in review])
    if reviewed.max() >= len(ranks):
        raise ValueError(f"ranking covers {len(ranks)} digits; the review needs all {reviewed.max() + 1}")
    errors = review_errors(review)
    is_error = np.isin(reviewed, errors)
    worst = np.where(np.isnan(ranks), len(ranks) + 1, ranks)  # unranked: after everything
    return {
        "reviewed": len(reviewed),
        "errors": [int(i) for i in errors],
        **{f"errors_in_top_{k}": int((worst[errors] <= k).sum()) for k in TOP_KS},
        "average_precision": float(average_precision_score(is_error, -worst[reviewed])),
        "ranks_of_errors": {int(i): _rank_or_none(ranks[i]) for i in errors},
        "reference": {"average_precision": AUTHORS_AP, "errors_in_top_10": AUTHORS_TOP10},
    }


def _rank_or_none(rank: float) -> int | None:
    return int(rank) if rank.is_integer() else None

"""The run's own label audits and training dynamics, from its cross-fitted members: no extra training.

Member m trains on the training digits outside fold m (audit.fold_ids over `members` folds) and
predicts fold m: every training digit is out-of-sample for one member, every test digit for all.
cleanlab ranks both splits on those probabilities (the files and columns of `audit`), and the
members' training steps give every training digit's dynamics (dynamics.py).
"""

from __future__ import annotations

import time

import numpy as np

from .. import audit, dynamics, manifest, outputs, rundir
from ..config import AuditPlan, Recipe
from .audit import CROSS_FIT, write_audit
from .common import Log, write_images

# What ranks the run's training-set audit (rank_by_training).
TRAIN_RANKING = "confidence during training (dynamics.py), lowest first"


def holdout_folds(recipe: Recipe, n_train: int) -> np.ndarray | None:
    """(N_train,) the member that holds each training digit out, or None when the members are not cross-fitted."""
    return audit.fold_ids(n_train, recipe.holdout_folds, recipe.seed) if recipe.holdout_folds else None


def out_of_sample(results, folds: np.ndarray, num_classes: int) -> np.ndarray:
    """(N_train, K) each training digit's probabilities from the one member that never saw it."""
    probs = np.zeros((len(folds), num_classes), dtype=np.float32)
    for m, r in enumerate(results):
        probs[folds == m] = r.holdout_probs
    return probs


def write_analysis(out, recipe: Recipe, record: dict, data: tuple[np.ndarray, ...], results,
                   oos: dict[str, np.ndarray], folds: np.ndarray, embedded: dict[str, np.ndarray], near: np.ndarray,
                   names: tuple[str, ...], log: Log, train_columns: dict[str, np.ndarray] | None = None) -> dict:
    """Both splits' label audits, train_dynamics.csv and the data map; returns the run summary's part.
    `oos`: each split's out-of-sample probabilities (N, K) (out_of_sample's for training, the members' mean for
    test); `near` (N_test, k): the test digits' nearest training digits' labels, from the evidence stage;
    `train_columns`: more per-training-digit columns for train_dynamics.csv (the health stage's)."""
    x_train, y_train, x_test, y_test = data
    start, seconds = time.perf_counter(), {}
    learnt, regions = write_dynamics(out, results, folds, x_train, y_train, train_columns or {})
    seconds["dynamics"] = round(time.perf_counter() - start, 3)
    start, plan = time.perf_counter(), AuditPlan()
    found = {}
    for split, x, y in (("test", x_test, y_test), ("train", x_train, y_train)):
        table = audit.label_issue_table(y, oos[split])
        if split == "train":
            rank_by_training(table, learnt)
        top = write_audit(out, split, plan.top, table, x, names, embedded, y_train, near if split == "test" else None)
        held = {"folds": folds} if split == "train" else {}
        rundir.save_npz(out, rundir.AUDIT[split].probs, probs=oos[split], labels=y, index=np.arange(len(y)), **held)
        found[split] = int(table["is_label_issue"].sum())
        rundir.save_json(out, rundir.AUDIT[split].summary, {
            "split": split, "method": CROSS_FIT, "digits": len(y), "folds": recipe.holdout_folds,
            "members_per_fold": recipe.members if split == "test" else 1, "run_members_pooled": 0,
            "cv_accuracy": float((oos[split].argmax(1) == y).mean()), "label_issues_found": found[split],
            "top": [int(i) for i in top], "top_labels": [[names[y[i]], names[table["suggested_label"][i]]] for i in top],
            "quality_method": audit.QUALITY_METHOD, "data": record, "recipe": recipe.to_json(),
            "ranked_by": TRAIN_RANKING if split == "train" else "label_quality",
            "audit": {"folds": recipe.holdout_folds, "split": split, "top": plan.top}})
        log(f"{split}-set audit: {len(y):,} labels ranked in {rundir.AUDIT[split].table}, {found[split]} flagged at "
            f"cleanlab's default thresholds (out-of-sample accuracy {(oos[split].argmax(1) == y).mean():.2%})")
    seconds["audits"] = round(time.perf_counter() - start, 3)
    return {"folds": recipe.holdout_folds, "holdout_accuracy": float((oos["train"].argmax(1) == y_train).mean()),
            "label_issues_found": found, "regions": regions, "seconds": seconds}


def rank_by_training(table: dict[str, np.ndarray], learnt: dict[str, np.ndarray]) -> None:
    """The training audit's table gains the dynamics' confidence and AUM, and is ranked by that confidence, lowest
    first (ties by cleanlab's quality, then index): on planted label noise it found the flipped labels best at
    0.1% flips and within 0.002 of the best at 1% (bench/label_noise.py, docs/results.md). cleanlab's quality
    and flags stay as cleanlab gives them."""
    table["confidence"], table["aum"] = learnt["confidence"], learnt["aum"]
    order = np.lexsort((table["index"], table["label_quality"], learnt["confidence"]))
    table["rank"] = np.empty(len(order), dtype=np.int64)
    table["rank"][order] = np.arange(1, len(order) + 1)


def dynamics_of(results, folds: np.ndarray, y_train: np.ndarray) -> dict[str, np.ndarray]:
    """train_dynamics.csv's table from the cross-fitted members' records (member m trained on folds != m)."""
    return dynamics.dynamics_table([(np.flatnonzero(folds != m), r.dynamics) for m, r in enumerate(results)],
                                   y_train)


def write_dynamics(out, results, folds: np.ndarray, x_train: np.ndarray, y_train: np.ndarray,
                   more: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """train_dynamics.csv (with the columns `more`), data_map.png and the images of the report's galleries;
    returns the table and each region's count."""
    table = {**dynamics_of(results, folds, y_train), **more}
    outputs.write_table(out / rundir.DYNAMICS_FILE, table)
    counts = dynamics.region_counts(table)
    heading = (f"Data map of {len(y_train)} training digits: " +
               ", ".join(f"{n} {region}" for region, n in counts.items()))
    outputs.data_map(out / rundir.DATA_MAP_FILE, table["confidence"], table["variability"], table["correctness"],
                     dynamics.AMBIGUOUS_VARIABILITY, dynamics.HARD_CONFIDENCE, heading)
    images = write_images(out, rundir.AUDIT["train"].images, x_train,
                          np.unique(np.concatenate(list(dynamics.shown(table).values()))))
    manifest.record(out, out / rundir.DYNAMICS_FILE, out / rundir.DATA_MAP_FILE, *images)
    return table, counts

"""The independent training jobs: one per ensemble member of `run`, one per member of each `audit` fold.

Each job is a plain function of the recipe, its seed and the images, so it gives
the same result wherever it runs — in this process or as a Ray task on another
machine (backend.map_jobs). It writes no files: the driver saves its result as it
arrives (members.save_member). Locally `on_epoch` saves each epoch's training
state; `state` continues a member an interrupted run left behind.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import members
from .config import Recipe
from .train import Runtime, setup


def member_job(recipe: Recipe, device: str, threads: int | None, seed: int, num_classes: int, x_train: np.ndarray,
               y_train: np.ndarray, x_eval: np.ndarray, state: dict | None = None, on_epoch=None,
               progress: bool = True, folds: np.ndarray | None = None,
               fold: int | None = None) -> members.MemberResult:
    """Train one CNN with `seed` on (x_train, y_train) and predict x_eval: probabilities (N, K), row i = image i.
    Cross-fitted (`folds`, (N_train,) fold of each training digit), it trains on the digits outside `fold` and
    predicts those inside it too.

    The model comes back on the CPU, whatever device trained it.
    """
    resolved, precision = setup(device, threads, recipe.precision)
    rt = Runtime(resolved, precision, progress, on_epoch)
    held_out = None if folds is None else folds == fold
    result = members.train_member(recipe, seed, x_train, y_train, x_eval, num_classes, rt, state=state,
                                  held_out=held_out)
    return dataclasses.replace(result, model=result.model.cpu())


def fold_member_job(recipe: Recipe, device: str, threads: int | None, seed: int, num_classes: int, fold: int,
                    extra_x: np.ndarray, extra_y: np.ndarray, x: np.ndarray, y: np.ndarray, folds: np.ndarray,
                    state: dict | None = None, on_epoch=None, progress: bool = True) -> members.MemberResult:
    """One member of audit fold `fold`: trained on everything but the fold (plus `extra`), predicting the
    fold's images in index order (the rows of `folds == fold`). The fold's training set is cut here, on
    the worker, from arrays every job shares."""
    from . import audit  # here: cleanlab's import would double a local worker's start-up for the run's members

    x_tr, y_tr = audit.fold_training_set(extra_x, extra_y, x, y, folds, fold)
    return member_job(recipe, device, threads, seed, num_classes, x_tr, y_tr, x[folds == fold], state, on_epoch,
                      progress)

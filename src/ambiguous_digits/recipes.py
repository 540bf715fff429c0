"""The recipe for a user's own data set: MNIST's, unless Fashion-MNIST's (config.RECIPES) clearly beats it on a
validation split of its training images. Flags typed on the command line override either (config.start_recipe)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .config import RECIPES, Recipe
from .train import Runtime, predict_probs, train

# The validation choice: a seeded fifth of the training images (at most VALIDATION_MAX) is held out, and one CNN
# per candidate trains on at most VALIDATION_TRAIN of the rest (201 s on MNIST, beside another training job).
VALIDATION_SHARE = 0.2
VALIDATION_MAX = 2000
VALIDATION_TRAIN = 10000
VALIDATION_SEED = 0
# Fewer training images than this: too few to choose by; MNIST's recipe it is.
VALIDATION_MIN = 50


def choose(recipe: Recipe, x_train: np.ndarray, y_train: np.ndarray, num_classes: int, rt: Runtime,
           log: Callable[[str], None]) -> tuple[Recipe, dict]:
    """MNIST's recipe, unless another candidate (RECIPES) beats it on a held-out split of the training images by more
    than chance would (`better`); returns the recipe and the record of the choice."""
    if len(y_train) < VALIDATION_MIN:
        return recipe, {"by": f"too few training images to validate (under {VALIDATION_MIN}): MNIST's recipe"}
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(y_train))
    held = max(1, min(VALIDATION_MAX, int(len(y_train) * VALIDATION_SHARE)))
    val, fit = order[:held], np.sort(order[held:held + VALIDATION_TRAIN])
    val = np.sort(val)
    right = {}
    for name, knobs in RECIPES.items():
        candidate = dataclasses.replace(recipe, **knobs, starts_from=name)
        model, _ = train(x_train[fit], y_train[fit], candidate, candidate.member_seeds()[0], rt,
                         num_classes=num_classes)
        right[name] = predict_probs(model, x_train[val], rt.device).argmax(axis=1) == y_train[val]
        log(f"recipe {name}: {right[name].mean():.2%} on {len(val)} held-out training images (trained on {len(fit)})")
    best = "mnist"
    for name in RECIPES:
        if better(right[name], right[best]):
            best = name
    return (dataclasses.replace(recipe, **RECIPES[best], starts_from=best),
            {"by": f"validation: one CNN per recipe on {len(fit)} training images, scored on {len(val)} others; "
                   "MNIST's unless another is right more often by over two standard errors (McNemar)",
             "validation_accuracy": {k: float(v.mean()) for k, v in right.items()}, "chosen": best})


def better(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the classifier right on `a` (N,) bool beats the one right on `b` by more than two standard errors of
    the paired difference (McNemar: of the images one gets right and the other wrong, a's share is above half by
    over 2 sigma)."""
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    return wins - losses > 2 * np.sqrt(wins + losses)

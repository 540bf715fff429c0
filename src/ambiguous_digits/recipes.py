"""Which recipe a run starts from: each published data set's measured one, and for a user's own data the one of
those that scores best on a validation split of its training images. Flags typed on the command line override
either (docs/results.md has the measurements behind each)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .config import PUBLISHED_DATASETS, Recipe
from .train import Runtime, predict_probs, train

# The measured recipes: MNIST's is Recipe's defaults. Fashion-MNIST under-fits with MNIST's augmentation
# (91.51 +- 0.20%, 3 seeds); without it, wider and longer, it reaches the numbers in docs/results.md.
RECIPES: dict[str, dict] = {"mnist": {}, "fashion-mnist": {"augment": False, "epochs": 12, "widths": (24, 48, 128)}}
# The settings a recipe decides; typing any of them keeps a user's data from the validation choice.
KNOBS = ("augment", "epochs", "widths")
# The validation choice: a seeded fifth of the training images (at most VALIDATION_MAX) is held out, and one CNN
# per candidate trains on at most VALIDATION_TRAIN of the rest: about 20 s on 2 cores.
VALIDATION_SHARE = 0.2
VALIDATION_MAX = 2000
VALIDATION_TRAIN = 10000
VALIDATION_SEED = 0
# Fewer training images than this: too few to choose by; MNIST's recipe it is.
VALIDATION_MIN = 50


def start(given: dict) -> tuple[Recipe, bool]:
    """The recipe from the typed flags (`given`: Recipe's fields) over their data set's measured recipe, and whether
    it is still to be chosen on a validation split (a user's data set, with none of KNOBS typed)."""
    dataset = given.get("dataset", Recipe.dataset)
    name = dataset if dataset in PUBLISHED_DATASETS else "mnist"
    recipe = Recipe(**{**RECIPES[name], "starts_from": name, **given})
    return recipe, dataset not in PUBLISHED_DATASETS and not any(k in given for k in KNOBS)


def choose(recipe: Recipe, x_train: np.ndarray, y_train: np.ndarray, num_classes: int, rt: Runtime,
           log) -> tuple[Recipe, dict]:
    """The candidate recipe (RECIPES) whose one CNN scores best on a held-out split of the training images (ties:
    the first, MNIST's); returns it and the record of the choice (each candidate's validation accuracy)."""
    if len(y_train) < VALIDATION_MIN:
        return recipe, {"by": f"too few training images to validate (under {VALIDATION_MIN}): MNIST's recipe"}
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(y_train))
    held = max(1, min(VALIDATION_MAX, int(len(y_train) * VALIDATION_SHARE)))
    val, fit = order[:held], np.sort(order[held:held + VALIDATION_TRAIN])
    val = np.sort(val)
    found = {}
    for name, knobs in RECIPES.items():
        candidate = dataclasses.replace(recipe, **knobs, starts_from=name)
        model, _ = train(x_train[fit], y_train[fit], candidate, candidate.member_seeds()[0], rt, num_classes=num_classes)
        found[name] = float((predict_probs(model, x_train[val], rt.device).argmax(axis=1) == y_train[val]).mean())
        log(f"recipe {name}: {found[name]:.2%} on {len(val)} held-out training images (trained on {len(fit)})")
    best = max(found, key=found.get)
    return (dataclasses.replace(recipe, **RECIPES[best], starts_from=best),
            {"by": f"validation: one CNN per recipe on {len(fit)} training images, scored on {len(val)} others",
             "validation_accuracy": found, "chosen": best})

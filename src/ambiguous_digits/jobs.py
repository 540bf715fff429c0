"""The independent training jobs: one per ensemble member (`run`) and one per fold (`audit`).

Each job is a plain function of the config, its seed(s) and the digits, so it gives
the same result wherever it runs — in this process or as a Ray task on another
machine (backend.map_jobs). It returns small things only: weights, histories and
the probabilities of the digits it predicts.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import audit
from .config import EVAL_BATCH, Config
from .model import checkpoint
from .train import Precision, predict_probs, resolve_device, resolve_precision, train


def setup(cfg: Config) -> tuple[torch.device, Precision]:
    """Threads, device and precision for this process (the driver or a worker)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    return device, resolve_precision(cfg.precision, device)


def member_job(cfg: Config, seed: int, num_classes: int, x_train: np.ndarray, y_train: np.ndarray,
               x_test: np.ndarray, y_test: np.ndarray, progress: bool = True) -> dict:
    """Train one CNN with `seed`, then predict the test digits.

    Returns its checkpoint (CPU tensors), per-epoch history, test probabilities
    (N, K) float32 with row i = test digit i, test accuracy and seconds spent.
    """
    device, precision = setup(cfg)
    start = time.perf_counter()
    model, history = train(x_train, y_train, cfg, seed, device, precision, progress, num_classes=num_classes)
    trained = time.perf_counter()
    probs = predict_probs(model, x_test, device, EVAL_BATCH)
    seconds = {"train": trained - start, "predict": time.perf_counter() - trained}
    return {"checkpoint": checkpoint(model.cpu()), "history": history, "probs": probs,
            "accuracy": float((probs.argmax(1) == y_test).mean()), "seconds": seconds}


def fold_job(cfg: Config, fold: int, seeds: list[int], num_classes: int, extra_x: np.ndarray,
             extra_y: np.ndarray, x: np.ndarray, y: np.ndarray, folds: np.ndarray, progress: bool = True) -> dict:
    """Train one CNN per seed on everything but `fold` (plus `extra`), predict the fold's digits.

    Returns the members' mean probabilities (n_fold, K) float32 of the fold's digits in
    index order (rows of `folds == fold`) and their accuracy.
    """
    device, precision = setup(cfg)
    x_tr, y_tr = audit.fold_training_set(extra_x, extra_y, x, y, folds, fold)
    held = folds == fold
    members = [train(x_tr, y_tr, cfg, seed, device, precision, progress, num_classes=num_classes)[0]
               for seed in seeds]
    probs = np.mean([predict_probs(m, x[held], device, EVAL_BATCH) for m in members], axis=0)
    return {"probs": probs.astype(np.float32), "accuracy": float((probs.argmax(1) == y[held]).mean())}

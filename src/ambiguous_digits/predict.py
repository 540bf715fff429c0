"""`predict`: score a user's own digit images with a finished run's ensemble.

Each image is made MNIST-style (preprocess.py), run through every member CNN,
and reported with the same measures `run` computes (scores.py). The 28x28 digit
the ensemble saw is written to OUT/<stem>.png (default RUN_DIR/predictions/), or
OUT/<stem>-2.png, -3, ... when that name is taken: no file is ever overwritten.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import files, manifest, outputs, rundir, scores
from .config import ConfigError
from .model import from_checkpoint
from .preprocess import ImageError, preprocess
from .train import predict_probs, resolve_device


def load_ensemble(run_dir: Path, device: torch.device) -> tuple[list, list[str], str]:
    """The finished run's member CNNs (each checked against the manifest, loaded weights-only), class names
    and data set."""
    if not manifest.listed(run_dir, rundir.SUMMARY_FILE):
        raise ConfigError(f"--run: {run_dir} holds no finished run (no {rundir.SUMMARY_FILE}); finish it with --resume")
    summary = json.loads(manifest.verified(run_dir, rundir.SUMMARY_FILE).read_text())
    models = []
    for m in range(summary["members"]):
        path = manifest.verified(run_dir, rundir.MODEL_FILE.format(m=m))
        models.append(from_checkpoint(torch.load(path, weights_only=True, map_location="cpu")).to(device).eval())
    k = models[0].shape.num_classes
    data = summary.get("data", {})
    return models, data.get("class_names") or [str(c) for c in range(k)], data.get("dataset", "mnist")


def measures(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """The label-free measures of `run` for (M, N, K) member probabilities: (N,) each."""
    member_probs, _ = scores.validate_members(member_probs, np.zeros(member_probs.shape[1], dtype=np.int64))
    probs = member_probs.mean(axis=0)
    return {
        "pred": scores.predicted(probs), "prob_pred": scores.prob_pred(probs), "margin": scores.margin(probs),
        "entropy": scores.entropy(probs), "vote_disagreement": scores.vote_disagreement(member_probs),
        "expected_entropy": scores.expected_entropy(member_probs),
        "mutual_information": scores.mutual_information(member_probs),
    }


def describe(path: Path, probs: np.ndarray, m: dict[str, float], saved: Path, names: list[str]) -> str:
    """Two lines for one image: the prediction and its measures, then the class probabilities."""
    ranked = ", ".join(f"{names[c]}: {p:.3f}" for c, p in enumerate(probs))
    return (f"{path}: predicted {names[int(m['pred'])]} (p={m['prob_pred']:.3f}, margin {m['margin']:.3f}, entropy "
            f"{m['entropy']:.3f}, vote disagreement {m['vote_disagreement']:.2f}, mutual information "
            f"{m['mutual_information']:.3f}); saw {saved}\n  probabilities {ranked}")


def _out_dir(run_dir: Path, out: Path | None) -> Path:
    folder = out if out is not None else run_dir / rundir.PREDICTIONS_DIR
    rundir.prepare_out_dir(folder, force=False, any_folder=True)  # predictions accumulate: a non-empty folder is fine
    return folder


def predict_images(images: list[Path], run_dir: Path, out: Path | None = None, device: str = "cpu",
                   log=print, warn=lambda s: print(s, file=sys.stderr)) -> list[Path]:
    """Score each image; print its result (or its one-line error) and return the images that failed."""
    dev = resolve_device(device)
    models, names, dataset = load_ensemble(run_dir, dev)
    if dataset != "mnist":  # the preprocessing is how MNIST's digits were made, not how other images were
        warn(f"predict: warning: {run_dir} was trained on {dataset}; images are prepared the way MNIST's digits "
             f"were (inverted if dark on light, cropped, fitted in 20x20, centred by mass), which may not match")
    folder = _out_dir(run_dir, out)
    in_run = folder.resolve().is_relative_to(run_dir.resolve())  # then listed in the run's manifest
    with rundir.locked(run_dir, flag="--run") if in_run else contextlib.nullcontext():
        return _score(images, models, names, dev, folder, run_dir if in_run else None, log, warn)


def _score(images: list[Path], models: list, names: list[str], dev, folder: Path, run_dir: Path | None,
           log, warn) -> list[Path]:
    """Each image's result (or its one-line error); the digits saved in folder, listed in run_dir's manifest."""
    failed = []
    for path in images:
        try:
            digit = preprocess(path)
            saved = files.write_new(folder, path.stem, ".png", outputs.digit_png(digit))
            if run_dir is not None:
                manifest.record(run_dir, saved)
        except (ImageError, files.WriteError) as e:
            warn(f"predict: error: {e}")
            failed.append(path)
            continue
        member_probs = np.stack([predict_probs(m, digit[None], dev) for m in models])
        m = {k: v[0] for k, v in measures(member_probs).items()}
        log(describe(path, member_probs.mean(axis=0)[0], m, saved, names))
    return failed


"""`predict`: score a user's own digit images with a finished run's ensemble.

Each image is made MNIST-style (preprocess.py), run through every member CNN,
and reported with the same measures `run` computes (scores.py), and with how unlike
the run's training digits its embedding is (evidence.Familiar): at or above a
percentile of the training digits' own unfamiliarity, its prediction is not to be
trusted. A run without embeddings.npz is scored without it. With --device cpu (the
default) the members run in numpy (forward.py), so a call never imports torch. The 28x28 digit
the ensemble saw is written to OUT/<stem>.png (default RUN_DIR/predictions/), or
OUT/<stem>-2.png, -3, ... when that name is taken: no file is ever overwritten.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from . import data, evidence, files, manifest, outputs, rundir, scores
from .config import ConfigError
from .forward import NumpyNet
from .preprocess import ImageError, preprocess

if TYPE_CHECKING:
    import torch


class Ensemble(Protocol):
    """A finished run's member CNNs, as `predict` runs them."""

    def member_probs(self, digits: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (M, N, K) float32 probabilities of each member."""

    def member_features(self, digits: np.ndarray, spatial: str, bf16: bool) -> list[np.ndarray]:
        """(M,) arrays (N, D): each member's penultimate features ("mean" or "flat", as train.predict_features
        gives them), in bfloat16 where `bf16` and the ensemble can."""

    def member_outputs(self, digits: np.ndarray, spatial: str, bf16: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """member_probs and member_features of the same digits, in one pass where the ensemble can."""


@dataclass(frozen=True)
class NumpyEnsemble:
    """The members run in numpy (forward.NumpyNet), always in float32: no torch to import. Against a run's bf16
    features, MNIST's test digits land 0.05 percentile points from the run's own on average (docs/lab-notebook.md)."""

    nets: list[NumpyNet]

    def member_probs(self, digits: np.ndarray) -> np.ndarray:
        return np.stack([net.probs(digits) for net in self.nets])

    def member_features(self, digits: np.ndarray, spatial: str, bf16: bool = False) -> list[np.ndarray]:
        return [net.features(digits, spatial) for net in self.nets]

    def member_outputs(self, digits: np.ndarray, spatial: str,
                       bf16: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        found = [net.outputs(digits, spatial) for net in self.nets]  # float32 both: one pass serves both
        return np.stack([probs for probs, _ in found]), [features for _, features in found]


@dataclass(frozen=True)
class TorchEnsemble:
    """The members run by torch on `device`."""

    models: list
    device: torch.device

    def member_probs(self, digits: np.ndarray) -> np.ndarray:
        from .train import predict_probs

        return np.stack([predict_probs(m, digits, self.device) for m in self.models])

    def member_features(self, digits: np.ndarray, spatial: str, bf16: bool = False) -> list[np.ndarray]:
        from .train import Precision, predict_features

        return [predict_features(m, digits, self.device, spatial=spatial, precision=Precision(bf16))
                for m in self.models]

    def member_outputs(self, digits: np.ndarray, spatial: str,
                       bf16: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        # Two passes: the probabilities in float32, the features in bfloat16 where the run's were.
        return self.member_probs(digits), self.member_features(digits, spatial, bf16)


def load_ensemble(run_dir: Path, device: str = "cpu", in_numpy: bool = True) -> tuple[Ensemble, list[str], str]:
    """The finished run's members (each file checked against the manifest), class names and data set. With
    `--device cpu`, in numpy where the run saved its weights for it (`in_numpy`; a run made before 0.10 did not),
    else by torch on `device` (auto, cpu, cuda[:N])."""
    if not manifest.listed(run_dir, rundir.SUMMARY_FILE):
        raise ConfigError(f"--run: {run_dir} holds no finished run (no {rundir.SUMMARY_FILE}); finish it with --resume")
    summary = json.loads(manifest.verified(run_dir, rundir.SUMMARY_FILE).read_text())
    weights = [rundir.weights_file(rundir.MODEL_FILE.format(m=m)) for m in range(summary["members"])]
    if in_numpy and device == "cpu" and all(manifest.listed(run_dir, w) for w in weights):
        ensemble: Ensemble = NumpyEnsemble([NumpyNet.load(manifest.verified(run_dir, w)) for w in weights])
        k = ensemble.nets[0].num_classes
    else:
        from .members import load_model
        from .train import resolve_device

        dev = resolve_device(device)
        models = [load_model(run_dir, rundir.MODEL_FILE.format(m=m)).to(dev).eval() for m in range(summary["members"])]
        ensemble, k = TorchEnsemble(models, dev), models[0].shape.num_classes
    found = summary.get("data", {})
    return ensemble, found.get("class_names") or [str(c) for c in range(k)], found.get("dataset", "mnist")


def load_familiar(run_dir: Path, warn) -> evidence.Familiar | None:
    """The run's training digits in unfamiliarity's embedding, fitted once for every image, with how the run
    computed them (in bfloat16: embeddings.npz's features_bf16, as its training ran under autocast). A run made
    before 0.10 measured unfamiliarity on the pooled features (no layout_basis); one made before 0.8 has no
    embeddings: None, with one warning."""
    if not manifest.listed(run_dir, rundir.EMBEDDINGS_FILE):
        warn(f"predict: warning: {run_dir} has no {rundir.EMBEDDINGS_FILE} (a run made before it was written); "
             f"how unlike the training data each image is goes unchecked")
        return None
    with np.load(manifest.verified(run_dir, rundir.EMBEDDINGS_FILE), allow_pickle=False) as z:
        bf16 = bool(z["features_bf16"]) if "features_bf16" in z.files else False
        if "layout_basis" in z.files:
            layout = evidence.Layout(z["layout_basis"].astype(np.float32))
            return evidence.Familiar.fit(z["layout_train"], z["calibration_unfamiliarity"], layout, bf16,
                                         turns="unfamiliarity_turns" in z.files)
        return evidence.Familiar.fit(z["train"], z["calibration_unfamiliarity"], bf16=bf16)


def embed(ensemble: Ensemble, familiar: evidence.Familiar, digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, d) float32 queries for familiar.score, embedded as the run embedded its own."""
    return familiar.embed(ensemble.member_features(digits, familiar.spatial, familiar.bf16))


class Unfamiliar(NamedTuple):
    """How unlike the run's training digits each of N images is (evidence.Familiar): (N,) each."""

    score: np.ndarray  # the unfamiliarity: as given, raised where a quarter turn is more familiar (evidence.upright)
    pct: np.ndarray  # its percentile of the training digits' own, in [0, 100]
    as_given: np.ndarray  # no turn looked at; equal to score in a run made before 0.11


def see(ensemble: Ensemble, familiar: evidence.Familiar | None,
        digits: np.ndarray) -> tuple[np.ndarray, Unfamiliar | None]:
    """(N, 28, 28) uint8 -> (M, N, K) member probabilities and, with `familiar`, each digit's unfamiliarity, from one
    pass through the ensemble (each digit's quarter turns in the same pass, where the run looked at them)."""
    if familiar is None:
        return ensemble.member_probs(digits), None
    n = len(digits)
    if familiar.turns:
        digits = np.concatenate([digits, evidence.turned(digits)])
    member_probs, features = ensemble.member_outputs(digits, familiar.spatial, familiar.bf16)
    queries = familiar.embed(features)
    return member_probs[:, :n], Unfamiliar(*familiar.scored(queries[:n], queries[n:] if familiar.turns else None))


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


def describe(path: Path, probs: np.ndarray, m: dict[str, float], saved: Path, names: list[str],
             unfamiliar_above: float = evidence.PREDICT_UNFAMILIAR_PCT, noun: str = "digit") -> str:
    """Two lines for one image: the prediction and its measures, then the class probabilities; a third where its
    unfamiliarity (when measured) is at or above the `unfamiliar_above` percentile of the training digits' own."""
    ranked = ", ".join(f"{names[c]}: {p:.3f}" for c, p in enumerate(probs))
    measured = "unfamiliarity_pct" in m
    familiar = (f", unfamiliarity {m['unfamiliarity']:.3f} (percentile {m['unfamiliarity_pct']:.1f} of the "
                f"training {noun}s')") if measured else ""
    text = (f"{path}: predicted {names[int(m['pred'])]} (p={m['prob_pred']:.3f}, margin {m['margin']:.3f}, entropy "
            f"{m['entropy']:.3f}, vote disagreement {m['vote_disagreement']:.2f}, mutual information "
            f"{m['mutual_information']:.3f}{familiar}); saw {saved}\n  probabilities {ranked}")
    if measured and m["unfamiliarity_pct"] >= unfamiliar_above:
        turned = m["unfamiliarity"] > m.get("unfamiliarity_as_given", m["unfamiliarity"])
        text += (f"\n  unlike any training {noun} (unfamiliarity at the {m['unfamiliarity_pct']:.1f}th percentile"
                 f"{'; a quarter turn makes it more familiar: is it on its side?' if turned else ''}); "
                 f"the prediction {names[int(m['pred'])]} is not to be trusted")
    return text


def _out_dir(run_dir: Path, out: Path | None) -> Path:
    folder = out if out is not None else run_dir / rundir.PREDICTIONS_DIR
    # Predictions accumulate: a non-empty folder is fine. Without --out they go into the run directory.
    rundir.prepare_out_dir(folder, force=False, any_folder=True, flag="--out" if out is not None else "--run")
    return folder


def predict_images(images: list[Path], run_dir: Path, out: Path | None = None, device: str = "cpu",
                   log=print, warn=lambda s: print(s, file=sys.stderr),
                   unfamiliar_above: float | None = None) -> list[Path]:
    """Score each image; print its result (or its one-line error) and return the images that failed.
    `unfamiliar_above`: the percentile (0-100) flagging an image (None: evidence.PREDICT_UNFAMILIAR_PCT)."""
    unfamiliar_above = evidence.PREDICT_UNFAMILIAR_PCT if unfamiliar_above is None else unfamiliar_above
    if not 0 <= unfamiliar_above <= 100:  # also refuses nan
        raise ConfigError(f"--unfamiliar-above: expected a percentile from 0 to 100, got {unfamiliar_above}")
    ensemble, names, dataset = load_ensemble(run_dir, device)
    familiar = load_familiar(run_dir, warn)
    if dataset != "mnist":  # the preprocessing is how MNIST's digits were made, not how other images were
        warn(f"predict: warning: {run_dir} was trained on {dataset}; images are prepared the way MNIST's digits "
             f"were (inverted if dark on light, cropped, fitted in 20x20, centred by mass), which may not match")
    folder = _out_dir(run_dir, out)
    in_run = folder.resolve().is_relative_to(run_dir.resolve())  # then listed in the run's manifest
    spec = data.PUBLISHED.get(dataset)
    show = partial(describe, names=names, unfamiliar_above=unfamiliar_above, noun=spec.noun if spec else "image")
    with rundir.locked(run_dir, flag="--run") if in_run else contextlib.nullcontext():
        return _score(images, ensemble, familiar, folder, run_dir if in_run else None, log, warn, show)


def _score(images: list[Path], ensemble: Ensemble, familiar: evidence.Familiar | None, folder: Path,
           run_dir: Path | None, log, warn, show) -> list[Path]:
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
        member_probs, unfamiliar = see(ensemble, familiar, digit[None])
        m = {k: v[0] for k, v in measures(member_probs).items()}
        if unfamiliar is not None:
            (m["unfamiliarity"],), (m["unfamiliarity_pct"],), (m["unfamiliarity_as_given"],) = unfamiliar
        log(show(path, member_probs.mean(axis=0)[0], m, saved))
    return failed

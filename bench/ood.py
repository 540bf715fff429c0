"""Out-of-distribution benchmark: which score tells inputs unlike a run's training data from its own test set?

Known answers: the run's test set (MNIST's, or Fashion-MNIST's for a Fashion-MNIST run) is in distribution;
each kind of input below is not, and is the positive class. Per kind and score: AUROC, and the false-positive
rate at 95% recall (the fraction of test images flagged at the threshold that catches 95% of the kind).
  - the other data set's test images (Fashion-MNIST's for an MNIST run, MNIST's for a Fashion-MNIST run);
  - letters and symbols rendered from DejaVu Sans (Debian's fonts-dejavu-core), black on white at 200x200,
    then made MNIST-style as `predict` makes a user's image; glyphs drawn like a digit are listed apart;
  - the test images inverted, rotated 90 degrees, and under heavy noise (NOISE_STD, seeded), fed as they are;
  - the test digits the published human review judged "neither" label (an MNIST run only).
Every score is HIGHER = less like the training data (SCORES). The per-glyph table also says whether `predict`
flags each glyph at its default threshold (evidence.PREDICT_UNFAMILIAR_PCT).

    python bench/ood.py RUN_DIR --out ood.json [--limit N] [--device auto]
"""

from __future__ import annotations

import argparse
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.metrics import roc_auc_score, roc_curve

from ambiguous_digits import data, evidence, files, predict, preprocess, scores, validate
from ambiguous_digits.train import setup

# Recall at which the false-positive rate is read: the usual OOD benchmark's "FPR at 95% TPR".
RECALL = 0.95
# The in-distribution run's data set -> the data set whose test images are out of it.
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
# Debian's fonts-dejavu-core: on every CI image that installs it, the same glyphs.
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# A user's photo of a glyph: black on white, the glyph filling most of a 200x200 page.
PAGE, FONT_SIZE = 200, 150
GLYPHS = string.ascii_uppercase + string.ascii_lowercase + "+=?#@%&*$!<>/"
# Glyphs drawn like a digit (0, 1, 2, 5, 6, 8, 9): their verdicts are listed, never counted as failures.
DIGIT_LIKE = "OoDQIlijSsZzBbGgq"
# Heavy noise: Gaussian, this many grey levels of standard deviation, clipped to 0..255; seeded.
NOISE_STD, NOISE_SEED = 100.0, 0


# ---------------------------------------------------------------------------
# Bookkeeping: in distribution (N,) and out of it (P,), HIGHER = flagged first
# ---------------------------------------------------------------------------
def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an out-of-distribution input scores above an in-distribution one (ties count half)."""
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(y, np.r_[inside, outside]))


def fpr_at_recall(inside: np.ndarray, outside: np.ndarray, recall: float = RECALL) -> float:
    """Fraction of `inside` flagged at the highest threshold that flags at least `recall` of `outside`."""
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    fpr, tpr, _ = roc_curve(y, np.r_[inside, outside], drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= recall)])  # tpr never decreases: the first threshold that reaches it


# ---------------------------------------------------------------------------
# What the ensemble makes of a batch of images
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One batch's member probabilities (M, N, K), unfamiliarity (N,), its training percentile (N,), and the
    unfamiliarity as given (N,), no turn looked at (evidence.upright)."""

    member_probs: np.ndarray
    unfamiliarity: np.ndarray
    pct: np.ndarray
    as_given: np.ndarray

    def rows(self, keep: np.ndarray) -> Seen:
        return Seen(self.member_probs[:, keep], self.unfamiliarity[keep], self.pct[keep], self.as_given[keep])


def look(ensemble: predict.Ensemble, familiar: evidence.Familiar, images: np.ndarray) -> Seen:
    """(N, 28, 28) uint8 images through the ensemble, as `predict` puts a user's digit through it."""
    member_probs, unfamiliar = predict.see(ensemble, familiar, images)
    return Seen(member_probs, *unfamiliar)


def _entropy(s: Seen) -> np.ndarray:
    return scores.entropy(s.member_probs.mean(axis=0))


def _either(s: Seen, ref: Seen) -> np.ndarray:
    """The higher of the unfamiliarity's and the entropy's percentiles of the in-distribution test set's own."""
    return np.maximum(evidence.percentile_of(s.unfamiliarity, ref.unfamiliarity),
                      evidence.percentile_of(_entropy(s), _entropy(ref)))


# name -> score(seen, in-distribution test set's seen): (N,), HIGHER = less like the training data. The first four
# from the ensemble's probabilities (scores.py), "as given" the unfamiliarity without its turns (0.10's score),
# "combined" the higher of two percentiles (_either).
SCORES = {
    "1 - max prob": lambda s, ref: 1 - s.member_probs.mean(axis=0).max(axis=1),
    "entropy": lambda s, ref: _entropy(s),
    "mutual info": lambda s, ref: scores.mutual_information(s.member_probs),
    "disagreement": lambda s, ref: scores.vote_disagreement(s.member_probs),
    "unfamiliarity": lambda s, ref: s.unfamiliarity,
    "as given": lambda s, ref: s.as_given,
    "combined": _either,
}


def compare(inside: Seen, outside: Seen) -> dict:
    """AUROC and FPR at RECALL of every score, and the fraction `predict` flags, for one kind of input."""
    out = {"n": len(outside.pct),
           "flagged_by_predict": float((outside.pct >= evidence.PREDICT_UNFAMILIAR_PCT).mean())}
    for name, score in SCORES.items():
        a, b = score(inside, inside), score(outside, inside)
        out[name] = {"auroc": auroc(a, b), "fpr_at_95_recall": fpr_at_recall(a, b)}
    return out


# ---------------------------------------------------------------------------
# The kinds of input, one function each: name -> (N, 28, 28) uint8
# ---------------------------------------------------------------------------
def other_data_set(dataset: str, data_dir: Path | None, limit: int | None) -> dict[str, np.ndarray]:
    other = OTHER[dataset]
    return {f"{other} test": data.load_published(other, data_dir, log=lambda _: None, progress=False).x_test[:limit]}


def glyph_page(char: str) -> Image.Image:
    """A PAGE x PAGE greyscale picture of `char` in DejaVu Sans, black on white, centred."""
    page = Image.new("L", (PAGE, PAGE), 255)
    ImageDraw.Draw(page).text((PAGE / 2, PAGE / 2), char, fill=0, anchor="mm",
                              font=ImageFont.truetype(str(FONT), FONT_SIZE))
    return page


def glyph(char: str) -> np.ndarray:
    """(28, 28) uint8: `char` made MNIST-style exactly as `predict` makes an image (preprocess.to_mnist)."""
    return preprocess.to_mnist(np.asarray(glyph_page(char), dtype=np.float64) / 255, f"glyph {char!r}")


def glyphs(chars: str = GLYPHS) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each glyph made MNIST-style, and those `predict` would refuse outright (glyph -> its error)."""
    made, refused = {}, {}
    for c in chars:
        try:
            made[c] = glyph(c)
        except preprocess.ImageError as e:
            refused[c] = str(e)
    return made, refused


def transformed(x: np.ndarray) -> dict[str, np.ndarray]:
    """The in-distribution test images inverted, rotated a quarter turn, and under heavy Gaussian noise."""
    noise = np.random.default_rng(NOISE_SEED).normal(0, NOISE_STD, x.shape)
    return {"inverted": 255 - x, "rotated 90°": np.rot90(x, axes=(1, 2)).copy(),
            f"noise σ={NOISE_STD:g}": np.clip(x + noise, 0, 255).round().astype(np.uint8)}


def review_neither(dataset: str) -> np.ndarray:
    """Test indices the published human review judged "neither" label (3+ of 5 reviewers); none but for MNIST."""
    if dataset not in validate.REVIEWS:
        return np.array([], dtype=np.int64)
    return np.array(sorted(r["index"] for r in validate.load_review(dataset) if r["verdict"] == "neither"))


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def per_glyph(seen: Seen, chars: list[str], names: list[str], digit_like: str) -> dict:
    probs = seen.member_probs.mean(axis=0)
    return {c: {"unfamiliarity": float(seen.unfamiliarity[i]), "pct": float(seen.pct[i]),
                "predicted": names[int(probs[i].argmax())], "p": float(probs[i].max()),
                "flagged": bool(seen.pct[i] >= evidence.PREDICT_UNFAMILIAR_PCT), "digit_like": c in digit_like}
            for i, c in enumerate(chars)}


def benchmark(run_dir: Path, data_dir: Path | None, other_dir: Path | None, limit: int | None, device) -> dict:
    """The whole report: per kind of input, every score's AUROC and FPR at 95% recall; per glyph, its verdict."""
    familiar = predict.load_familiar(run_dir, warn=lambda _: None)  # refused just below, in one line
    # torch, as the run did; `predict`'s float32 numpy pass moves a percentile by 0.05 on average (lab-notebook.md).
    ensemble, names, dataset = predict.load_ensemble(run_dir, str(device), in_numpy=False)
    if familiar is None:
        raise SystemExit(f"bench/ood.py: {run_dir} has no embeddings.npz; re-run it with this version")
    x_test = data.load_dataset(dataset, data_dir, log=lambda _: None, progress=False).x_test
    neither = review_neither(dataset)
    inside_rows = np.setdiff1d(np.arange(len(x_test))[:limit], neither)  # the reviewed "neither" digits apart
    inside = look(ensemble, familiar, x_test[inside_rows])
    kinds = {**other_data_set(dataset, other_dir, limit), **transformed(x_test[inside_rows])}
    if len(neither):
        kinds["review: neither label"] = x_test[neither]
    seen = {name: look(ensemble, familiar, x) for name, x in kinds.items()}
    made, refused = glyphs()
    digit_like = DIGIT_LIKE if dataset == "mnist" else ""
    seen_glyphs = look(ensemble, familiar, np.stack(list(made.values())))
    seen["glyphs (not digit-like)"] = seen_glyphs.rows(np.array([c not in digit_like for c in made]))
    return {"run": str(run_dir), "dataset": dataset, "in_distribution": f"{dataset} test ({len(inside_rows)})",
            "predict_threshold_pct": evidence.PREDICT_UNFAMILIAR_PCT,
            "in_distribution_flagged_by_predict": float((inside.pct >= evidence.PREDICT_UNFAMILIAR_PCT).mean()),
            "noise": f"Gaussian, std {NOISE_STD:g} grey levels, clipped to 0..255, seed {NOISE_SEED}",
            "combined": "the higher of the unfamiliarity's and the entropy's percentiles of the in-distribution test set",
            "kinds": {name: compare(inside, s) for name, s in seen.items()},
            "glyphs": per_glyph(seen_glyphs, list(made), names, digit_like), "glyphs_refused": refused,
            "neither": {int(i): float(p) for i, p in zip(neither, seen["review: neither label"].pct)}
            if len(neither) else {}}


def table(report: dict) -> str:
    """Rows: kinds of input; columns: every score's AUROC / FPR at 95% recall; then the glyphs' verdicts."""
    lines = [f"in distribution: {report['in_distribution']}, {report['in_distribution_flagged_by_predict']:.1%} of it "
             f"flagged by predict (at the {report['predict_threshold_pct']:g}th percentile). Each score: AUROC / FPR "
             "at 95% recall; combined: " + report["combined"],
             f"{'out of distribution':24}{'n':>6}{'flagged':>9}" + "".join(f"{s:>16}" for s in SCORES)]
    for kind, r in report["kinds"].items():
        cells = "".join(f"{r[s]['auroc']:>9.3f} / {r[s]['fpr_at_95_recall']:.3f}" for s in SCORES)
        lines.append(f"{kind[:24]:24}{r['n']:>6}{r['flagged_by_predict']:>9.1%}{cells}")
    for like, title in ((False, "glyphs"), (True, "digit-like glyphs (not failures)")):
        shown = {c: v for c, v in report["glyphs"].items() if v["digit_like"] == like}
        missed = " ".join(f"{c} ({v['pct']:.1f}, read {v['predicted']})" for c, v in shown.items() if not v["flagged"])
        if shown:
            lines.append(f"{title} flagged by predict: {sum(v['flagged'] for v in shown.values())} of {len(shown)}; "
                         f"not flagged (percentile, read as): {missed or 'none'}")
    if report["glyphs_refused"]:
        lines.append(f"glyphs predict refuses outright: {' '.join(report['glyphs_refused'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run (with embeddings.npz)")
    p.add_argument("--out", type=Path, default=Path("ood.json"), help="the JSON report (default: ood.json)")
    p.add_argument("--data-dir", type=Path, default=None, help="cache of the run's data set (default: its default)")
    p.add_argument("--other-data-dir", type=Path, default=None,
                   help="cache of the other data set (default: its default; Fashion-MNIST: Debian's package)")
    p.add_argument("--limit", type=int, default=None, help="first N test images of each set (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    a = p.parse_args(argv)
    device, _ = setup(a.device, a.threads, "fp32")
    report = benchmark(a.run_dir, a.data_dir, a.other_data_dir, a.limit, device)
    files.write_json(a.out, report)
    print(f"{table(report)}\nwrote {a.out}")
    return report


if __name__ == "__main__":
    main()

"""The HTML report of a finished run: one self-contained page, rendered from the run directory.

Everything comes from the files `run` (and, when present, `audit` and `validate`)
left in the run directory, plus the test pixels of the run's data set (recorded in
summary.json and checked against its MD5s), so
a report can be re-rendered at any time without retraining. The page references
nothing outside itself: digits are PNG data URIs, the chart is an embedded PNG,
CSS and JavaScript are inline, and the data the controls need is one JSON blob.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Environment, PackageLoader  # noqa: E402
from PIL import Image  # noqa: E402

from . import data, files, manifest, outputs, scores, validate  # noqa: E402
from .config import NORM_STATS_BEFORE_0_5, ConfigError, norm_stats_from_clean_digits  # noqa: E402

REPORT_FILE = "report.html"
EXPERIMENT_FILE = "experiment.json"
TEMPLATE = "report.html"
# Gallery sizes the page offers. The page holds the pixels of the first COUNTS[-1]
# digits of every ranking under every filter, so each choice shows exactly that many.
COUNTS = (10, 25, 50, 100)
DEFAULT_COUNT = 25
# A digit costs ~1.1 kB of page (PNG + numbers). The page holds every digit a gallery needs
# (a full-size MNIST run needs ~1,600; more classes need more: up to ~100 per filter and
# ranking), then the other errors while it holds fewer than this: ~5 MB when the galleries
# need fewer, more (uncapped) for a data set of many classes whose galleries need more.
MAX_DIGITS = 4000
# Keys of summary.json the report reads (written by `run` since the ensemble pipeline).
SUMMARY_KEYS = ("test_accuracy", "test_errors", "train_digits", "member_accuracy", "member_accuracy_mean",
                "member_accuracy_std", "member_seeds", "model", "seconds", "data", "environment", "config")
# Suspected training-set label errors shown (a static gallery; `audit --split train`).
TRAIN_ISSUES_SHOWN = 30
# The rankings of one run (scores.RANKINGS) plus the audit's, when present:
# name -> (title, what ranks first). Unknown names get their own name as title.
RANKING_INFO = {
    "confident_wrong": ("Confidently wrong",
                        "misclassified digits only, the most confident wrong prediction first "
                        "(the original analysis's main definition)"),
    "least_confident": ("Least confident", "every digit, lowest probability of the predicted class first"),
    "margin": ("Smallest margin", "every digit, smallest gap between the top two probabilities first"),
    "entropy": ("Highest entropy", "every digit, highest predictive entropy of the ensemble first"),
    "ambiguity": ("Most ambiguous", "every digit, lowest ensemble probability of its true label first"),
    "label_issues": ("Suspected label errors",
                     "every digit, lowest cleanlab label quality (cross-validated, from audit) first"),
}
# Per-digit measures shown in the detail view, in this order (scores.csv columns).
MEASURES = ("prob_pred", "prob_label", "margin", "entropy", "expected_entropy", "mutual_information",
            "vote_disagreement", "members_wrong", "ambiguity")
# The original analysis this tool grew out of (README: "Where this comes from"): MNIST.
ORIGINAL_ACCURACY = 0.992


@dataclass(frozen=True)
class Run:
    """What a run directory holds. Tables are per test digit (row i = test digit i)."""

    dir: Path
    summary: dict
    table: dict[str, np.ndarray]
    member_probs: np.ndarray  # (M, N, K)
    seeds: list[int]
    class_names: tuple[str, ...]  # (K,): label k is class_names[k]
    label_issues: dict[str, np.ndarray] | None
    validation: dict | None
    train_issues: dict[str, np.ndarray] | None
    experiment: dict | None = None  # experiment.json, from `experiment`


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def write_report(run_dir: Path, dataset: data.Dataset | None = None) -> Path:
    """Render `run_dir/report.html` from a finished run; returns its path.

    `dataset` supplies the pixels (when None, the data set the run recorded is loaded).
    Raises ConfigError when run_dir is not a finished run or the pixels are not its data's.
    """
    run = load_run(Path(run_dir))
    if dataset is None:
        c = run.summary["config"]
        dataset = data.load_dataset(c.get("dataset", "mnist"), c.get("data_dir"), class_names=c.get("class_names"),
                                    log=lambda _: None, progress=False)
    _check_pixels(run, dataset)
    html = render(run, dataset)
    path = run.dir / REPORT_FILE
    files.write_text(path, html)
    manifest.record(run.dir, path)
    return path


def render(run: Run, ds: data.Dataset) -> str:
    """The whole page as one HTML string."""
    env = Environment(loader=PackageLoader("ambiguous_digits", "templates"), autoescape=True)
    env.filters["pct"] = _pct
    return env.get_template(TEMPLATE).render(**page_context(run, ds))


def page_context(run: Run, ds: data.Dataset) -> dict:
    """Everything the template shows: header numbers, tables, chart, answers, and the gallery's JSON."""
    facts, page_data = run_facts(run), gallery_data(run, ds.x_test)
    return {
        "run": run, "name": run.dir.resolve().name, "s": run.summary, "facts": facts, "answers": answers(facts),
        "confusion": facts["confusion"].tolist(), "confusion_rows": facts["confusion"].sum(axis=1).tolist(),
        "confusion_cols": facts["confusion"].sum(axis=0).tolist(), "class_accuracy": facts["class_accuracy"],
        "reliability_png": reliability_png(run), "counts": COUNTS, "default_count": DEFAULT_COUNT,
        "rankings": {n: _ranking_title(n) for n in page_data["rankings"]},
        "train_issues": train_issue_cards(run, ds.x_train), "classes": run.class_names,
        "dataset": run.summary["data"].get("dataset", "mnist"),
        "noun": "digit" if run.summary["data"].get("dataset", "mnist") == "mnist" else "image",
        "experiment": experiment_view(run.experiment),
        "page_data": page_data,
    }


# ---------------------------------------------------------------------------
# Reading the run directory (validated here, trusted below)
# ---------------------------------------------------------------------------
def load_run(run_dir: Path) -> Run:
    """The run's files, checked once; the audit's files are None where absent."""
    manifest.require(run_dir)
    for name in ("summary.json", "scores.csv", "probs.npz"):
        if not manifest.listed(run_dir, name):
            raise ConfigError(f"RUN_DIR: {run_dir} has no {name}; is it a finished `run`?")
        manifest.verified(run_dir, name)
    summary = json.loads((run_dir / "summary.json").read_text())
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ConfigError(f"{run_dir / 'summary.json'}: no {', '.join(missing)}; re-run with this version")
    table = outputs.read_table(run_dir / "scores.csv")
    with np.load(run_dir / "probs.npz", allow_pickle=False) as npz:
        member_probs, seeds = npz["probs"], [int(s) for s in npz["seeds"]]
    n, names = len(table["index"]), _class_names(summary, member_probs)
    if member_probs.ndim != 3 or member_probs.shape[1:] != (n, len(names)):
        raise ConfigError(f"{run_dir / 'probs.npz'}: probs {member_probs.shape} do not match {n} rows of scores.csv "
                          f"and {len(names)} classes")
    label_issues = _optional_table(run_dir / "label_issues.csv", n)
    return Run(run_dir, summary, table, member_probs, seeds, names,
               label_issues, manifest.listed_json(run_dir, "validation.json"),
               _optional_table(run_dir / "train_label_issues.csv", None), manifest.listed_json(run_dir, EXPERIMENT_FILE))


def _class_names(summary: dict, member_probs: np.ndarray) -> tuple[str, ...]:
    """The run's class names (runs older than --dataset recorded none: MNIST's digits)."""
    names = summary["data"].get("class_names")
    return tuple(names) if names else tuple(str(k) for k in range(member_probs.shape[-1]))


def _optional_table(path: Path, rows: int | None) -> dict[str, np.ndarray] | None:
    """An optional output (an audit's), or None when it was never written: not listed in the manifest (a
    command killed before it listed the file leaves it unlisted). A listed one must be there, unchanged."""
    if not manifest.listed(path.parent, path.name):
        return None
    table = outputs.read_table(manifest.verified(path.parent, path.name))
    if rows is not None and len(table["index"]) != rows:
        raise ConfigError(f"{path}: {len(table['index'])} rows, but the run scored {rows} test digits")
    return table


def _check_pixels(run: Run, ds: data.Dataset) -> None:
    expected = run.summary["data"].get("md5")
    if expected and ds.checksums != expected:
        raise ConfigError(f"{run.dir}: the {ds.name} data given are not the ones this run used (md5 differs)")


# ---------------------------------------------------------------------------
# Numbers: everything the header, tables and answers quote
# ---------------------------------------------------------------------------
def _ints(column: np.ndarray) -> np.ndarray:
    return column.astype(np.int64)


def error_confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts of misclassified images, row = true class, column = prediction; diagonal 0."""
    conf = np.zeros((k, k), dtype=np.int64)
    wrong = labels != preds
    np.add.at(conf, (labels[wrong], preds[wrong]), 1)
    return conf


def top_confusions(conf: np.ndarray, n: int = 3) -> list[tuple[int, int, int]]:
    """The n largest (true, predicted, count) cells, largest first, empty cells left out."""
    flat = np.argsort(-conf, axis=None, kind="stable")[:n]
    cells = zip(*np.unravel_index(flat, conf.shape))
    return [(int(t), int(p), int(conf[t, p])) for t, p in cells if conf[t, p] > 0]


def class_accuracy(labels: np.ndarray, preds: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    """Per true class: its name, test images, correct ones, accuracy (None where the class is absent)."""
    out = []
    for c, name in enumerate(names):
        mine = labels == c
        right = int((preds[mine] == c).sum())
        out.append({"class": c, "name": name, "n": int(mine.sum()), "correct": right,
                    "accuracy": right / mine.sum() if mine.any() else None})
    return out


def errors_in_top(ranks: np.ndarray, wrong: np.ndarray, k: int) -> int:
    """How many of the k top-ranked digits are misclassified."""
    return int(wrong[scores.top_indices(ranks, k)].sum())


def uncertainty_split(table: dict[str, np.ndarray], rows: np.ndarray) -> dict:
    """Mean total, aleatoric (expected entropy) and epistemic (mutual information) entropy over `rows`."""
    if not rows.any():
        return {"total": 0.0, "aleatoric": 0.0, "epistemic": 0.0, "epistemic_share": 0.0}
    alea, epi = float(table["expected_entropy"][rows].mean()), float(table["mutual_information"][rows].mean())
    total = alea + epi
    return {"total": total, "aleatoric": alea, "epistemic": epi, "epistemic_share": epi / total if total else 0.0}


def run_facts(run: Run) -> dict:
    """The measured numbers of this run that the page quotes."""
    t, s = run.table, run.summary
    labels, preds = _ints(t["label"]), _ints(t["pred"])
    wrong = labels != preds
    probs = run.member_probs.mean(axis=0)
    conf = error_confusion(labels, preds, len(run.class_names))
    return {
        "summary": s, "n": len(labels), "errors": int(wrong.sum()), "accuracy": float(1 - wrong.mean()),
        "members": run.member_probs.shape[0], "member_accuracy": s["member_accuracy"],
        "member_mean": s["member_accuracy_mean"], "member_std": s["member_accuracy_std"],
        "confusion": conf, "confusion_max": int(conf.max()), "pairs": top_confusions(conf),
        "class_accuracy": class_accuracy(labels, preds, run.class_names), "names": run.class_names,
        "dataset": s["data"].get("dataset", "mnist"),
        "ece": scores.expected_calibration_error(probs, labels), "nll": scores.nll(probs, labels),
        "mean_confidence": float(t["prob_pred"].mean()),
        "top_errors": {k: errors_in_top(t["rank_ambiguity"], wrong, k) for k in (10, 50)},
        "split_all": uncertainty_split(t, np.ones(len(labels), bool)),
        "split_errors": uncertainty_split(t, wrong),
        "all_members_wrong": int((wrong & (t["members_wrong"] == run.member_probs.shape[0])).sum()),
        "parameters": _parameter_count(s["model"]),
        "label_issues_found": None if run.label_issues is None else int(np.nansum(run.label_issues["is_label_issue"])),
        "validation": (run.validation or {}).get("rankings", {}),
    }


def _parameter_count(model: str) -> str | None:
    found = re.search(r"([\d,]+) parameters", model)
    return found.group(1) if found else None


# ---------------------------------------------------------------------------
# The three questions of the original analysis, answered from this run's numbers
# ---------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x:.2%}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _points(x: float) -> str:
    return f"{100 * x:.2f} percentage points"


def answers(f: dict) -> list[dict]:
    """[{question, paragraphs}] in the original analysis's order; every number is this run's."""
    out = [{"question": "Describe your model", "paragraphs": describe_model(f)},
           {"question": "Analyse your results", "paragraphs": analyse_results(f)},
           {"question": "Impact of the images and improvements", "paragraphs": impact(f)}]
    if f["dataset"] != "mnist":  # the sentences speak of digits; other data sets hold images
        for a in out:
            a["paragraphs"] = [_DIGIT_WORD.sub(_as_image, p) for p in a["paragraphs"]]
    return out


_DIGIT_WORD = re.compile(r"(?<![-\w])([Dd])igit(s?)\b")  # not the command's name, ambiguous-digits


def _as_image(m: re.Match) -> str:
    return ("I" if m.group(1) == "D" else "i") + "mage" + m.group(2)


def describe_model(f: dict) -> list[str]:
    s, c = f["summary"], f["summary"]["config"]
    limited = f" (the first {s['train_digits']:,} only)" if c.get("train_limit") else ""
    who = ("One convolutional network" if f["members"] == 1 else
           f"An ensemble of {f['members']} convolutional networks, each trained from its own seed; "
           f"its prediction is the mean of their softmax probabilities. Each network is")
    size = ""
    if f["parameters"] and f["members"] > 1:
        total = f["members"] * int(f["parameters"].replace(",", ""))
        size = f" The ensemble holds {f['members']} × {f['parameters']} = {total:,} parameters."
    return [
        f"{who}: {s['model']}.{size} The network returns logits; softmax is applied once, when probabilities "
        f"are computed.",
        f"Training: {_plural(c['epochs'], 'epoch')} over {s['train_digits']:,} training digits{limited}, SGD "
        f"with Nesterov momentum and a one-cycle learning rate peaking at {c['lr']}, weight decay "
        f"{c['weight_decay']}, batches of {c['batch_size']}, {'with' if c['augment'] else 'without'} random "
        f"affine augmentation{_norm_stats_clause(c)}, and no label "
        f"smoothing, so the probabilities keep their confidence signal. Training took "
        f"{s['seconds']['train']:.1f} s on {s['environment']['device']}.",
    ]


def _norm_stats_clause(c: dict) -> str:
    """How the batch norms' statistics were set after augmented training (runs before 0.5: kept)."""
    if norm_stats_from_clean_digits(c["augment"], c.get("norm_stats", NORM_STATS_BEFORE_0_5)):
        return (" (after training, every batch norm but the first recomputed its statistics over the "
                "un-augmented training digits)")
    return ""


def analyse_results(f: dict) -> list[str]:
    s = f["summary"]
    scored = f"{f['n']:,} test digits" + (" (a --test-limit subset)" if s["config"].get("test_limit") else "")
    first = f"The ensemble classifies {_pct(f['accuracy'])} of the {scored} correctly: {f['errors']} errors."
    if f["members"] > 1:
        gain = f["accuracy"] - f["member_mean"]
        first += (f" Its members alone score {_pct(f['member_mean'])} ± {_pct(f['member_std'])} (mean ± std over "
                  f"{f['members']} seeds, {_pct(min(f['member_accuracy']))} to {_pct(max(f['member_accuracy']))}), "
                  f"so averaging them {'adds' if gain >= 0 else 'costs'} {_points(abs(gain))}.")
    gap = f["accuracy"] - ORIGINAL_ACCURACY
    if f["dataset"] == "mnist":  # the original analysis was of MNIST only
        first += (f" The original notebook's Keras CNN reached {_pct(ORIGINAL_ACCURACY)}; this run is "
                  f"{_points(abs(gap))} {'above' if gap >= 0 else 'below'} it.")
    return [first, _confusion_sentence(f), _calibration_sentence(f)]


def _confusion_sentence(f: dict) -> str:
    if not f["pairs"]:
        return "There are no errors to analyse."
    names = f["names"]
    pairs = "; ".join(f"true {names[t]} read as {names[p]} ({n}×)" for t, p, n in f["pairs"])
    held = sum(n for *_, n in f["pairs"])
    known = [c for c in f["class_accuracy"] if c["accuracy"] is not None]
    worst, best = min(known, key=lambda c: c["accuracy"]), max(known, key=lambda c: c["accuracy"])
    return (f"The most confused pairs are {pairs}: together {held} of the {f['errors']} errors "
            f"({_pct(held / f['errors'])}). Per-class accuracy runs from {_pct(worst['accuracy'])} for "
            f"{worst['name']} to {_pct(best['accuracy'])} for {best['name']}.")


def _calibration_sentence(f: dict) -> str:
    over = f["mean_confidence"] - f["accuracy"]
    return (f"Calibration: expected calibration error {f['ece']:.3f} ({scores.ECE_BINS} bins) and negative "
            f"log-likelihood {f['nll']:.3f} nats; the mean confidence {_pct(f['mean_confidence'])} is "
            f"{_points(abs(over))} {'above' if over >= 0 else 'below'} the accuracy, so the ensemble is "
            f"{'over' if over >= 0 else 'under'}confident on average.")


def impact(f: dict) -> list[str]:
    return [_concentration_sentence(f), _uncertainty_sentence(f), _label_issue_sentence(f)]


def _concentration_sentence(f: dict) -> str:
    e10, e50, errors = f["top_errors"][10], f["top_errors"][50], max(f["errors"], 1)
    verdict = ("so the errors are concentrated in a few hard digits"
               if e50 >= errors / 2 else "so most errors lie beyond the 50 most ambiguous digits")
    return (f"The 10 most ambiguous digits (lowest ensemble probability of the true label) hold {e10} of the "
            f"{f['errors']} errors ({_pct(e10 / errors)}); the 50 most ambiguous hold {e50} ({_pct(e50 / errors)}), "
            f"{verdict}. Classifying all 50 correctly would raise accuracy by at most "
            f"{_points(e50 / f['n'])} — the original analysis judged the most ambiguous digits' impact "
            f"small; here they hold {_pct(e50 / errors)} of the errors.")


def _uncertainty_sentence(f: dict) -> str:
    if f["members"] == 1:
        return ("With a single network the uncertainty cannot be split into its aleatoric and epistemic parts; "
                "train an ensemble (--members) to measure it.")
    e, a = f["split_errors"], f["split_all"]
    advice = ("Most of it is aleatoric — the digits themselves are unclear to every member — which more members "
              "cannot remove and more data may not, so retraining on them (the original suggestion, untested "
              "here) may buy little." if e["epistemic_share"] < 0.5 else
              "Much of it is epistemic — the members disagree — which more data, augmentation or more members "
              "can still reduce, as the original analysis suggested.")
    return (f"On the misclassified digits the predictive entropy averages {e['total']:.3f} nats: "
            f"{e['aleatoric']:.3f} aleatoric (mean member entropy) and {e['epistemic']:.3f} epistemic (mutual "
            f"information), an epistemic share of {_pct(e['epistemic_share'])} (over all digits: "
            f"{_pct(a['epistemic_share'])}). {f['all_members_wrong']} of the {f['errors']} errors are made by "
            f"{'both' if f['members'] == 2 else 'all ' + str(f['members'])} members. {advice}")


def _label_issue_sentence(f: dict) -> str:
    if f["label_issues_found"] is None:
        validate_too = " (and 'validate')" if f["dataset"] in validate.REVIEWS else ""
        return ("Whether some of these digits carry a wrong label is not measured in this run: run "
                f"'ambiguous-digits audit'{validate_too} into this directory and re-render the report.")
    text = f"cleanlab flags {f['label_issues_found']} test digits as likely label errors."
    if f["validation"]:
        v0 = next(iter(f["validation"].values()))
        found = "; ".join(f"the {name.replace('_', ' ')} ranking holds {v['errors_in_top_10']} of them in its top 10 "
                          f"and {v['errors_in_top_100']} in its top 100 "
                          f"(average precision {v['average_precision']:.3f})"
                          for name, v in f["validation"].items())
        text += (f" Against the human review ({len(v0['errors'])} confirmed label errors among {v0['reviewed']} "
                 f"reviewed test digits), {found}; the review authors' own ranking reached "
                 f"{v0['reference']['average_precision']}.")
    return text + " Digits with a wrong label should be relabelled or dropped before retraining on ambiguous ones."


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------
def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def digit_uri(image: np.ndarray) -> str:
    """A (28, 28) uint8 digit's original pixels as a PNG data URI (~300 bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return png_uri(buf.getvalue())


def reliability_png(run: Run) -> str:
    """Reliability diagram of the ensemble (accuracy vs confidence per bin, with counts) as a data URI."""
    r = scores.reliability(run.member_probs.mean(axis=0), _ints(run.table["label"]))
    centers, width = (r["edges"][:-1] + r["edges"][1:]) / 2, 1 / len(r["count"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 4.6), height_ratios=(3, 1), sharex=True)
    top.bar(centers, np.nan_to_num(r["accuracy"]), width=width * 0.92, color="#4c72b0", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="#888", lw=1, label="perfect calibration")
    top.plot(r["confidence"], r["accuracy"], "o", color="#dd8452", ms=3, label="bin: mean confidence, accuracy")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.bar(centers, r["count"], width=width * 0.92, color="#999")
    bottom.set(xlabel="confidence (probability of the predicted class)", ylabel="digits", yscale="log")
    bottom.set_ylim(bottom=0.8)
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144)
    plt.close(fig)
    return png_uri(buf.getvalue())


# ---------------------------------------------------------------------------
# The gallery's data: which digits the page must hold, and their numbers
# ---------------------------------------------------------------------------
def _ranking_title(name: str) -> dict:
    title, about = RANKING_INFO.get(name, (name.replace("_", " "), ""))
    return {"title": title, "about": about}


def ranking_orders(run: Run) -> dict[str, np.ndarray]:
    """name -> test indices of every ranked digit, most ambiguous first (the rankings the run chose)."""
    chosen = run.summary.get("top") or scores.RANKINGS
    ranks = {name: run.table[f"rank_{name}"] for name in scores.RANKINGS
             if f"rank_{name}" in run.table and name in chosen}
    if run.label_issues is not None:
        ranks["label_issues"] = run.label_issues["rank"]
    return {name: scores.top_indices(r, len(r)) for name, r in ranks.items()}


def _filters(labels: np.ndarray, preds: np.ndarray, classes: int):
    """Boolean masks of every filter the page offers: true class, predicted class, and both."""
    for c in range(classes):
        yield labels == c
        yield preds == c
        for p in range(classes):
            yield (labels == c) & (preds == p)


def needed_prefix(order: np.ndarray, labels: np.ndarray, preds: np.ndarray, k: int, classes: int) -> np.ndarray:
    """The images of `order` (kept in order) that are among the first k under any filter, or unfiltered."""
    keep = np.zeros(len(order), bool)
    keep[:k] = True
    for mask in _filters(labels[order], preds[order], classes):
        keep[np.flatnonzero(mask)[:k]] = True
    return order[keep]


def filter_counts(order: np.ndarray, labels: np.ndarray, preds: np.ndarray, classes: int) -> list[list[int]]:
    """(K+1, K+1) ranked images per filter: [true + 1][pred + 1], index 0 = any."""
    counts = np.zeros((classes + 1, classes + 1), dtype=np.int64)
    np.add.at(counts, (labels[order] + 1, preds[order] + 1), 1)
    counts[0, :] = counts[1:, :].sum(axis=0)
    counts[:, 0] = counts[:, 1:].sum(axis=1)
    return counts.tolist()


def chosen_digits(run: Run, orders: dict[str, np.ndarray]) -> np.ndarray:
    """Test indices whose pixels the page holds: every ranking's needed prefix, then the other errors
    while the page has room for them (MAX_DIGITS)."""
    labels, preds = _ints(run.table["label"]), _ints(run.table["pred"])
    parts = [needed_prefix(o, labels, preds, COUNTS[-1], len(run.class_names)) for o in orders.values()]
    needed = _unique_in_order(np.concatenate(parts))
    errors = np.flatnonzero(labels != preds)
    extra = errors[~np.isin(errors, needed)][: max(MAX_DIGITS - len(needed), 0)]
    return np.concatenate([needed, extra])


def _unique_in_order(indices: np.ndarray) -> np.ndarray:
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)]


def _num(x: float, digits: int = 4) -> float | None:
    """A JSON-safe number (NaN, which JSON lacks, becomes null)."""
    return None if np.isnan(x) else round(float(x), digits)


def digit_record(run: Run, i: int, image: np.ndarray, rank_columns: dict[str, np.ndarray]) -> dict:
    """One digit for the page: pixels, labels, probabilities, measures, ranks and member votes."""
    t, member = run.table, run.member_probs[:, i, :]
    votes = member.argmax(axis=1)
    rec = {
        "i": i, "y": int(t["label"][i]), "p": int(t["pred"][i]), "img": digit_uri(image),
        "probs": [_num(v) for v in member.mean(axis=0)],
        "m": {name: _num(t[name][i]) for name in MEASURES if name in t},
        "ranks": {name: _num(col[i], 0) for name, col in rank_columns.items()},
        "votes": votes.tolist(), "vote_probs": [_num(member[m, v]) for m, v in enumerate(votes)],
        "label_probs": [_num(p) for p in member[:, int(t["label"][i])]],
    }
    if run.label_issues is not None:
        li = run.label_issues
        rec["issue"] = {"suggested": int(li["suggested_label"][i]), "quality": _num(li["label_quality"][i]),
                        "flagged": bool(li["is_label_issue"][i])}
    return rec


def gallery_data(run: Run, x_test: np.ndarray) -> dict:
    """The JSON the page's script reads: digits, each ranking's order and filter counts."""
    orders = ranking_orders(run)
    chosen = chosen_digits(run, orders)
    has = np.zeros(len(run.table["index"]), bool)
    has[chosen] = True
    labels, preds = _ints(run.table["label"]), _ints(run.table["pred"])
    rank_columns = {n: (run.label_issues["rank"] if n == "label_issues" else run.table[f"rank_{n}"]) for n in orders}
    return {
        "members": run.member_probs.shape[0], "seeds": run.seeds, "measures": list(MEASURES),
        "classes": list(run.class_names),
        "digits": [digit_record(run, int(i), x_test[i], rank_columns) for i in np.sort(chosen)],
        "rankings": {n: {**_ranking_title(n), "order": o[has[o]].tolist(), "counts": filter_counts(o, labels, preds, len(run.class_names))}
                     for n, o in orders.items()},
    }


def train_issue_cards(run: Run, x_train: np.ndarray) -> list[dict]:
    """The most suspect training labels (from `audit --split train`), for a static gallery."""
    if run.train_issues is None:
        return []
    t = run.train_issues
    top = scores.top_indices(t["rank"], TRAIN_ISSUES_SHOWN)
    names = run.class_names
    return [{"i": int(i), "given": names[int(t["given_label"][i])], "suggested": names[int(t["suggested_label"][i])],
             "quality": float(t["label_quality"][i]), "img": digit_uri(x_train[i])} for i in top]


# ---------------------------------------------------------------------------
# The experiment (experiment.json): one table, shared with experiment.md
# ---------------------------------------------------------------------------
EXPERIMENT_COLUMNS = ("test accuracy", "errors", "NLL", "ECE", "baseline's top 10 correct",
                      "accuracy without the label errors", "Δ accuracy vs baseline")


def _spread(m: dict, fmt: str, scale: float = 1.0, single: bool = False, unit: str = "") -> str:
    """'mean ± std' of a metric over seeds (just the mean for one model)."""
    mean = format(scale * m["mean"], fmt) + unit
    return mean if single else f"{mean} ± {format(scale * m['std'], fmt)}{unit}"


def experiment_rows(exp: dict) -> list[dict]:
    """One row per variant: its name, formatted cells (EXPERIMENT_COLUMNS) and whether it is the best."""
    base = exp["variants"]["baseline"]["accuracy"]["mean"]
    rows = []
    for name, v in exp["variants"].items():
        one = len(v["per_seed"]) == 1
        cells = [_spread(v["accuracy"], ".2f", 100, one, "%"), _spread(v["errors"], ".1f", 1, one),
                 _spread(v["nll"], ".4f", 1, one), _spread(v["ece"], ".4f", 1, one),
                 f"{_spread(v['top_ambiguous_correct'], '.1f', 1, one)} of {len(exp['baseline_top_ambiguous'])}",
                 _spread(v["accuracy_without_label_errors"], ".2f", 100, one, "%"),
                 f"{100 * (v['accuracy']['mean'] - base):+.2f} points"]
        rows.append({"name": v["title"], "cells": cells, "best": name == exp["best_variant"], "about": v["about"]})
    return rows


def experiment_notes(exp: dict) -> list[str]:
    """How to read the table: seeds, the top-10 digits, the label errors, the emphasis, the leakage rule."""
    seeds, e = len(exp["seeds"]), exp["emphasis"]
    top, wrong = exp["baseline_top_ambiguous"], exp["top_ambiguous_label_errors"]
    reviewed = exp.get("reviewed", True)  # only MNIST's test labels have a human review
    return [
        f"Mean ± std (population) over {seeds} seed(s) per variant; the ensemble averages the {seeds} "
        f"{exp['best_variant'].replace('_', ' ')} models (the best mean accuracy). Δ is against the baseline's mean.",
        f"The baseline's top {len(top)} most ambiguous test digits (highest 1 − p(label), seeds averaged): "
        f"{', '.join(map(str, top))}"
        + (f"; {len(wrong)} of them are human-confirmed label errors, where a 'correct' answer agrees with a "
           f"wrong label." if reviewed else "."),
        f"Accuracy without the label errors leaves out the {len(exp['label_errors'])} test digits human reviewers "
        f"judged mislabelled, so a model that reads them as what they show is not punished for it." if reviewed else
        "No human review of this data set's test labels exists, so accuracy without label errors is the accuracy.",
        f"Emphasis: a second pass of {e['epochs']} epoch(s) (peak learning rate {e['lr']:g}) from the first-pass "
        f"model, in which the {e['digits']} most ambiguous training digits appear {e['factor']}× (cleanlab's "
        f"suspected label errors left out).",
        exp["leakage"],
    ]


def impact_lines(im: dict) -> list[str]:
    """The default run's numbers: errors among its most ambiguous digits, accuracy with label errors fixed."""
    tops = "; ".join(f"the {k} most ambiguous digits hold {t['errors']} of its {im['errors']} errors "
                     f"({_pct(t['share'])})" for k, t in im["errors_in_top"].items())
    first = (f"Impact, from the default run in this directory ({_pct(im['accuracy'])}, {im['errors']} errors in "
             f"{im['test_digits']:,} test digits): {tops}.")
    if not im.get("reviewed", True):  # no human review of these labels: nothing to relabel or remove
        return [first]
    return [
        first,
        f"With the {im['relabelled']} reviewed label errors whose reviewers agreed on the guessed label relabelled "
        f"to it, its accuracy is {_pct(im['accuracy_relabelled'])} "
        f"({100 * (im['accuracy_relabelled'] - im['accuracy']):+.2f} points); with all {im['removed']} "
        f"human-confirmed label errors removed, {_pct(im['accuracy_removed'])} "
        f"({100 * (im['accuracy_removed'] - im['accuracy']):+.2f} points).",
    ]


def experiment_view(exp: dict | None) -> dict | None:
    """What the report's experiment section shows (None: no experiment.json)."""
    if exp is None:
        return None
    return {"columns": EXPERIMENT_COLUMNS, "rows": experiment_rows(exp), "notes": experiment_notes(exp),
            "impact": impact_lines(exp["impact"])}

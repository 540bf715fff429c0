"""The report's pictures and galleries: which test images the page holds, their numbers, and their PNGs.

The page holds the pixels of every image a gallery can show under any ranking and
filter, as PNG data URIs, plus one JSON blob the page's script reads; the
reliability diagram is an embedded PNG too. Digits listed in neighbours.csv also
carry their neighbour strips: their nearest training images of the given label and
of the predicted or suggested class, whose pixels the page holds once each.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from . import manifest, rundir, scores  # noqa: E402

if TYPE_CHECKING:
    from .report import Run

# Gallery sizes the page offers; it holds the first COUNTS[-1] of every ranking under every filter.
COUNTS = (10, 25, 50, 100)
DEFAULT_COUNT = 25
# Page size (~1.1 kB a digit, ~5 MB): every digit a gallery needs, then other errors up to this many.
MAX_DIGITS = 4000
# Suspected training-set label errors shown (a static gallery; the run's training-set audit, or `audit --split train`).
TRAIN_ISSUES_SHOWN = 30
# name -> (title, what ranks first) of scores.RANKINGS and the audit's ranking; see ranking_title for others.
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
# Roles of neighbours.csv in the order their strips are shown: the given label's first, to compare against.
STRIP_ROLES = ("given", "suggested", "predicted")


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


def reliability_png(probs: np.ndarray, labels: np.ndarray) -> str:
    """Reliability diagram of (N, K) probabilities against (N,) labels (accuracy vs confidence per bin,
    with counts) as a data URI."""
    r = scores.reliability(probs, labels)
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
# Which digits the page must hold
# ---------------------------------------------------------------------------
def ranking_title(name: str) -> dict:
    """{title, about} of a ranking for the page's menu (RANKING_INFO; an unknown name titles itself)."""
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


def _filters(labels: np.ndarray, preds: np.ndarray, classes: int) -> Iterator[np.ndarray]:
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


def chosen_digits(orders: dict[str, np.ndarray], labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """Test indices whose pixels the page holds: every ranking's needed prefix, then the other errors
    while the page has room for them (MAX_DIGITS)."""
    parts = [needed_prefix(o, labels, preds, COUNTS[-1], classes) for o in orders.values()]
    needed = _unique_in_order(np.concatenate(parts))
    errors = np.flatnonzero(labels != preds)
    extra = errors[~np.isin(errors, needed)][: max(MAX_DIGITS - len(needed), 0)]
    return np.concatenate([needed, extra])


def _unique_in_order(indices: np.ndarray) -> np.ndarray:
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)]


# ---------------------------------------------------------------------------
# The gallery's data: the digits the page holds, and their numbers
# ---------------------------------------------------------------------------
def _num(x: float, digits: int = 4) -> float | None:
    """A JSON-safe number (NaN, which JSON lacks, becomes null)."""
    return None if np.isnan(x) else round(float(x), digits)


def digit_record(run: Run, i: int, image: np.ndarray, rank_columns: dict[str, np.ndarray],
                 near: dict[str, dict] | None = None) -> dict:
    """One digit for the page: pixels, labels, probabilities, measures, ranks, member votes, the reasons
    sentences, and its neighbour strips when `near` (read_neighbours, one digit's) has them."""
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
    if "reasons" in t:
        rec["reasons"] = str(t["reasons"][i])
    if run.label_issues is not None:
        li = run.label_issues
        rec["issue"] = {"suggested": int(li["suggested_label"][i]), "quality": _num(li["label_quality"][i]),
                        "flagged": bool(li["is_label_issue"][i])}
        if "reasons" in li:
            rec["issue"]["reasons"] = str(li["reasons"][i])
    if near:
        rec["strips"] = strips(near)
        rec["caption"] = strip_caption(rec["strips"], run.class_names)
    return rec


def gallery_data(run: Run, x_test: np.ndarray, x_train: np.ndarray,
                 near: dict[int, dict[str, dict]] | None = None) -> dict:
    """The JSON the page's script reads: digits, each ranking's order and filter counts, and the training
    images the neighbour strips show (`near`: read_neighbours)."""
    orders, near = ranking_orders(run), near or {}
    labels, preds, classes = run.labels, run.preds, len(run.class_names)
    chosen = chosen_digits(orders, labels, preds, classes)
    has = np.zeros(len(labels), bool)
    has[chosen] = True
    rank_columns = {n: (run.label_issues["rank"] if n == "label_issues" else run.table[f"rank_{n}"]) for n in orders}
    digits = [digit_record(run, int(i), x_test[i], rank_columns, near.get(int(i))) for i in np.sort(chosen)]
    return {
        "members": run.member_probs.shape[0], "seeds": run.seeds, "measures": list(MEASURES),
        "classes": list(run.class_names), "digits": digits,
        "rankings": {n: {**ranking_title(n), "order": o[has[o]].tolist(),
                         "counts": filter_counts(o, labels, preds, classes)}
                     for n, o in orders.items()},
        "train_images": strip_images(digits, x_train),
    }


# ---------------------------------------------------------------------------
# Evidence: the nearest training digits (neighbours.csv) as strips
# ---------------------------------------------------------------------------
def read_neighbours(run_dir: Path) -> dict[int, dict[str, dict]]:
    """Test digit -> role -> {"class": c, "train": (k,) training indices, "dist": (k,) cosine distances},
    nearest first, from neighbours.csv (checked against the manifest); {} when the run has none."""
    if not manifest.listed(run_dir, rundir.NEIGHBOURS_FILE):
        return {}
    found: dict[int, dict[str, dict]] = {}
    with open(manifest.verified(run_dir, rundir.NEIGHBOURS_FILE), newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["split"] == "test"), key=lambda r: int(r["rank"]))
    for r in rows:
        role = found.setdefault(int(r["index"]), {}).setdefault(r["role"], {"class": int(r["class"]), "train": [],
                                                                            "dist": []})
        role["train"].append(int(r["train_index"]))
        role["dist"].append(float(r["distance"]))
    return found


def strips(near: dict[str, dict]) -> list[dict]:
    """One digit's strips, one per distinct class in STRIP_ROLES order (the given label's first): its roles,
    class, training indices (nearest first) and their mean cosine distance (LOWER = closer)."""
    out: list[dict] = []
    for role in (r for r in STRIP_ROLES if r in near):
        cls = near[role]["class"]
        same = next((s for s in out if s["c"] == cls), None)
        if same is not None:
            same["roles"].append(role)
            continue
        out.append({"roles": [role], "c": cls, "train": near[role]["train"],
                    "mean": round(float(np.mean(near[role]["dist"])), 4)})
    return out


def strip_caption(found: list[dict], names: tuple[str, ...]) -> str:
    """What the strips say: whether the digit sits nearer training images of another class than of its
    given label (the first strip), by mean distance; "" without another class to compare."""
    if len(found) < 2 or "given" not in found[0]["roles"]:
        return ""
    given, other = found[0], min(found[1:], key=lambda s: s["mean"])
    mine, theirs = names[given["c"]], names[other["c"]]
    if other["mean"] < given["mean"]:
        return (f"this {mine} sits among training {theirs}s (mean distance {other['mean']:.3f}, "
                f"to training {mine}s {given['mean']:.3f})")
    return (f"this {mine} sits nearer training {mine}s than {theirs}s (mean distance {given['mean']:.3f} "
            f"vs {other['mean']:.3f})")


def strip_images(digits: list[dict], x_train: np.ndarray) -> dict[str, str]:
    """Training index -> PNG data URI of every training image a strip shows, each once."""
    wanted = sorted({t for d in digits for s in d.get("strips", ()) for t in s["train"]})
    return {str(t): digit_uri(x_train[t]) for t in wanted}


def train_issue_cards(run: Run, x_train: np.ndarray) -> list[dict]:
    """The most suspect training labels (the training-set audit's), for a static gallery."""
    if run.train_issues is None:
        return []
    t = run.train_issues
    top = scores.top_indices(t["rank"], TRAIN_ISSUES_SHOWN)
    names = run.class_names
    return [{"i": int(i), "given": names[int(t["given_label"][i])], "suggested": names[int(t["suggested_label"][i])],
             "quality": float(t["label_quality"][i]), "img": digit_uri(x_train[i]),
             "confidence": float(t["confidence"][i]) if "confidence" in t else None} for i in top]

"""The report's section on unfamiliar digits (templates/unfamiliar.html), for a run with embeddings.npz.

Unfamiliar is not ambiguous: a digit unlike any training digit can still be read with confidence, and a
familiar one can sit between two classes. So the most unfamiliar test and training digits get galleries of
their own, apart from the ambiguity rankings, and one plot puts every test digit on both axes at once.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from . import evidence, gallery, manifest, rundir
from .gallery import plt

if TYPE_CHECKING:
    from .data import Dataset
    from .report import Run

# Digits in each gallery (test, training): a row or two of cards.
SHOWN = 16


def section(run: Run, ds: Dataset) -> dict | None:
    """What unfamiliar.html shows: the most unfamiliar test and training digits and the plot; None without
    embeddings.npz (a run made before it was written)."""
    if not manifest.listed(run.dir, rundir.EMBEDDINGS_FILE):
        return None
    with np.load(manifest.verified(run.dir, rundir.EMBEDDINGS_FILE), allow_pickle=False) as z:
        sample, own = z["calibration_index"], z["calibration_unfamiliarity"].astype(np.float64)
        # a run made before 0.11 looked at no turn and kept no share
        share = float(z["turned_more_familiar"]) if "turned_more_familiar" in z.files else None
        turns = "unfamiliarity_turns" in z.files
    threshold = float(np.percentile(own, evidence.PREDICT_UNFAMILIAR_PCT))
    return {"test": test_cards(run, ds.x_test), "train": train_cards(sample, own, ds, run.class_names), "shown": SHOWN,
            "plot": plot_png(run, threshold), "threshold_pct": evidence.PREDICT_UNFAMILIAR_PCT,
            "turned_share": share, "turns": turns}


def test_cards(run: Run, x_test: np.ndarray) -> list[dict]:
    """The SHOWN least familiar test digits, least familiar first; `ambiguous`: also in the top SHOWN by ambiguity."""
    t, names = run.table, run.class_names
    rows = np.argsort(-t["unfamiliarity"], kind="stable")[:SHOWN]
    return [{"i": int(t["index"][r]), "label": names[int(t["label"][r])], "pred": names[int(t["pred"][r])],
             "pct": float(t["unfamiliarity_pct"][r]), "ambiguous": bool(t["rank_ambiguity"][r] <= SHOWN),
             "img": gallery.digit_uri(x_test[int(t["index"][r])])} for r in rows]


def train_cards(sample: np.ndarray, own: np.ndarray, ds: Dataset, names: tuple[str, ...]) -> list[dict]:
    """The SHOWN least familiar of the sampled training digits (each scored with itself left out; `sample` (S,)
    their indices, `own` (S,) their scores), least familiar first."""
    rows = np.argsort(-own, kind="stable")[:SHOWN]
    pct = evidence.percentile_of(own[rows], own)
    return [{"i": int(sample[r]), "label": names[int(ds.y_train[sample[r]])], "pct": float(p),
             "img": gallery.digit_uri(ds.x_train[sample[r]])} for r, p in zip(rows, pct)]


def plot_png(run: Run, threshold: float) -> str:
    """Every test digit by ambiguity (aleatoric: the members' mean entropy) and unfamiliarity, marked correct,
    wrong, and (with an audit) suspected label error; `threshold`: predict's line, in unfamiliarity."""
    t = run.table
    x, y, wrong = t["expected_entropy"], t["unfamiliarity"], run.labels != run.preds
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(x[~wrong], y[~wrong], s=6, c="#9ca3af", alpha=0.5, lw=0, label="correct")
    ax.scatter(x[wrong], y[wrong], s=14, c="#dc2626", lw=0, label="wrong")
    if run.label_issues is not None:  # rows of the audit's table are the test digits', in order
        issue = np.nan_to_num(run.label_issues["is_label_issue"]).astype(bool)
        ax.scatter(x[issue], y[issue], s=40, facecolors="none", edgecolors="#d97706", lw=1.2,
                   label="suspected label error")
    ax.axhline(threshold, ls="--", lw=1, c="#4c72b0", label=f"predict's flag ({evidence.PREDICT_UNFAMILIAR_PCT:g}th "
               "percentile of training)")
    ax.set(xlabel="ambiguity: members' mean entropy (nats)", ylabel="unfamiliarity (mean cosine distance)",
           ylim=(0, 1.1 * max(threshold, float(y.max()))))
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="lower right")  # confident yet unfamiliar is rare: that corner is empty
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144)
    plt.close(fig)
    return gallery.png_uri(buf.getvalue())

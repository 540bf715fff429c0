"""The HTML report of a finished run: one self-contained page, rendered from the run directory.

Everything comes from the files `run` (and, when present, `audit` and `validate`)
left in the run directory, plus the test pixels of the run's data set (recorded in
summary.json and checked against its MD5s), so
a report can be re-rendered at any time without retraining. The page references
nothing outside itself: digits are PNG data URIs, the chart is an embedded PNG,
CSS and JavaScript are inline, and the data the controls need is one JSON blob.

This module reads the run and assembles the page; the numbers come from scores,
the sentences from report_text, the pictures and gallery data from gallery, and
the experiment's table from experiment_table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader

from . import (data, datamap, experiment_table, files, gallery, healthview, manifest, outputs, report_text, rundir,
               scores, unfamiliar)
from .config import ConfigError

REPORT_FILE = rundir.REPORT_FILE
TEMPLATE = "report.html"
# Keys of summary.json the report reads (written by `run` since the ensemble pipeline).
SUMMARY_KEYS = ("test_accuracy", "test_errors", "train_digits", "member_accuracy", "member_accuracy_mean",
                "member_accuracy_std", "member_seeds", "model", "seconds", "data", "environment", "recipe", "invocation",
                "run_id")


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
    dynamics: dict[str, np.ndarray] | None = None  # train_dynamics.csv (row i = training digit i), read once

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 true class of each test digit."""
        return self.table["label"].astype(np.int64)

    @property
    def preds(self) -> np.ndarray:
        """(N,) int64 class the ensemble predicts for each test digit."""
        return self.table["pred"].astype(np.int64)


def noun(dataset_name: str) -> str:
    """What the page calls one item of the data set (data.Published.noun): MNIST's digits, any other images."""
    spec = data.PUBLISHED.get(dataset_name)
    return spec.noun if spec is not None else "image"


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
        r, where = run.summary["recipe"], run.summary["invocation"]
        dataset = data.load_dataset(r["dataset"], where["data_dir"], class_names=r["class_names"],
                                    log=lambda _: None, progress=False)
    _check_pixels(run, dataset)
    html = render(run, dataset)
    return rundir.save_with(run.dir, REPORT_FILE, lambda p: files.write_text(p, html))


def render(run: Run, ds: data.Dataset) -> str:
    """The whole page as one HTML string: the health map's images at the most grey levels that keep the page under
    healthview.PAGE_LIMIT bytes (fewer, down to two, where the rest of the page is large)."""
    env = Environment(loader=PackageLoader("ambiguous_digits", "templates"), autoescape=True)
    env.filters["pct"] = report_text.pct
    template, context = env.get_template(TEMPLATE), page_context(run, ds)
    html = template.render(**context)
    if context["health"] is not None:
        for levels in range(healthview.THUMB_LEVELS - 1, 1, -1):
            if len(html.encode()) <= healthview.PAGE_LIMIT:
                break
            healthview.set_thumbnails(context["health"], run, ds, levels)
            html = template.render(**context)
    return html


def page_context(run: Run, ds: data.Dataset) -> dict:
    """Everything the template shows: header numbers, tables, chart, answers, and the gallery's JSON."""
    facts = run_facts(run)
    # The review in the browser saves its verdicts under the run's id.
    page_data = {**gallery.gallery_data(run, ds.x_test, ds.x_train, gallery.read_neighbours(run.dir)),
                 "run_id": run.summary["run_id"]}
    return {
        "run": run, "name": run.dir.resolve().name, "s": run.summary, "facts": facts, "answers": answers(facts),
        "confusion": facts["confusion"].tolist(), "confusion_rows": facts["confusion"].sum(axis=1).tolist(),
        "confusion_cols": facts["confusion"].sum(axis=0).tolist(), "class_accuracy": facts["class_accuracy"],
        "reliability_png": gallery.reliability_png(run.member_probs.mean(axis=0), run.labels),
        "counts": gallery.COUNTS, "default_count": gallery.DEFAULT_COUNT,
        "rankings": {n: gallery.ranking_title(n) for n in page_data["rankings"]},
        "train_issues": gallery.train_issue_cards(run, ds.x_train), "classes": run.class_names,
        "dataset": facts["dataset"], "noun": noun(facts["dataset"]),
        "experiment": experiment_table.experiment_view(run.experiment),
        "page_data": page_data,
        "unfamiliar": unfamiliar.section(run, ds),  # None without embeddings.npz: no section
        "datamap": datamap.section(run, ds),  # None without train_dynamics.csv: no section
        "health": healthview.section(run, ds),  # None without health.json: no section
    }


def answers(facts: dict) -> list[dict]:
    """The three questions answered from run_facts, in the noun of the run's data set."""
    return report_text.answers(facts, noun(facts["dataset"]))


# ---------------------------------------------------------------------------
# Reading the run directory (validated here, trusted below)
# ---------------------------------------------------------------------------
def load_run(run_dir: Path) -> Run:
    """The run's files, checked once; the audit's files are None where absent."""
    manifest.require(run_dir)
    for name in (rundir.SUMMARY_FILE, rundir.SCORES_FILE, rundir.PROBS_FILE):
        if not manifest.listed(run_dir, name):
            raise ConfigError(f"RUN_DIR: {run_dir} has no {name}; is it a finished `run`?")
        manifest.verified(run_dir, name)
    summary = json.loads((run_dir / rundir.SUMMARY_FILE).read_text())
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ConfigError(f"{run_dir / rundir.SUMMARY_FILE}: no {', '.join(missing)}; re-run with this version")
    table = outputs.read_table(run_dir / rundir.SCORES_FILE)
    with np.load(run_dir / rundir.PROBS_FILE, allow_pickle=False) as npz:
        member_probs, seeds = npz["probs"], [int(s) for s in npz["seeds"]]
    n, names = len(table["index"]), _class_names(summary, member_probs)
    if member_probs.ndim != 3 or member_probs.shape[1:] != (n, len(names)):
        raise ConfigError(f"{run_dir / rundir.PROBS_FILE}: probs {member_probs.shape} do not match {n} rows of "
                          f"{rundir.SCORES_FILE} and {len(names)} classes")
    label_issues = _optional_table(run_dir / rundir.AUDIT["test"].table, n)
    train_issues = _optional_table(run_dir / rundir.AUDIT["train"].table, None)
    return Run(run_dir, summary, table, member_probs, seeds, names, label_issues,
               manifest.listed_json(run_dir, rundir.VALIDATION_FILE), train_issues,
               manifest.listed_json(run_dir, rundir.EXPERIMENT_FILE),
               _optional_table(run_dir / rundir.DYNAMICS_FILE, None))


def _class_names(summary: dict, member_probs: np.ndarray) -> tuple[str, ...]:
    """The run's class names (a published set's own, else 0..K-1)."""
    names = summary["data"].get("class_names")
    return tuple(names) if names else tuple(str(k) for k in range(member_probs.shape[-1]))


def _optional_table(path: Path, rows: int | None) -> dict[str, np.ndarray] | None:
    """An optional output (an audit's, train_dynamics.csv), or None when it was never written: not listed in the
    manifest (a command killed before it listed the file leaves it unlisted). A listed one must be there, unchanged."""
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
def run_facts(run: Run) -> dict:
    """The measured numbers of this run that the page quotes."""
    t, s = run.table, run.summary
    labels, preds = run.labels, run.preds
    wrong = labels != preds
    probs = run.member_probs.mean(axis=0)
    conf = scores.error_confusion(labels, preds, len(run.class_names))
    aleatoric, epistemic = t["expected_entropy"], t["mutual_information"]
    return {
        "summary": s, "n": len(labels), "errors": int(wrong.sum()), "accuracy": float(1 - wrong.mean()),
        "members": run.member_probs.shape[0], "member_accuracy": s["member_accuracy"],
        "member_mean": s["member_accuracy_mean"], "member_std": s["member_accuracy_std"],
        "confusion": conf, "confusion_max": int(conf.max()), "pairs": scores.top_confusions(conf),
        "class_accuracy": scores.class_accuracy(labels, preds, run.class_names), "names": run.class_names,
        "dataset": s["data"].get("dataset", "mnist"),
        "ece": scores.expected_calibration_error(probs, labels), "nll": scores.nll(probs, labels),
        "mean_confidence": float(t["prob_pred"].mean()),
        "top_errors": {k: scores.errors_in_top(t["rank_ambiguity"], wrong, k) for k in (10, 50)},
        "split_all": scores.uncertainty_split(aleatoric, epistemic, np.ones(len(labels), bool)),
        "split_errors": scores.uncertainty_split(aleatoric, epistemic, wrong),
        "all_members_wrong": int((wrong & (t["members_wrong"] == run.member_probs.shape[0])).sum()),
        "parameters": _parameter_count(s["model"]),
        "label_issues_found": None if run.label_issues is None else int(np.nansum(run.label_issues["is_label_issue"])),
        "validation": (run.validation or {}).get("rankings", {}),
    }


def _parameter_count(model: str) -> str | None:
    found = re.search(r"([\d,]+) parameters", model)
    return found.group(1) if found else None

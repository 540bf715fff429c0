"""The experiment's table (experiment.json): one table and its notes, shared by report.html and experiment.md."""

from __future__ import annotations

from .report_text import pct

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
                     f"({pct(t['share'])})" for k, t in im["errors_in_top"].items())
    first = (f"Impact, from the default run in this directory ({pct(im['accuracy'])}, {im['errors']} errors in "
             f"{im['test_digits']:,} test digits): {tops}.")
    if not im.get("reviewed", True):  # no human review of these labels: nothing to relabel or remove
        return [first]
    return [
        first,
        f"With the {im['relabelled']} reviewed label errors whose reviewers agreed on the guessed label relabelled "
        f"to it, its accuracy is {pct(im['accuracy_relabelled'])} "
        f"({100 * (im['accuracy_relabelled'] - im['accuracy']):+.2f} points); with all {im['removed']} "
        f"human-confirmed label errors removed, {pct(im['accuracy_removed'])} "
        f"({100 * (im['accuracy_removed'] - im['accuracy']):+.2f} points).",
    ]


def experiment_view(exp: dict | None) -> dict | None:
    """What the report's experiment section shows (None: no experiment.json)."""
    if exp is None:
        return None
    return {"columns": EXPERIMENT_COLUMNS, "rows": experiment_rows(exp), "notes": experiment_notes(exp),
            "impact": impact_lines(exp["impact"])}

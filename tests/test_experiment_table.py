"""The experiment's table (experiment_table) on a hand-made experiment.json with known cells.

The same table from a real tiny experiment, in experiment.md and the report, is checked in test_experiment.py.
"""

from ambiguous_digits import experiment_table


def _variant(title: str, accuracies: list[float]) -> dict:
    per_seed = [{"accuracy": a} for a in accuracies]
    mean = sum(accuracies) / len(accuracies)
    std = (sum((a - mean) ** 2 for a in accuracies) / len(accuracies)) ** 0.5
    spread = {"mean": mean, "std": std}
    return {"title": title, "about": f"about {title}", "per_seed": per_seed, "accuracy": spread,
            "errors": {"mean": 30.0, "std": 1.5}, "nll": {"mean": 0.0123, "std": 0.0004},
            "ece": {"mean": 0.0045, "std": 0.0002}, "top_ambiguous_correct": {"mean": 2.5, "std": 0.5},
            "accuracy_without_label_errors": spread}


EXP = {"variants": {"baseline": _variant("baseline", [0.9960, 0.9964]),
                    "augmentation": _variant("augmentation", [0.9970, 0.9972]),
                    "ensemble": _variant("ensemble of augmentation", [0.9975])},
       "best_variant": "augmentation", "baseline_top_ambiguous": list(range(10))}


def test_rows_format_mean_and_spread_over_seeds_and_the_gain_over_the_baseline():
    rows = experiment_table.experiment_rows(EXP)
    assert [r["name"] for r in rows] == ["baseline", "augmentation", "ensemble of augmentation"]
    assert [r["best"] for r in rows] == [False, True, False]
    assert all(len(r["cells"]) == len(experiment_table.EXPERIMENT_COLUMNS) for r in rows)
    base, aug, ens = (r["cells"] for r in rows)
    assert base[0] == "99.62% ± 0.02%" and base[1] == "30.0 ± 1.5" and base[2] == "0.0123 ± 0.0004"
    assert base[4] == "2.5 ± 0.5 of 10" and base[6] == "+0.00 points"
    assert aug[6] == "+0.09 points"
    assert ens[0] == "99.75%" and ens[1] == "30.0" and ens[6] == "+0.13 points"  # one model: no spread


def test_without_an_experiment_the_report_shows_none():
    assert experiment_table.experiment_view(None) is None

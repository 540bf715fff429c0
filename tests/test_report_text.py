"""The report's prose (report_text): the facts each sentence quotes, and the data set's noun in every sentence.

Sentences are checked for what they state (numbers, class names, commands, the
noun), not word for word.
"""

import copy
import csv
import json
import re

import numpy as np
import pytest

from ambiguous_digits import report, report_text, scores


@pytest.fixture(scope="module")
def facts(report_run):
    return report.run_facts(report.load_run(report_run))


@pytest.fixture(scope="module")
def audited_facts(audited_run):
    return report.run_facts(report.load_run(audited_run))


def _text(facts: dict, noun: str = "digit") -> str:
    return " ".join(p for a in report_text.answers(facts, noun) for p in a["paragraphs"])


def _variants(f: dict) -> list[dict]:
    """The run's facts, and the branches a sentence takes on one member, a mostly epistemic split, no errors."""
    one, epistemic, perfect = copy.deepcopy(f), copy.deepcopy(f), copy.deepcopy(f)
    one["members"] = 1
    epistemic["split_errors"]["epistemic_share"] = 0.9
    perfect["pairs"] = []
    return [f, one, epistemic, perfect]


# ---------------------------------------------------------------------------
# The numbers of a real run
# ---------------------------------------------------------------------------
def test_answers_quote_this_runs_numbers(facts, report_run):
    summary = json.loads((report_run / "summary.json").read_text())
    questions = [a["question"] for a in report_text.answers(facts, "digit")]
    assert questions == ["Describe your model", "Analyse your results", "Impact of the images and improvements"]
    text = _text(facts)
    assert f"{summary['test_accuracy']:.2%}" in text
    assert f"{summary['member_accuracy_mean']:.2%}" in text
    assert f"{summary['test_errors']} errors" in text
    assert "8,834 parameters" in text  # widths 8,16,32, from summary["model"]
    assert summary["recipe"]["augment"] and report_text.norm_stats_clause(True, "digit") in text


def test_answers_name_the_most_confused_pair(facts, report_run):
    with open(report_run / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels, preds = (np.array([int(r[c]) for r in rows]) for c in ("label", "pred"))
    (t, p, n), *_ = scores.top_confusions(scores.error_confusion(labels, preds, 10))
    first_pair = report_text.confusion_sentence(facts).split(";")[0]
    assert re.search(rf"\b{t}\b\D+\b{p}\b\D+\b{n}×", first_pair), first_pair  # true class, predicted, count


def test_the_confusion_sentence_names_the_classes_and_counts():
    names = ("T-shirt/top", "Trouser", "Pullover")
    labels, preds = np.array([0, 0, 0, 1, 1, 2, 2, 2]), np.array([0, 2, 2, 1, 0, 2, 2, 2])
    conf = scores.error_confusion(labels, preds, 3)
    f = {"pairs": scores.top_confusions(conf), "names": names, "errors": 3,
         "class_accuracy": scores.class_accuracy(labels, preds, names)}
    first, second = report_text.confusion_sentence(f).split(";")
    assert first.index("T-shirt/top") < first.index("Pullover") and "2×" in first
    assert second.index("Trouser") < second.index("T-shirt/top") and "1×" in second
    assert "3 of the 3 errors" in second and "100.00%" in second
    assert "33.33% for T-shirt/top" in second and "100.00% for Pullover" in second  # worst and best class


# ---------------------------------------------------------------------------
# The method: from the recipe's augment
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("noun", ["digit", "image"])
def test_the_norms_statistics_are_recomputed_after_augmented_training_only(noun):
    clause = report_text.norm_stats_clause(True, noun)
    assert "batch norm but the first" in clause and "statistics" in clause
    assert f"un-augmented training {noun}s" in clause
    assert report_text.norm_stats_clause(False, noun) == ""  # nothing to recompute without augmentation


def test_the_method_follows_the_recipes_augment(facts):
    f = copy.deepcopy(facts)
    for augment in (True, False):
        f["summary"]["recipe"] = {**facts["summary"]["recipe"], "augment": augment}
        method = report_text.describe_model(f, "digit")[1]
        assert (report_text.norm_stats_clause(True, "digit") in method) == augment
        assert ("without random affine augmentation" in method) == (not augment)
        assert "pool" not in " ".join(report_text.describe_model(f, "digit")).replace(f["summary"]["model"], "")


# ---------------------------------------------------------------------------
# Label errors: measured, or the commands that would measure them
# ---------------------------------------------------------------------------
def test_without_an_audit_the_answers_name_the_commands_that_would_measure_it(facts):
    facts = {**facts, "label_issues_found": None, "validation": None}  # a run without its audits (--no-cross-fit)
    mnist = report_text.label_issue_sentence(facts, "digit")
    assert "'ambiguous-digits audit'" in mnist and "'validate'" in mnist and "these digits" in mnist
    other = report_text.label_issue_sentence({**facts, "dataset": "fashion-mnist"}, "image")
    assert "'ambiguous-digits audit'" in other and "'validate'" not in other  # no human review to compare with
    assert "these images" in other


def test_with_an_audit_the_answers_quote_the_flagged_labels_and_the_review(audited_facts, audited_run):
    v = json.loads((audited_run / "validation.json").read_text())["rankings"]["label_issues"]
    sentence = report_text.label_issue_sentence(audited_facts, "digit")
    n = audited_facts["label_issues_found"]
    assert f"flags {n} test digit{'' if n == 1 else 's'} as likely label error" in sentence
    assert f"{len(v['errors'])} confirmed label errors among {v['reviewed']} reviewed test digits" in sentence
    assert f"{v['errors_in_top_10']} of them in its top 10" in sentence
    assert f"{v['errors_in_top_100']} in its top 100" in sentence
    assert f"{v['average_precision']:.3f}" in sentence and str(v["reference"]["average_precision"]) in sentence


# ---------------------------------------------------------------------------
# The noun
# ---------------------------------------------------------------------------
def test_every_sentence_speaks_of_the_data_sets_items(facts, audited_facts):
    """The same sentences in either noun, word for word apart from it; the command keeps its name."""
    for f in _variants(facts) + _variants(audited_facts):
        digits, images = _text(f, "digit"), _text(f, "image")
        assert "image" not in digits.lower()
        assert "digit" not in images.lower().replace("ambiguous-digits", "")
        assert re.sub(r"\b([Ii])mage", lambda m: ("D" if m.group(1) == "I" else "d") + "igit", images) == digits
    assert "test images" in _text(facts, "image") and "training images" in _text(facts, "image")


@pytest.mark.parametrize("n, words", [(0, "flags 0 test digits as likely label errors at its default thresholds"),
                                      (1, "flags 1 test digit as likely label error at its default thresholds"),
                                      (2, "flags 2 test digits as likely label errors at its default thresholds")])
def test_the_flag_count_reads_as_english_and_points_to_the_ranking(n, words):
    sentence = report_text.label_issue_sentence({"label_issues_found": n, "validation": None, "dataset": "mnist"},
                                                "digit")
    assert words in sentence and "ranked by its label quality" in sentence

"""bench/test_noise.py's bookkeeping on hand-made arrays: the rankings' direction, the flags' precision and recall,
the AP over the digits the ensemble reads as labelled, and the mean over draws then over runs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not the package

from ambiguous_digits import audit  # noqa: E402
from bench import test_noise as tn  # noqa: E402


def confident_members(labels: np.ndarray, members: int = 3, p: float = 0.97, seed: int = 0) -> np.ndarray:
    """(M, N, 10) probabilities: every member reads each digit as its label with probability about p."""
    rng = np.random.default_rng(seed)
    probs = np.full((members, len(labels), 10), (1 - p) / 9)
    probs[:, np.arange(len(labels)), labels] = p
    probs += rng.uniform(0, 1e-3, probs.shape)
    return probs / probs.sum(axis=2, keepdims=True)


def test_every_ranking_puts_a_label_the_members_contradict_first():
    labels = np.arange(50) % 10
    probs = confident_members(labels)
    noisy = labels.copy()
    noisy[7] = (labels[7] + 1) % 10
    table = audit.label_issue_table(noisy, tn.ensemble_mean(probs))
    for name, s in tn.rankings(probs, noisy, table).items():
        assert np.argmax(s) == 7, name


def test_flag_score_counts_hits_and_an_empty_flag_set():
    flagged = np.array([True, True, False, True, False])
    assert tn.flag_score(flagged, np.array([0, 2])) == {"precision": 1 / 3, "recall": 0.5, "flagged": 3}
    assert tn.flag_score(np.zeros(5, bool), np.array([1]))["precision"] == 0


def test_ap_read_leaves_out_the_digits_the_ensemble_misreads():
    suspicion = np.array([0.9, 0.8, 0.1, 0.2])  # digit 0: a real error nobody planted, ranked first
    flipped = np.array([1])
    read = np.array([False, True, True, True])
    s = tn.read_score(suspicion, flipped, read)
    assert s["ap"] == pytest.approx(0.5) and s["ap_read"] == 1.0


def test_ap_read_is_not_a_number_where_no_flipped_digit_is_read_as_labelled():
    suspicion, flipped = np.array([0.9, 0.8, 0.1]), np.array([0])
    for read in (np.array([False, True, True]), np.zeros(3, bool)):  # no flipped digit read; no digit read at all
        assert np.isnan(tn.read_score(suspicion, flipped, read)["ap_read"])
    rows = [{"model": "blend", "rate": 0.01, "draw": d, "flipped": 1, "read_as_label": 0.0,
             "scores": {"run_audit": {"ap": 1.0, "recall_at_k": 1.0, "ap_read": ap_read}},
             "flags": {"precision": 1.0, "recall": 1.0, "flagged": 1}} for d, ap_read in enumerate((np.nan, 0.5))]
    summary = tn.summarise([rows, rows[:1]])  # run 0: one draw has an ap_read; run 1: none has
    mean, spread = summary[("blend", 0.01)]["run_audit"]["ap_read"]
    assert mean == 0.5 and np.isnan(spread)  # the mean of what there is; no spread from one run of two
    assert "| blend | 0.01 | 1.000 (n/a) |" in tn.table_md(tn.summarise([rows[:1]]), 1)
    assert json.loads(json.dumps(tn.as_json(rows), allow_nan=False))[0]["scores"]["run_audit"]["ap_read"] is None


def test_one_run_finds_planted_flips_and_summarise_averages_draws_then_runs():
    labels = np.arange(2000) % 10
    per_run = [tn.one_run(confident_members(labels, seed=s), labels, s, [0.01], 2, ["uniform", "pairs"], [])
               for s in (0, 1)]
    assert all(len(rows) == 4 and all(r["flipped"] == 20 for r in rows) for rows in per_run)  # no review row
    summary = tn.summarise(per_run)
    assert set(summary) == {("uniform", 0.01), ("pairs", 0.01)}
    for v in summary.values():
        assert v["run_audit"]["ap"] == (1.0, 0.0) and v["run_audit"]["ap_read"][0] == 1.0
        assert v["flags"]["precision"][0] == 1.0 and v["flags"]["recall"][0] > 0.8  # cleanlab prunes a few
    rows = per_run[0]
    rows[0]["scores"]["run_audit"]["ap"], rows[1]["scores"]["run_audit"]["ap"] = 0.2, 0.4  # run 0, uniform: mean 0.3
    mean, std = tn.summarise(per_run)[("uniform", 0.01)]["run_audit"]["ap"]
    assert mean == pytest.approx((0.3 + 1.0) / 2) and std == pytest.approx(np.std([0.3, 1.0], ddof=1))
    assert "run_audit" in tn.table_md(summary, 2) and "1.000 ± 0.000" in tn.table_md(summary, 2)
    assert "±" not in tn.table_md(tn.summarise(per_run[:1]), 1)  # one run: no spread to show

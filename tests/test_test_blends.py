"""bench/test_blends.py's bookkeeping on hand-made arrays: which digits are blended, with what, in what share,
and the rankings' direction on a blend the members split over."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not the package

from bench import test_blends as tb  # noqa: E402
from bench import test_noise as tn  # noqa: E402
from tests.test_test_noise import confident_members  # noqa: E402


def test_blend_mixes_each_chosen_digit_with_an_unchosen_digit_of_its_partner_class():
    labels = np.arange(300) % 10
    partner = (labels + 3) % 10
    x = np.zeros((300, 28, 28), dtype=np.uint8)
    x[:, 0, 0] = 250  # every digit: one pixel alike, one apart
    x[:, 0, 1] = np.where(labels % 2 == 0, 200, 0)  # the partner is 3 classes on: the other parity, the other value
    mixed, pos, others = tb.blend(x, labels, partner, 0.5, np.random.default_rng(0))  # half: partners hard to find
    assert len(pos) == 150 and np.all(np.diff(pos) > 0) and mixed.shape == (150, 28, 28) and mixed.dtype == np.uint8
    assert np.array_equal(labels[others], partner[pos]) and not np.isin(others, pos).any()
    assert np.all(mixed[:, 0, 0] == 250)  # a blend of equal pixels is that pixel
    share = np.where(labels[pos] % 2 == 0, mixed[:, 0, 1] / 200, 1 - mixed[:, 0, 1] / 200)
    assert np.all(share >= tb.ALPHA[0] - 0.01) and np.all(share <= tb.ALPHA[1] + 0.01)
    assert share.std() > 0.03  # drawn, not one share for all
    again = tb.blend(x, labels, partner, 0.5, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip((mixed, pos, others), again))  # seeded


def test_the_other_class_is_the_most_likely_one_but_the_label_even_for_a_misread_digit():
    mean = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]])
    labels = np.array([0, 0, 1])  # digit 2 is misread: its most likely class other than 1 is 2, its top class
    assert tb.other_class(mean, labels).tolist() == [1, 2, 2]


def test_blend_with_no_digit_of_the_other_class_left_says_so():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"no digit labelled 1 is left to blend digit \d with"):
        tb.blend(np.zeros((4, 28, 28), np.uint8), labels, np.array([1, 1, 1, 1]), 0.99, np.random.default_rng(0))


def test_blend_takes_at_least_one_digit():
    labels = np.arange(20) % 2
    _, pos, _ = tb.blend(np.zeros((20, 28, 28), np.uint8), labels, 1 - labels, 0.001, np.random.default_rng(1))
    assert len(pos) == 1


def test_rankings_put_a_digit_the_members_split_over_first():
    labels = np.arange(50) % 10
    probs = confident_members(labels)
    probs[:, 7] = 0.0
    probs[:, 7, labels[7]], probs[:, 7, (labels[7] + 1) % 10] = 0.55, 0.45  # read as labelled, barely
    pct = np.linspace(0, 90, 50)
    pct[7] = 99.9
    found, table = tb.rankings(probs, labels, pct)
    assert {"run_audit", "entropy", "unfamiliarity", "run_audit+entropy", "run_audit+unfamiliarity"} <= set(found)
    for name, s in found.items():
        assert np.argmax(s) == 7, name
    assert len(table["label_quality"]) == 50
    assert found["unfamiliarity"] is pct  # the percentile as given: HIGHER = less familiar
    assert found["run_audit+unfamiliarity"][7] == pytest.approx(1.0)


def test_the_benchmark_runs_on_a_tiny_run_and_writes_its_rows(report_run, mnist_dir, tmp_path, capsys):
    out = tmp_path / "blends.json"
    summary = tb.main([str(report_run), "--rates", "0.05", "--draws", "2", "--data-dir", str(mnist_dir),
                       "--out", str(out)])
    rows = json.loads(out.read_text())["rows"][0]
    assert [r["draw"] for r in rows] == [0, 1] and all(r["flipped"] == 15 for r in rows)  # 5% of 300; no review
    assert all(r["read_as_label"] < 1 for r in rows)  # the blends, scored where they were put, are read otherwise
    assert set(summary) == {("blend", 0.05)} and 0 < summary[("blend", 0.05)]["run_audit"]["ap"][0] <= 1
    assert "of the blends as their given label" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_blends_scores_land_in_their_own_rows(report_run, mnist_dir, monkeypatch):
    labels = tn.load(report_run)[1]
    real_see, real_blend, chosen = tb.predict.see, tb.blend, []

    def blend(*args, **kwargs):
        made = real_blend(*args, **kwargs)
        chosen.append(made[1])
        return made

    def see(ensemble, familiar, digits):  # every blend read, by every member, as surely not its label
        probs, unfamiliar = real_see(ensemble, familiar, digits)
        if not chosen:  # the run's own 300 digits
            return probs, unfamiliar
        sure = np.zeros_like(probs)
        sure[:, np.arange(len(digits)), (labels[chosen[-1]] + 1) % 10] = 1.0
        return sure, unfamiliar._replace(pct=np.full(len(digits), 1e3))  # above any real percentile

    monkeypatch.setattr(tb, "blend", blend)
    monkeypatch.setattr(tb.predict, "see", see)
    rows = tb.one_run(report_run, [0.05], 1, "cpu", mnist_dir)
    found = rows[0]["scores"]
    assert len(chosen[0]) == 15 and rows[0]["read_as_label"] == 0.0
    assert np.isnan(found["run_audit"]["ap_read"])  # no blend read as labelled: no AP over those, not an AP of 0
    for name in ("run_audit", "self_confidence", "unfamiliarity"):  # first only if scored in their own rows
        assert found[name]["recall_at_k"] == 1.0, name


@pytest.mark.parametrize("flag", [["--draws", "0"], ["--rates", "0.01,1.5"], ["--rates", "0.01,x"]])
def test_bad_flags_are_refused_in_one_line(flag, capsys):
    with pytest.raises(SystemExit):
        tb.main(["some_run", *flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert flag[0] in err[-1] and not any("Traceback" in line for line in err)  # argparse: usage, then one line

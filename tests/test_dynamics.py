"""Training dynamics (cartography, forgetting, AUM) and the run's cross-fitted audits."""

import json

import numpy as np
import pytest

from ambiguous_digits import cli, dynamics, members, outputs
from ambiguous_digits.config import Recipe
import torch
from ambiguous_digits.train import Dynamics, Precision, Runtime, train


def _values(prob, margin):
    return np.stack([np.asarray(prob, float), np.asarray(margin, float)], axis=1)[:, :, None]


def test_member_dynamics_of_a_hand_made_record():
    # 4 epochs of one digit: learnt, forgotten, learnt again.
    d = dynamics.member_dynamics(_values([0.2, 0.8, 0.4, 0.9], [-1.0, 2.0, -0.5, 3.0]))
    assert d["confidence"][0] == pytest.approx(0.575)
    assert d["variability"][0] == pytest.approx(np.std([0.2, 0.8, 0.4, 0.9]))
    assert d["correctness"][0] == pytest.approx(0.5)
    assert d["forgetting"][0] == 1
    assert d["aum"][0] == pytest.approx(0.875)


def test_a_digit_never_learnt_counts_as_forgotten_in_every_epoch():
    d = dynamics.member_dynamics(np.concatenate([_values([0.1, 0.2, 0.1], [-1.0, -2.0, -1.0]),
                                                 _values([0.9, 0.1, 0.9], [1.0, -1.0, 1.0])], axis=2))
    assert list(d["forgetting"]) == [3, 1]


def test_an_epoch_sat_out_is_left_out_of_every_score():
    d = dynamics.member_dynamics(_values([0.5, np.nan, 0.7], [1.0, np.nan, 2.0]))
    assert d["confidence"][0] == pytest.approx(0.6)
    assert d["aum"][0] == pytest.approx(1.5)
    assert d["forgetting"][0] == 0


def test_pool_averages_over_the_members_that_trained_each_digit():
    one = _values([1.0, 1.0], [4.0, 4.0]).repeat(2, axis=2)  # digits 0 and 1
    two = _values([0.0, 0.0], [-2.0, -2.0])  # digit 1 only
    table = dynamics.dynamics_table([(np.array([0, 1]), one), (np.array([1]), two)], np.array([3, 5]))
    assert list(table["members_trained"]) == [1, 2]
    assert table["aum"] == pytest.approx([4.0, 1.0])
    assert table["confidence"] == pytest.approx([1.0, 0.5])
    assert list(table["region"]) == ["easy to learn", "easy to learn"]
    with pytest.raises(ValueError, match="1 training digit"):
        dynamics.pool([(np.array([0]), one[:, :, :1])], 2)


def test_the_training_audit_ranks_by_confidence_with_ties_by_quality():
    from ambiguous_digits.commands.crossfit import rank_by_training
    table = {"index": np.arange(4), "label_quality": np.array([0.9, 0.1, 0.5, 0.2])}
    rank_by_training(table, {"confidence": np.array([0.3, 0.9, 0.3, 0.1]), "aum": np.zeros(4)})
    assert list(table["rank"]) == [3, 4, 2, 1]


def test_a_member_that_never_saw_a_digit_does_not_count_for_it():
    never = np.full((1, 2, 2), np.nan)
    never[0, :, 0] = [0.9, 1.0]  # digit 1 sat out this member's only epoch
    table = dynamics.pool([(np.array([0, 1]), never), (np.array([1]), _values([0.5], [0.5]))], 2)
    assert list(table["members_trained"]) == [1, 1] and table["confidence"] == pytest.approx([0.9, 0.5])


def test_forgetting_skips_an_epoch_sat_out():
    d = dynamics.member_dynamics(_values([0.9, np.nan, 0.1, 0.9], [1.0, np.nan, -1.0, 1.0]))
    assert d["forgetting"][0] == 1  # won, (sat out), lost: forgotten once


def test_more_cross_fitted_members_than_training_digits_is_one_line_naming_members(tmp_path, mnist_dir, capsys):
    argv = ["run", "--out", str(tmp_path / "r"), "--data-dir", str(mnist_dir), "--train-limit", "3", "--members",
            "4", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--members: 4 cross-fitted members" in err and "only 3" in err
    assert not (tmp_path / "r").exists()


def test_regions_follow_the_two_thresholds():
    conf = np.array([0.95, 0.6, 0.2, 0.3])
    var = np.array([0.05, 0.3, 0.05, 0.25])
    assert list(dynamics.regions(conf, var)) == ["easy to learn", "ambiguous", "hard to learn", "ambiguous"]


def test_a_flipped_label_has_a_lower_aum_than_its_clean_twin(mnist):
    """The same 400 real digits trained twice, once with 8 labels flipped: every flipped digit's AUM is lower than
    the same digit's with its true label."""
    x, y = mnist.x_train[:400], mnist.y_train[:400].astype(np.int64)
    flipped = np.arange(0, 400, 50)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 10
    recipe = Recipe(epochs=8, widths=(16, 32), members=1, batch_size=32, precision="fp32")
    rt = Runtime(torch.device("cpu"), Precision(False))
    aum = {}
    for name, labels in (("clean", y), ("noisy", noisy)):
        record = Dynamics(recipe.epochs, len(labels))
        train(x, labels, recipe, seed=0, rt=rt, num_classes=10, dynamics=record)
        aum[name] = dynamics.member_dynamics(record.numpy())["aum"]
    assert (aum["noisy"][flipped] < aum["clean"][flipped]).all()
    assert np.median(aum["noisy"][flipped]) < 0 < np.median(aum["clean"])


def test_each_training_digits_out_of_sample_probability_comes_from_a_member_that_never_saw_it(
        tmp_path, mnist_dir, mnist, monkeypatch):
    seen = []
    real_train = members.train

    def spy(images, labels, *a, **kw):
        seen.append(images.copy())
        return real_train(images, labels, *a, **kw)
    monkeypatch.setattr(members, "train", spy)
    out = tmp_path / "run"
    assert cli.main(["run", "--out", str(out), "--data-dir", str(mnist_dir), "--train-limit", "300", "--test-limit",
                     "100", "--members", "3", "--epochs", "1", "--widths", "8,16", "--quiet", "--threads", "1"]) == 0
    with np.load(out / "cv_probs_train.npz") as z:
        folds, oos = z["folds"], z["probs"]
    x = mnist.x_train[:300]
    assert sorted(np.bincount(folds)) == [100, 100, 100]
    for m in range(3):
        trained_on = {im.tobytes() for im in seen[m]}
        held = np.flatnonzero(folds == m)
        assert len(seen[m]) == 200 and not any(x[i].tobytes() in trained_on for i in held)
        with np.load(out / f"members/member-{m}.npz") as z:
            assert np.array_equal(z["holdout_probs"], oos[held])  # from member m, which never saw them
            assert z["dynamics"].shape == (1, 2, 200)
    summary = json.loads((out / "audit_train.json").read_text())
    assert summary["method"] == "cross-fit" and summary["folds"] == 3 and summary["digits"] == 300


def test_the_default_run_writes_both_audits_and_the_dynamics(report_run):
    """The report's tiny run (2 members, cross-fitted by default): every analysis output, row i = digit i."""
    table = outputs.read_table(report_run / "train_dynamics.csv")
    assert np.array_equal(table["index"], np.arange(600))
    assert set(table) >= {"label", "confidence", "variability", "correctness", "forgetting", "aum", "region"}
    assert (table["members_trained"] == 1).all()  # two members: each digit trained by the other one
    for name in ("label_issues.csv", "train_label_issues.csv", "data_map.png", "cv_probs_test.npz"):
        assert (report_run / name).is_file(), name
    issues = outputs.read_table(report_run / "train_label_issues.csv")
    order = np.argsort(issues["rank"])
    assert np.array_equal(issues["confidence"], table["confidence"])  # the training audit ranks by it
    assert (np.diff(issues["confidence"][order]) >= 0).all()
    assert json.loads((report_run / "audit_train.json").read_text())["ranked_by"].startswith("confidence")
    summary = json.loads((report_run / "summary.json").read_text())
    assert summary["cross_fit"]["folds"] == 2
    assert {"audits", "dynamics"} <= set(summary["seconds"])
    html = (report_run / "report.html").read_text()
    assert 'id="data-map"' in html


def test_no_cross_fit_trains_every_member_on_every_digit(called, tmp_path):
    recipe = called("run", "--out", tmp_path / "r", "--no-cross-fit")["recipe"]
    assert recipe.cross_fit is False and recipe.holdout_folds == 0
    assert Recipe(members=1).holdout_folds == 0 and Recipe().holdout_folds == 4


def test_a_config_from_before_cross_fitting_reads_as_not_cross_fitted():
    old = Recipe().to_json()
    del old["cross_fit"]
    assert Recipe.from_json(old).cross_fit is False

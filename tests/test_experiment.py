"""`experiment`: the variants on a tiny slice of the real MNIST, the leakage guard, the numbers, the flags."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from ambiguous_digits import cli, experiment, files, manifest, rundir, validate
from ambiguous_digits.config import ExperimentPlan, Invocation, Recipe, RunOutputs
from ambiguous_digits.experiment import VARIANTS, LeakageError
from ambiguous_digits.train import Runtime, augment, resolve_precision, to_tensor, train

# 2,000 test digits hold three of the human-confirmed label errors (947, 1621, 1901).
COMMON = ["--data-dir", "{data}", "--train-limit", "600", "--test-limit", "2000", "--widths", "4,8,8",
          "--threads", "1", "--quiet"]
EXPERIMENT = ["--epochs", "1", "--seeds", "1", "--emphasis-top", "40", "--emphasis-epochs", "1"]


def _argv(command, out, data_dir, *extra):
    return [command, "--out", str(out), *(a.format(data=data_dir) for a in COMMON), *extra]


@pytest.fixture(scope="module")
def prerequisites(tmp_path_factory, mnist_dir):
    """A finished tiny run with its training-set audit: what `experiment` needs."""
    out = tmp_path_factory.mktemp("experiment") / "run"
    assert cli.main(_argv("run", out, mnist_dir, "--members", "2", "--epochs", "1")) == 0
    assert cli.main(_argv("audit", out, mnist_dir, "--split", "train", "--folds", "2", "--epochs", "1")) == 0
    return out


@pytest.fixture(scope="module")
def tiny_experiment(prerequisites, tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("experiment-done") / "run"
    shutil.copytree(prerequisites, out)
    assert cli.main(_argv("experiment", out, mnist_dir, *EXPERIMENT)) == 0
    return out


# ---------------------------------------------------------------------------
# The runner, end to end
# ---------------------------------------------------------------------------
def test_experiment_json_is_well_formed(tiny_experiment, mnist):
    r = json.loads((tiny_experiment / "experiment.json").read_text())
    assert list(r["variants"]) == [*VARIANTS, experiment.ENSEMBLE]
    assert r["best_variant"] in VARIANTS and r["variants"]["ensemble"]["of"] == r["best_variant"]
    assert "leakage" in r["leakage"] and r["label_errors"] == [947, 1621, 1901]
    for name, v in r["variants"].items():
        assert len(v["per_seed"]) == 1, name
        for m in v["per_seed"]:
            assert m["accuracy"] == pytest.approx(1 - m["errors"] / 2000)
            assert 0 <= m["top_ambiguous_correct"] <= 10 and m["nll"] > 0 and 0 <= m["ece"] <= 1
            assert 0 <= m["accuracy_without_label_errors"] <= 1
        assert v["accuracy"] == {"mean": v["per_seed"][0]["accuracy"], "std": 0.0}
    assert len(r["baseline_top_ambiguous"]) == 10 and r["emphasis"]["digits"] == 40
    assert r["seeds"] == [{"first_pass": a, "second_pass": b} for a, b in ExperimentPlan(seeds=1).pairs(0)]
    assert r["impact"]["test_digits"] == 2000 and r["impact"]["removed"] == 3


def test_saved_probabilities_reproduce_the_reported_numbers(tiny_experiment, mnist):
    r = json.loads((tiny_experiment / "experiment.json").read_text())
    with np.load(tiny_experiment / rundir.EXPERIMENT_PROBS_FILE) as z:
        probs = {name: z[name] for name in VARIANTS}
        np.testing.assert_array_equal(z["labels"], mnist.y_test[:2000])
    for name, p in probs.items():
        assert p.shape == (1, 2000, 10)
        assert r["variants"][name]["per_seed"][0]["errors"] == int((p[0].argmax(1) != mnist.y_test[:2000]).sum())
    best = probs[r["best_variant"]].mean(axis=0)
    assert r["variants"]["ensemble"]["errors"]["mean"] == (best.argmax(1) != mnist.y_test[:2000]).sum()


def test_markdown_table_and_report_section(tiny_experiment):
    md = (tiny_experiment / "experiment.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(VARIANTS) + 1  # header, variants, ensemble
    assert "leakage" in md and "Impact" in md
    html = (tiny_experiment / "report.html").read_text()
    assert 'id="experiment-table"' in html and "augmentation + emphasis" in html


def test_an_existing_experiment_is_not_overwritten_without_force(tiny_experiment, mnist_dir, capsys):
    before = {p: p.read_bytes() for p in sorted(tiny_experiment.rglob("*")) if p.is_file()}
    assert cli.main(_argv("experiment", tiny_experiment, mnist_dir, *EXPERIMENT)) == 2
    assert "--force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(tiny_experiment.rglob("*")) if p.is_file()} == before


def test_report_without_experiment_has_no_experiment_section(prerequisites):
    assert 'id="experiment"' not in (prerequisites / "report.html").read_text()


# ---------------------------------------------------------------------------
# Prerequisites and the leakage guard
# ---------------------------------------------------------------------------
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_without_the_training_audit_says_to_run_it(prerequisites, tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(prerequisites, out)
    (out / "cv_probs_train.npz").unlink()
    assert cli.main(_argv("experiment", out, mnist_dir, *EXPERIMENT)) == 2
    assert "audit --split train" in _one_line_error(capsys)
    assert not (out / "experiment.json").exists()


def test_without_a_run_says_to_run_it(tmp_path, mnist_dir, capsys):
    assert cli.main(_argv("experiment", tmp_path, mnist_dir, *EXPERIMENT)) == 2
    assert "ambiguous-digits run" in _one_line_error(capsys)


def test_a_test_audit_passed_off_as_the_training_audit_is_refused(prerequisites, tmp_path, mnist, mnist_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(prerequisites, out)
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=600).astype(np.float32)
    np.savez(out / "cv_probs_train.npz", probs=probs, labels=mnist.y_test[:600])  # the test digits' labels
    manifest.record(out, out / "cv_probs_train.npz")  # listed as complete: the leakage check must catch it
    assert cli.main(_argv("experiment", out, mnist_dir, *EXPERIMENT)) == 2
    assert "not those of the 600 training digits" in _one_line_error(capsys)
    with pytest.raises(LeakageError, match="not those of the 600 training digits"):
        experiment.emphasis_indices("train", probs, mnist.y_test[:600], np.zeros(600, bool), mnist.y_train[:600], 10)


def test_emphasis_refuses_the_test_split():
    probs, labels = np.full((5, 10), 0.1), np.arange(5)
    with pytest.raises(LeakageError, match="leakage"):
        experiment.emphasis_indices("test", probs, labels, np.zeros(5, bool), labels, 2)


def test_oversampling_refuses_positions_outside_the_training_set():
    x, y = np.zeros((5, 28, 28), np.uint8), np.arange(5)
    with pytest.raises(LeakageError, match="outside the 5 training digits"):
        experiment.oversample(x, y, np.array([2, 7]), 3)


def test_emphasis_picks_the_most_ambiguous_and_leaves_out_flagged_labels():
    labels = np.zeros(6, np.int64)
    p_label = np.array([0.9, 0.2, 0.6, 0.1, 0.99, 0.4])  # ambiguity 0.1, 0.8, 0.4, 0.9, 0.01, 0.6
    probs = np.zeros((6, 10))
    probs[:, 0], probs[:, 1] = p_label, 1 - p_label
    flagged = np.array([False, False, False, True, False, False])  # digit 3: a suspected label error
    got = experiment.emphasis_indices("train", probs, labels, flagged, labels, 3)
    np.testing.assert_array_equal(got, [1, 5, 2])


def test_oversampling_repeats_each_emphasised_digit_factor_times():
    x = np.arange(4)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    y = np.arange(4)
    xs, ys = experiment.oversample(x, y, np.array([1, 3]), 4)
    np.testing.assert_array_equal(np.bincount(ys), [1, 4, 1, 4])
    np.testing.assert_array_equal(xs[:, 0, 0], ys)  # every copy keeps its own label


# ---------------------------------------------------------------------------
# The numbers (pure numpy, known answers)
# ---------------------------------------------------------------------------
def _onehot(pred, k=10, p=0.9):
    probs = np.full((len(pred), k), (1 - p) / (k - 1))
    probs[np.arange(len(pred)), pred] = p
    return probs


def test_seed_metrics_known_answer():
    labels = np.array([0, 1, 2, 3, 4])
    probs = _onehot(np.array([0, 1, 9, 3, 9]))  # digits 2 and 4 wrong
    m = experiment.seed_metrics(probs, labels, top=np.array([2, 3]), label_errors=np.array([4]))
    assert m["errors"] == 2 and m["accuracy"] == pytest.approx(0.6)
    assert m["top_ambiguous_correct"] == 1 and m["accuracy_without_label_errors"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-(3 * np.log(0.9) + 2 * np.log(0.1 / 9)) / 5)


def test_summarise_gives_mean_and_std_over_seeds():
    s = experiment.summarise([{"accuracy": 0.99}, {"accuracy": 0.97}])
    assert s["accuracy"]["mean"] == pytest.approx(0.98) and s["accuracy"]["std"] == pytest.approx(0.01)


def test_impact_known_answer():
    labels = np.array([0, 1, 2, 3, 4, 5])
    pred = np.array([0, 7, 2, 3, 9, 8])  # errors at 1, 4, 5
    ranks = np.array([6, 1, 5, 4, 2, 3], float)  # 1 and 4 most ambiguous, then 5
    review = [{"index": 1, "guessed_label": 7, "verdict": "correctable"},
              {"index": 4, "guessed_label": 5, "verdict": "neither"},
              {"index": 2, "guessed_label": 3, "verdict": "correct"},
              {"index": 60, "guessed_label": 3, "verdict": "correctable"}]  # beyond the scored digits
    im = experiment.impact(pred, labels, ranks, review)
    assert im["errors"] == 3 and im["errors_in_top"]["10"] == {"errors": 3, "share": 1.0}
    assert im["relabelled"] == 1 and im["accuracy_relabelled"] == pytest.approx(4 / 6)  # 1 now right
    assert im["removed"] == 2 and im["accuracy_removed"] == pytest.approx(3 / 4)  # 1 and 4 dropped


def test_without_a_human_review_the_notes_claim_no_label_errors(tiny_experiment):
    from ambiguous_digits import experiment_table
    exp = json.loads((tiny_experiment / "experiment.json").read_text())
    assert any("human-confirmed" in line for line in experiment_table.experiment_notes(exp))  # MNIST: reviewed
    labels, pred, ranks = np.array([0, 1, 2]), np.array([0, 2, 2]), np.array([3.0, 1.0, 2.0])
    # MNIST's review exists even when no reviewed error is among the digits scored (--test-limit 900)
    mnist = validate.load_review("mnist")
    sliced = {**exp, "label_errors": [], "top_ambiguous_label_errors": [],
              "impact": experiment.impact(pred, labels, ranks, mnist)}
    text = " ".join(experiment_table.experiment_notes(sliced) + experiment_table.impact_lines(sliced["impact"]))
    assert "No human review" not in text and "human-confirmed" in text
    other = {**sliced, "reviewed": False, "impact": experiment.impact(pred, labels, ranks, [])}
    text = " ".join(experiment_table.experiment_notes(other) + experiment_table.impact_lines(other["impact"]))
    assert "human-confirmed" not in text and "No human review" in text
    assert len(experiment_table.impact_lines(other["impact"])) == 1 and "1 errors" in text


# ---------------------------------------------------------------------------
# Training pieces the experiment adds: a fine-tune from a model, seeds, augmented copies
# ---------------------------------------------------------------------------
def test_fine_tune_starts_from_the_given_model_and_leaves_it_unchanged(mnist):
    recipe = Recipe(epochs=1, widths=(4, 8, 8), lr=1e-12, weight_decay=0.0, augment=False)
    device = torch.device("cpu")
    rt = Runtime(device, resolve_precision("fp32", device))
    x, y = mnist.x_train[:256], mnist.y_train[:256]
    first, _ = train(x, y, recipe, 1, rt, num_classes=10)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    tuned, _ = train(x, y, recipe, 2, rt, num_classes=10, init=first)
    fresh, _ = train(x, y, recipe, 2, rt, num_classes=10)
    weight = "features.0.weight"
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items())
    assert torch.allclose(tuned.state_dict()[weight], before[weight], atol=1e-6)
    assert not torch.allclose(fresh.state_dict()[weight], before[weight], atol=1e-3)


def test_oversampled_copies_are_augmented_differently():
    assert VARIANTS["augmentation_emphasis"].augment  # its second pass trains with augmentation on
    x, y = np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3])
    x[0, 8:20, 12:16] = 255
    xs, ys = experiment.oversample(x, y, np.array([0]), 4)
    copies = np.flatnonzero(ys == 1)  # digit 0 and its three oversampled copies
    assert len(copies) == 4 and all(np.array_equal(xs[i], x[0]) for i in copies)
    out = augment(to_tensor(xs[copies], torch.device("cpu")), torch.Generator().manual_seed(0))
    assert all(not torch.equal(out[0], out[i]) for i in range(1, 4))  # each copy its own transform


# ---------------------------------------------------------------------------
# Flags, and the run's recipe the experiment follows
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0"], "--seeds"),
    (["--emphasis-top", "-3"], "--emphasis-top"),
    (["--emphasis-factor", "1"], "--emphasis-factor: must be at least 2, got 1"),
    (["--emphasis-epochs", "x"], "--emphasis-epochs"),
    # each variant trains one CNN per seed, sets augmentation itself and writes no top-K lists; it runs here
    (["--members", "3"], "unrecognized arguments: --members"),
    (["--no-augment"], "unrecognized arguments: --no-augment"),
    (["--top", "5"], "unrecognized arguments: --top"),
    (["--rankings", "margin"], "unrecognized arguments: --rankings"),
    (["--backend", "ray"], "unrecognized arguments: --backend"),
    (["--ray-address", "head:6379"], "unrecognized arguments: --ray-address"),
    (["--resume", "."], "unrecognized arguments: --resume"),
])
def test_bad_experiment_flags_are_one_line_errors(flags, message, tmp_path, capsys):
    try:
        code = cli.main(["experiment", "--out", str(tmp_path), *flags])
    except SystemExit as e:  # argparse's own type checks exit directly
        code = e.code
    assert code == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "experiment.json").exists()


def test_a_run_on_another_data_set_is_named_before_any_data_are_loaded(tmp_path, capsys):
    files.write_json(tmp_path / "summary.json", {"recipe": {"dataset": "fashion-mnist"}})
    (tmp_path / "scores.csv").write_text("index\n0\n")
    manifest.record(tmp_path, tmp_path / "summary.json", tmp_path / "scores.csv")
    assert cli.main(["experiment", "--out", str(tmp_path), "--data-dir", str(tmp_path / "no-cache")]) == 2
    err = _one_line_error(capsys)
    assert "is on fashion-mnist; pass --dataset fashion-mnist" in err
    assert not (tmp_path / "no-cache").exists()


def test_experiment_defaults_come_from_the_settings(called, tmp_path):
    got = called("experiment", "--out", tmp_path)
    assert got["plan"] == ExperimentPlan() and got["plan"].seeds == 3
    assert got["recipe"] == Recipe(epochs=cli.EXPERIMENT_EPOCHS)  # no run in --out: the defaults, with its epochs
    assert got["recipe"].members == Recipe().members and got["recipe"].augment
    assert got["inv"] == Invocation(out=tmp_path)
    flagged = called("experiment", "--out", tmp_path, "--seeds", "2", "--emphasis-factor", "3", "--quiet")
    assert flagged["plan"] == ExperimentPlan(seeds=2, emphasis_factor=3) and not flagged["inv"].progress


# The run whose recipe `experiment` follows: every field other than the defaults.
RUN = Recipe(seed=3, train_limit=600, test_limit=2000, members=2, epochs=2, batch_size=128, lr=0.1,
             weight_decay=1e-4, widths=(4, 8, 8), hidden=32, augment=False, precision="fp32")


def test_experiment_follows_the_whole_recipe_of_the_run_in_out_with_its_own_epochs(called, tmp_path):
    """The variants train the run's network on its data, limits and seed; only the epochs are the experiment's."""
    rundir.save_run_config(tmp_path, RUN, RunOutputs(), Invocation())
    assert called("experiment", "--out", tmp_path)["recipe"] == dataclasses.replace(RUN, epochs=cli.EXPERIMENT_EPOCHS)


@pytest.mark.parametrize("flags, field, value", [(["--widths", "8,8"], "widths", (8, 8)),
                                                 (["--hidden", "16"], "hidden", 16),
                                                 (["--hidden", "0"], "hidden", 0),
                                                 (["--epochs", "3"], "epochs", 3),
                                                 (["--seed", "0"], "seed", 0),
                                                 (["--test-limit", "900"], "test_limit", 900)])
def test_a_typed_flag_wins_over_the_runs_recipe(called, tmp_path, flags, field, value):
    rundir.save_run_config(tmp_path, RUN, RunOutputs(), Invocation())
    got = called("experiment", "--out", tmp_path, *flags)["recipe"]
    assert got == dataclasses.replace(RUN, **{"epochs": cli.EXPERIMENT_EPOCHS, field: value})


def test_without_a_run_in_out_the_experiment_trains_the_default_network(called, tmp_path):
    rundir.save_run_config(tmp_path, RUN, RunOutputs(), Invocation())
    assert called("experiment", "--out", tmp_path / "none")["recipe"].widths == Recipe().widths
    assert called("experiment", "--out", tmp_path / "none", "--widths", "8,8")["recipe"].widths == (8, 8)


def test_an_unreadable_training_audit_is_named(prerequisites, tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(prerequisites, out)
    (out / "cv_probs_train.npz").write_bytes(b"not an npz")
    assert cli.main(_argv("experiment", out, mnist_dir, *EXPERIMENT)) == 2
    assert str(out / "cv_probs_train.npz") in _one_line_error(capsys)

"""Suspected label errors: the cross-validation split, cleanlab's table, the human-review check."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from ambiguous_digits import audit, cli, data, manifest, rundir, validate
from ambiguous_digits.config import AuditPlan, Invocation, Recipe, RunOutputs
from ambiguous_digits.commands import run as run_command


@pytest.mark.parametrize("n, k", [(10, 2), (10000, 5), (101, 7)])
def test_folds_cover_every_digit_exactly_once_in_near_equal_parts(n, k):
    folds = audit.fold_ids(n, k, seed=0)
    assert folds.shape == (n,) and set(np.unique(folds)) == set(range(k))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, audit.fold_ids(n, k, seed=0))
    assert not np.array_equal(folds, audit.fold_ids(n, k, seed=1))


def test_fold_training_set_never_holds_the_held_out_digits():
    x = np.arange(20).reshape(20, 1)  # each "image" is its own index
    y = np.arange(20) % 10
    extra_x, extra_y = np.full((5, 1), -1), np.zeros(5, int)
    folds = audit.fold_ids(20, 4, seed=0)
    seen_held = []
    for f in range(4):
        x_tr, y_tr = audit.fold_training_set(extra_x, extra_y, x, y, folds, f)
        held = set(np.flatnonzero(folds == f))
        assert held.isdisjoint(set(x_tr[:, 0])) and (x_tr[:5] == -1).all()
        assert len(x_tr) == 5 + 20 - len(held) and len(y_tr) == len(x_tr)
        seen_held += sorted(held)
    assert sorted(seen_held) == list(range(20))


@pytest.mark.parametrize("k", [0, 1, 11])
def test_bad_fold_counts_are_refused(k):
    with pytest.raises(ValueError, match="--folds"):
        audit.fold_ids(10, k, seed=0)


def test_label_issue_table_ranks_the_mislabelled_digit_first():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), labels] = 0.9
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[7] = [0.02, 0.03, 0.95]  # labelled 0, every model says 2
    t = audit.label_issue_table(labels, probs)
    assert list(t) == ["index", "given_label", "suggested_label", "label_quality", "rank", "is_label_issue"]
    assert t["rank"][7] == 1 and t["suggested_label"][7] == 2 and t["is_label_issue"][7] == 1
    assert sorted(t["rank"]) == list(range(1, 61))
    np.testing.assert_array_equal(t["index"], np.arange(60))


def test_review_data_is_the_published_one():
    review = validate.load_review()
    assert len(review) == 100 and len({r["index"] for r in review}) == 100
    errors = validate.review_errors(review)
    assert errors.tolist() == [947, 1621, 1901, 2130, 2462, 2597, 2654, 3520, 3558, 5937, 6651, 6783,
                               8527, 9679, 9729]
    verdicts = [r["verdict"] for r in review if r["verdict"] != "correct"]
    assert (verdicts.count("correctable"), verdicts.count("neither"), verdicts.count("no_majority")) == (10, 3, 2)


def test_review_given_labels_are_the_real_test_labels(mnist):
    for r in validate.load_review():
        assert mnist.y_test[r["index"]] == r["given_label"], r["index"]


def _ranking_with(first: list[int], n=10000):
    """Ranks putting `first` at 1, 2, ... and every other digit after them in index order."""
    ranks = np.zeros(n)
    rest = [i for i in range(n) if i not in set(first)]
    ranks[first] = np.arange(1, len(first) + 1)
    ranks[rest] = np.arange(len(first) + 1, n + 1)
    return ranks


def test_validate_a_perfect_ranking():
    review = validate.load_review()
    v = validate.validate_ranking(_ranking_with(validate.review_errors(review).tolist()), review)
    assert v["errors_in_top_10"] == 10 and v["errors_in_top_20"] == 15 and v["errors_in_top_100"] == 15
    assert v["average_precision"] == pytest.approx(1.0)


def test_validate_a_known_imperfect_ranking():
    review = validate.load_review()
    errors = validate.review_errors(review).tolist()
    correct = [r["index"] for r in review if r["verdict"] == "correct"]
    # Alternate: correct, error, correct, error, ... for the first 30, then the rest.
    first = [d for pair in zip(correct[:15], errors) for d in pair]
    v = validate.validate_ranking(_ranking_with(first), review)
    assert v["errors_in_top_10"] == 5 and v["errors_in_top_20"] == 10 and v["errors_in_top_50"] == 15
    expected_ap = np.mean([(j + 1) / (2 * (j + 1)) for j in range(15)])  # precision 1/2 at every hit
    assert v["average_precision"] == pytest.approx(expected_ap)
    assert v["ranks_of_errors"][947] == 2


def test_validate_refuses_a_ranking_that_is_too_short():
    with pytest.raises(ValueError, match="covers 300 digits"):
        validate.validate_ranking(np.arange(1, 301), validate.load_review())


def test_audit_smoke_on_a_tiny_slice(tmp_path, mnist_dir, capsys):
    out = tmp_path / "audit"
    argv = ["audit", "--out", str(out), "--data-dir", str(mnist_dir), "--train-limit", "400",
            "--test-limit", "90", "--folds", "3", "--epochs", "1", "--widths", "8,16,32", "--quiet"]
    assert cli.main(argv) == 0
    lines = (out / "label_issues.csv").read_text().splitlines()
    assert lines[0] == "index,given_label,suggested_label,label_quality,rank,is_label_issue"
    assert len(lines) == 91
    with np.load(out / "cv_probs_test.npz") as z:
        assert z["probs"].shape == (90, 10) and sorted(np.bincount(z["folds"])) == [30, 30, 30]
    summary = json.loads((out / "audit_test.json").read_text())
    assert len(summary["top"]) == 30 and (out / "top_label_issues.png").is_file()
    config = json.loads((out / "audit_test_config.json").read_text())
    assert set(config) == {"version", "audit_id", "recipe", "audit", "placement"} and "config" not in summary
    assert summary["recipe"] == config["recipe"] and summary["audit"] == config["audit"]
    assert summary["audit_id"] == config["audit_id"] and len(config["audit_id"]) == 32
    assert config["audit"] == {"folds": 3, "split": "test", "top": 30} and config["recipe"]["members"] == 1
    assert config["recipe"]["test_limit"] == 90 and summary["invocation"]["out"] == str(out)
    assert {int(p.stem) for p in (out / "imgs").glob("*.png")} == set(summary["top"])
    before = {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    assert cli.main(argv) == 2 and "--force" in capsys.readouterr().err  # never overwritten silently
    assert {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()} == before


def test_audit_of_the_training_split_writes_its_own_files(tmp_path, mnist_dir):
    out = tmp_path / "audit"
    assert cli.main(["audit", "--split", "train", "--out", str(out), "--data-dir", str(mnist_dir),
                     "--train-limit", "120", "--test-limit", "10", "--folds", "2", "--epochs", "1",
                     "--widths", "4,8,8", "--quiet"]) == 0
    assert len((out / "train_label_issues.csv").read_text().splitlines()) == 121
    assert (out / "imgs" / "train").is_dir() and not (out / "label_issues.csv").exists()


def test_validate_command_on_a_synthetic_run_dir(tmp_path, capsys):
    review = validate.load_review()
    ranks = _ranking_with(validate.review_errors(review).tolist())
    rows = ["index,given_label,suggested_label,label_quality,rank,is_label_issue"]
    rows += [f"{i},0,0,0.5,{int(r)},0" for i, r in enumerate(ranks)]
    (tmp_path / "label_issues.csv").write_text("\n".join(rows) + "\n")
    manifest.record(tmp_path, tmp_path / "label_issues.csv")
    assert cli.main(["validate", str(tmp_path)]) == 0
    v = json.loads((tmp_path / "validation.json").read_text())
    assert v["rankings"]["label_issues"]["errors_in_top_20"] == 15
    assert "15/10" not in capsys.readouterr().out


def test_validate_without_results_says_what_is_missing(tmp_path, capsys):
    manifest.record(tmp_path)  # a run directory with nothing in it yet
    assert cli.main(["validate", str(tmp_path)]) == 2
    assert "label_issues.csv" in capsys.readouterr().err


def test_audit_pools_a_finished_run_over_the_same_test_digits(tmp_path, mnist_dir):
    out = tmp_path / "run"
    common = ["--out", str(out), "--data-dir", str(mnist_dir), "--train-limit", "300", "--test-limit", "60",
              "--epochs", "1", "--widths", "4,8,8", "--quiet"]
    assert cli.main(["run", "--members", "2", *common]) == 0
    (out / "validation.json").write_text("{}")  # as if an earlier audit had been validated
    manifest.record(out, out / "validation.json")
    assert cli.main(["audit", "--folds", "2", *common]) == 0
    assert not manifest.listed(out, "validation.json")  # it scored the earlier ranking, not this one
    summary = json.loads((out / "audit_test.json").read_text())
    assert summary["run_members_pooled"] == 2 and summary["members_per_fold"] == 1
    with np.load(out / "cv_probs_test.npz") as cv, np.load(out / "probs.npz") as run:
        pooled = (cv["probs"] + run["probs"].sum(axis=0)) / 3
    from ambiguous_digits import outputs
    table = outputs.read_table(out / "label_issues.csv")
    np.testing.assert_array_equal(table["suggested_label"], pooled.argmax(axis=1))
    assert (out / "report.html").is_file()


def test_more_folds_than_digits_is_a_one_line_error(tmp_path, mnist_dir, capsys):
    argv = ["audit", "--out", str(tmp_path / "a"), "--data-dir", str(mnist_dir), "--test-limit", "3",
            "--train-limit", "50", "--folds", "5", "--epochs", "1", "--widths", "4,8,8", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--folds: need 2 <= K <= 3 images, got 5" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a" / "label_issues.csv").exists()


def test_validate_names_an_unreadable_table_once(tmp_path, capsys):
    (tmp_path / "label_issues.csv").write_text("index,rank\n0,x\n")
    manifest.record(tmp_path, tmp_path / "label_issues.csv")
    assert cli.main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.count(str(tmp_path / "label_issues.csv")) == 1


def test_audit_refuses_to_join_a_run_on_other_data(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    common = ["--out", str(out), "--train-limit", "300", "--test-limit", "60", "--epochs", "1",
              "--widths", "4,8,8", "--quiet"]
    assert cli.main(["run", "--members", "1", "--data-dir", str(mnist_dir), *common]) == 0
    ds = data.load_mnist(mnist_dir, log=lambda _: None, progress=False)
    other = tmp_path / "other.npz"  # the same shapes, other images: a run's rows would be the wrong images
    np.savez(other, x_train=ds.x_train[:300], y_train=ds.y_train[:300], x_test=255 - ds.x_test[:60],
             y_test=ds.y_test[:60])
    before = manifest.load(out)
    assert cli.main(["audit", "--dataset", f"npz:{other}", "--folds", "2", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ambiguous-digits: error: --dataset:") and "holds a run on mnist" in err and len(err.splitlines()) == 1
    assert manifest.load(out) == before and not (out / "label_issues.csv").exists()


def test_an_audit_of_smaller_data_blames_the_data_not_the_limit_it_inherits(tmp_path, mnist_dir, capsys):
    """The audit inherits the run's --train-limit (300); a data set of 200 training images must be refused as
    other data, not as a --train-limit the user never typed."""
    out = tmp_path / "run"
    common = ["--out", str(out), "--test-limit", "60", "--epochs", "1", "--widths", "4,8,8", "--quiet"]
    assert cli.main(["run", "--members", "1", "--train-limit", "300", "--data-dir", str(mnist_dir), *common]) == 0
    ds = data.load_mnist(mnist_dir, log=lambda _: None, progress=False)
    smaller = tmp_path / "smaller.npz"
    np.savez(smaller, x_train=ds.x_train[:200], y_train=ds.y_train[:200], x_test=ds.x_test[:60],
             y_test=ds.y_test[:60])
    before = manifest.load(out)
    capsys.readouterr()
    assert cli.main(["audit", "--dataset", f"npz:{smaller}", "--folds", "2", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ambiguous-digits: error: --dataset:") and "holds a run on mnist" in err
    assert "--train-limit" not in err and len(err.splitlines()) == 1
    assert manifest.load(out) == before and not (out / "label_issues.csv").exists()


def test_a_limit_beyond_the_runs_own_data_names_the_data_size(tmp_path, mnist_dir, capsys):
    """On the run's own data, a typed --train-limit above its images is refused as that, with the number typed."""
    ds = data.load_mnist(mnist_dir, log=lambda _: None, progress=False)
    own = tmp_path / "own.npz"
    np.savez(own, x_train=ds.x_train[:400], y_train=ds.y_train[:400], x_test=ds.x_test[:60], y_test=ds.y_test[:60])
    out = tmp_path / "run"
    common = ["--out", str(out), "--dataset", f"npz:{own}", "--epochs", "1", "--widths", "4,8,8", "--quiet"]
    assert cli.main(["run", "--members", "2", "--train-limit", "300", *common]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "--split", "train", "--folds", "2", "--train-limit", "500", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--train-limit: npz:{own} has 400 training images, got 500" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--test-limit", "40"], "--test-limit: {out} holds a run of 60 test digits, not this audit's 40"),
    (["--split", "train", "--train-limit", "200"],
     "--train-limit: {out} holds a run of 300 train digits, not this audit's 200"),
])
def test_audit_refuses_to_replace_a_runs_table_with_one_of_other_digits(tmp_path, mnist_dir, capsys, flags,
                                                                        message):
    out = tmp_path / "run"
    common = ["--out", str(out), "--data-dir", str(mnist_dir), "--epochs", "1", "--widths", "4,8,8", "--quiet"]
    assert cli.main(["run", "--members", "2", "--train-limit", "300", "--test-limit", "60", *common]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli.main(["audit", "--folds", "2", *common, *flags]) == 2  # the run's own limits are 300 and 60
    err = capsys.readouterr().err.strip()
    assert message.format(out=out) in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # its tables, manifest, report


def test_audit_refuses_to_join_a_killed_run_of_other_digits(tmp_path, mnist_dir, capsys):
    """A run killed after it claimed its folder has no summary yet: its config's limits say how many digits it holds."""
    ds = data.load_mnist(mnist_dir, log=lambda _: None, progress=False)
    out = tmp_path / "run"
    recipe = Recipe(train_limit=300, test_limit=60, epochs=1, widths=(4, 8, 8), members=2)
    out.mkdir()  # as `run` makes it before claiming it
    run_command.claim(recipe, RunOutputs(), Invocation(out=out, data_dir=mnist_dir), ds, 60)
    def held():  # the run's files; the directory's lock files come and go
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".lock"}
    before = held()
    assert cli.main(["audit", "--folds", "2", "--out", str(out), "--data-dir", str(mnist_dir), "--test-limit", "40",
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--test-limit: {out} holds a run of 60 test digits, not this audit's 40" in err
    assert len(err.splitlines()) == 1 and held() == before and rundir.CONFIG_FILE in before


def test_an_audit_refuses_to_join_the_other_splits_audit_on_other_data(tmp_path, mnist_dir, capsys):
    """A folder holding only a test-set audit: a training-set audit of other data must not join it."""
    out = tmp_path / "audits"
    common = ["--out", str(out), "--train-limit", "300", "--test-limit", "60", "--epochs", "1",
              "--widths", "4,8,8", "--folds", "2", "--quiet"]
    assert cli.main(["audit", "--data-dir", str(mnist_dir), *common]) == 0
    ds = data.load_mnist(mnist_dir, log=lambda _: None, progress=False)
    other = tmp_path / "other.npz"
    np.savez(other, x_train=255 - ds.x_train[:300], y_train=ds.y_train[:300], x_test=ds.x_test[:60],
             y_test=ds.y_test[:60])
    before = manifest.load(out)
    assert cli.main(["audit", "--split", "train", "--dataset", f"npz:{other}", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ambiguous-digits: error: --dataset:") and "holds a test-set audit on mnist" in err
    assert len(err.splitlines()) == 1
    assert manifest.load(out) == before and not (out / "train_label_issues.csv").exists()
    assert cli.main(["audit", "--split", "train", "--data-dir", str(mnist_dir), *common]) == 0  # the same data joins


def test_an_audit_killed_before_its_manifest_leaves_a_directory_it_may_claim_again(tmp_path, monkeypatch, mnist_dir):
    out = tmp_path / "a"
    argv = ["audit", "--out", str(out), "--data-dir", str(mnist_dir), "--train-limit", "300", "--test-limit", "60",
            "--epochs", "1", "--widths", "4,8,8", "--folds", "2", "--quiet"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(manifest, "record", killed)
        assert cli.main(argv) == 130  # "interrupted"
    assert (out / "audit_test_config.json").is_file() and not (out / manifest.MANIFEST_FILE).exists()
    assert cli.main(argv) == 0
    assert manifest.listed(out, "label_issues.csv") and not (out / rundir.CLEARING_FILE).exists()


def test_an_interrupted_audit_keeps_the_runs_own_audit_and_says_how_to_resume(report_run, tmp_path, mnist_dir,
                                                                               monkeypatch, capsys):
    """The run's cross-fitted audit (and the validation that scored it) stays listed while a K-fold audit trains;
    only the new audit's own results replace it. Before, Ctrl-C or a full disk mid-training left no test audit."""
    from ambiguous_digits.commands import audit as audit_command

    out = tmp_path / "run"
    shutil.copytree(report_run, out)
    (out / "validation.json").write_text('{"rankings": {}}')  # a stand-in: the review needs all 10,000 digits
    manifest.record(out, out / "validation.json")
    kept = {name: manifest.verified(out, name).read_bytes()
            for name in ("label_issues.csv", "cv_probs_test.npz", "audit_test.json", "validation.json")}
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(audit_command, "cross_val_probs", interrupted)
        assert cli.main(["audit", "--out", str(out), "--data-dir", str(mnist_dir), "--folds", "2", "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == (f"ambiguous-digits: interrupted; `ambiguous-digits audit --resume "
                                               f"{out}` continues it")
    assert {name: manifest.verified(out, name).read_bytes() for name in kept} == kept
    assert json.loads(kept["audit_test.json"])["method"] == "cross-fit"
    # a new audit would drop the folds trained so far: refused without --force, naming --resume
    assert cli.main(["audit", "--out", str(out), "--data-dir", str(mnist_dir), "--folds", "3", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"ambiguous-digits: error: --out: {out} holds a test-set audit in "
                                               f"progress; `ambiguous-digits audit --resume {out}` continues it, "
                                               "--force starts another")
    with monkeypatch.context() as m:  # stopped before it claims the folder: the audit there is not its to resume
        m.setattr(audit_command, "load", interrupted)
        assert cli.main(["audit", "--out", str(out), "--data-dir", str(mnist_dir), "--folds", "3", "--force",
                         "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "ambiguous-digits: interrupted"
    assert cli.main(["audit", "--resume", str(out), "--data-dir", str(mnist_dir), "--quiet"]) == 0
    summary = manifest.listed_json(out, "audit_test.json")
    started = json.loads(manifest.verified(out, "audit_test_config.json").read_text())["audit_id"]
    assert summary["method"] == "k-fold" and summary["audit_id"] == started
    assert not manifest.listed(out, "validation.json")  # it scored the run's audit
    capsys.readouterr()
    assert cli.main(["audit", "--resume", str(out), "--quiet"]) == 0
    assert "holds a finished test-set audit; nothing to resume" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# The flags, and the run's recipe the audit follows
# ---------------------------------------------------------------------------
def test_audit_has_no_rankings_flag(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["audit", "--out", str(out), "--rankings", "margin"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "unrecognized arguments: --rankings margin" in err and len(err.splitlines()) == 1
    assert not out.exists()


# The run whose recipe `audit` follows: every field other than the defaults.
RUN = Recipe(seed=3, train_limit=600, test_limit=300, members=4, epochs=2, batch_size=128, lr=0.1,
             weight_decay=1e-4, widths=(4, 8, 8), hidden=32, augment=False, precision="fp32")


def test_audit_follows_the_whole_recipe_of_the_run_in_out_with_one_member_per_fold(called, tmp_path):
    """The fold CNNs train the run's network on its data, limits and seed, so they pool with its members."""
    rundir.save_run_config(tmp_path, RUN, RunOutputs(), Invocation())
    got = called("audit", "--out", tmp_path)
    assert got["recipe"] == dataclasses.replace(RUN, members=cli.AUDIT_MEMBERS) and cli.AUDIT_MEMBERS == 1
    assert got["plan"] == AuditPlan() and got["inv"] == Invocation(out=tmp_path)


@pytest.mark.parametrize("flags, field, value", [(["--members", "3"], "members", 3),
                                                 (["--widths", "8,8"], "widths", (8, 8)),
                                                 (["--hidden", "16"], "hidden", 16),
                                                 (["--hidden", "0"], "hidden", 0),
                                                 (["--epochs", "5"], "epochs", 5),
                                                 (["--seed", "0"], "seed", 0),
                                                 (["--no-augment"], "augment", False)])
def test_a_typed_flag_wins_over_the_runs_recipe(called, tmp_path, flags, field, value):
    rundir.save_run_config(tmp_path, RUN, RunOutputs(), Invocation())
    got = called("audit", "--out", tmp_path, *flags)["recipe"]
    assert got == dataclasses.replace(RUN, **{"members": cli.AUDIT_MEMBERS, field: value})


@pytest.mark.parametrize("command", ["audit", "experiment"])
@pytest.mark.parametrize("spoil", ["edited", "unreadable"])
def test_a_command_refuses_a_run_whose_config_it_cannot_read_instead_of_guessing_its_network(
        called, tmp_path, capsys, monkeypatch, spoil, command):  # `called`: a command that went on fails at once
    """audit and experiment train the network of the run in --out: a config they cannot read is an error."""
    rundir.save_run_config(tmp_path, RUN, RunOutputs(), Invocation())
    path = tmp_path / rundir.CONFIG_FILE
    if spoil == "edited":
        path.write_text(path.read_text().replace('"epochs": 2', '"epochs": 3'))
        expected = f"{path}: sha256 differs from manifest.json"
    else:
        def denied(run_dir):
            raise PermissionError(13, "Permission denied")  # root reads any file, so chmod cannot show it
        monkeypatch.setattr(rundir, "load_run_config", denied)
        expected = f"{path}: cannot be read (Permission denied)"
    assert cli.main([command, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_without_a_run_in_out_the_audit_trains_the_default_network(called, tmp_path):
    got = called("audit", "--out", tmp_path / "none", "--folds", "3", "--split", "train", "--top", "12")
    assert got["recipe"] == Recipe(members=cli.AUDIT_MEMBERS)
    assert got["plan"] == AuditPlan(folds=3, split="train", top=12)
    assert called("audit", "--out", tmp_path / "none", "--widths", "8,8")["recipe"].widths == (8, 8)


@pytest.mark.parametrize("flags, split", [([], "test"), (["--split", "train"], "train")])
def test_audit_resume_continues_the_split_asked_for_in_the_run_dir(called, tmp_path, flags, split):
    manifest.record(tmp_path)  # a run directory
    got = called("audit", "--resume", tmp_path, *flags, "--quiet")
    assert got["split"] == split and got["inv"] == Invocation(out=tmp_path, progress=False)


@pytest.mark.parametrize("split, hint", [("test", "`audit --out {out}`"), ("train", "`audit --out {out} --split train`")])
def test_resuming_an_audit_that_never_started_says_so(tmp_path, capsys, split, hint):
    (tmp_path / "manifest.json").write_text(json.dumps({"version": manifest.MANIFEST_VERSION, "files": {}}))
    assert cli.main(["audit", "--resume", str(tmp_path), "--split", split]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--resume: {tmp_path} holds no {split}-set audit to resume" in err and hint.format(out=tmp_path) in err

"""End-to-end: the command line (and `commands/run.py` behind `run`) on a tiny slice of the real MNIST."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from ambiguous_digits import cli, config, evidence, manifest, rundir, scores
from ambiguous_digits.commands import run as run_command
from ambiguous_digits.commands.common import Stages
from ambiguous_digits.config import ConfigError, Invocation, Recipe, RunOutputs

TINY = ["--train-limit", "600", "--test-limit", "300", "--epochs", "1", "--widths", "8,16,32", "--members", "2",
        "--top", "5", "--quiet"]
COLUMNS = ["index", "label", "pred", "prob_pred", "prob_label", "margin", "entropy",
           "vote_disagreement", "expected_entropy", "mutual_information", "members_wrong", "ambiguity",
           "rank_confident_wrong", "rank_least_confident", "rank_margin", "rank_entropy", "rank_ambiguity",
           "unfamiliarity", "unfamiliarity_pct", "reasons", "outlier_score", "is_outlier", "map_x", "map_y"]


def _run(out, data_dir, *extra):
    return cli.main(["run", "--out", str(out), "--data-dir", str(data_dir), *TINY, *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("run") / "results"
    assert _run(out, mnist_dir) == 0
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_output_file_is_written(tiny_run):
    for name in ["scores.csv", "summary.json", "config.json", "probs.npz", "models/member-0.pt", "models/member-1.pt",
                 "models/member-0.npz", "models/member-1.npz",
                 "report.html", "embeddings.npz", "neighbours.csv", "duplicates.csv", "health.json",
                 *(f"top_{n}.png" for n in scores.RANKINGS)]:
        assert (tiny_run / name).is_file(), name
    assert not list(tiny_run.glob(".*.tmp")), "temporary files left behind"


def test_scores_csv_has_one_row_per_test_digit_in_canonical_order(tiny_run):
    rows = _rows(tiny_run / "scores.csv")
    assert list(rows[0]) == COLUMNS
    assert [int(r["index"]) for r in rows] == list(range(300))
    wrong = [r for r in rows if r["label"] != r["pred"]]
    assert all(r["rank_confident_wrong"] for r in wrong)
    assert all(not r["rank_confident_wrong"] for r in rows if r["label"] == r["pred"])
    assert sorted(int(r["rank_least_confident"]) for r in rows) == list(range(1, 301))


def test_embeddings_hold_every_digit_of_both_splits_and_neighbours_list_the_top_digits(tiny_run):
    with np.load(tiny_run / "embeddings.npz") as z:
        assert z["train"].shape == (600, 32) and z["test"].shape == (300, 32) and z["train"].dtype == np.float16
        assert z["calibration_index"].tolist() == list(range(600))  # fewer training digits than the sample: all
        assert z["calibration_unfamiliarity"].shape == (600,)
        # its scores look at the quarter turns where few training digits are more familiar turned
        upright = float(z["turned_more_familiar"]) <= evidence.UPRIGHT_SHARE
        assert ("unfamiliarity_turns" in z.files) == upright
        assert not upright or z["unfamiliarity_turns"].tolist() == list(evidence.TURNS)
        # unfamiliarity's own embedding of the training digits, from the 32 x 3 x 3 maps projected on 128 of 288
        assert z["layout_train"].shape == (600, 128) and z["layout_basis"].shape == (288, 128)
        bf16 = bool(z["features_bf16"])  # how predict's torch path embeds a user's image
    assert bf16 == json.loads((tiny_run / "summary.json").read_text())["environment"]["bf16_autocast"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    listed = {i for top in summary["top"].values() for i in top}
    every = _rows(tiny_run / "neighbours.csv")
    rows = [r for r in every if r["role"] == "predicted"]  # the rankings' top digits; the audits' below
    assert {int(r["index"]) for r in rows} == listed and all(r["split"] == "test" for r in rows)
    audited = {}
    for split in ("test", "train"):
        audited[split] = set(json.loads((tiny_run / f"audit_{split}.json").read_text())["top"])
        assert {int(r["index"]) for r in every if r["role"] == "suggested" and r["split"] == split} == audited[split]
    given = {int(r["index"]) for r in every if r["role"] == "given" and r["split"] == "test"}
    assert given == listed | audited["test"]
    rows = [r for r in every if r["split"] == "test" and r["role"] != "suggested"]
    labels = {int(r["index"]): r for r in _rows(tiny_run / "scores.csv")}
    assert all(r["class"] == labels[int(r["index"])]["label" if r["role"] == "given" else "pred"] for r in rows)
    assert all(r["reasons"] for r in labels.values())


def test_labels_in_scores_are_the_real_test_labels(tiny_run, mnist):
    rows = _rows(tiny_run / "scores.csv")
    np.testing.assert_array_equal([int(r["label"]) for r in rows], mnist.y_test[:300])


def test_top_images_are_the_original_pixels_named_by_index(tiny_run, mnist):
    summary = json.loads((tiny_run / "summary.json").read_text())
    named = {int(p.stem) for p in (tiny_run / "imgs").glob("*.png")}
    listed = {i for top in summary["top"].values() for i in top}
    audited = set(json.loads((tiny_run / "audit_test.json").read_text())["top"])  # the run's own test audit
    assert named == listed | audited and len(summary["top"]["least_confident"]) == 5
    for i in listed:
        np.testing.assert_array_equal(np.array(Image.open(tiny_run / "imgs" / f"{i}.png")), mnist.x_test[i])


def test_summary_reports_accuracy_timings_checksums(tiny_run):
    s = json.loads((tiny_run / "summary.json").read_text())
    rows = _rows(tiny_run / "scores.csv")
    errors = sum(r["label"] != r["pred"] for r in rows)
    assert s["test_errors"] == errors and s["test_accuracy"] == pytest.approx(1 - errors / 300)
    assert set(s["seconds"]) >= {"data", "train", "predict", "scores", "write", "total"}
    assert s["data"]["md5"]["t10k-labels-idx1-ubyte"] == "27ae3e4e09519cfbb04c329615203637"
    assert s["environment"]["libraries"]["torch"].startswith("2.13.0")
    config = json.loads((tiny_run / "config.json").read_text())
    assert set(config) == {"version", "run_id", "recipe", "recipe_choice", "outputs", "placement"}
    # a resume keeps them; the recipe holds none
    assert set(config["placement"]) == {"device", "threads", "workers", "member_threads"}
    assert config["run_id"] == s["run_id"] and len(config["run_id"]) == 32
    assert config["recipe"] == s["recipe"] and config["outputs"] == s["outputs"] == {"top": 5, "rankings": list(scores.RANKINGS)}
    assert s["recipe"]["members"] == 2 and s["recipe"]["widths"] == [8, 16, 32] and s["recipe"]["test_limit"] == 300
    assert s["invocation"]["out"] == str(tiny_run) and s["invocation"]["backend"] == "local"


def test_probs_are_saved_row_per_test_digit(tiny_run):
    with np.load(tiny_run / "probs.npz") as z:
        assert z["probs"].shape == (2, 300, 10) and z["probs"].dtype == np.float32
        np.testing.assert_array_equal(z["index"], np.arange(300))


def test_same_seed_gives_the_same_scores(tiny_run, tmp_path, mnist_dir):
    assert _run(tmp_path / "again", mnist_dir) == 0
    assert (tmp_path / "again" / "scores.csv").read_bytes() == (tiny_run / "scores.csv").read_bytes()


def test_existing_run_is_not_overwritten_without_force(tiny_run, mnist_dir, capsys):
    before = (tiny_run / "scores.csv").read_bytes()
    assert _run(tiny_run, mnist_dir) == 2
    assert "--force" in capsys.readouterr().err
    assert (tiny_run / "scores.csv").read_bytes() == before


def _exit_code(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's own refusals
        return e.code


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: must be positive"),
    (["--top", "-3"], "--top: must be positive"),
    (["--batch-size", "x"], "--batch-size: expected a positive integer"),
    (["--precision", "fp8"], "--precision: invalid choice"),
    (["--device", "tpu"], "--device: expected auto, cpu or cuda"),
    (["--lr", "-1"], "--lr: must be positive"),
    (["--weight-decay", "nan"], "--weight-decay: must be >= 0"),
    (["--weight-decay", "inf"], "--weight-decay: must be >= 0 and finite"),
    (["--lr", "inf"], "--lr: must be finite"),
    (["--seed", "-1"], "--seed: must be between 0 and 4294967295, got -1"),
    (["--seed", "4294967296"], "--seed: must be between 0 and 4294967295, got 4294967296"),  # scikit-learn's bound
    (["--widths", "8,8,8,8,8"], "--widths: at most 4 stages"),
    (["--members", "0"], "--members: must be positive"),
    (["--hidden", "-1"], "--hidden: must be 0 or positive, got -1"),
    (["--hidden", "1.5"], "--hidden: expected 0 or a positive integer, got '1.5'"),
    (["--device", "cuda:9"], "--device: cuda:9 asked for, but this machine has"),
])
def test_bad_flags_fail_on_one_line_and_write_nothing(tmp_path, flags, message, capsys):
    out = tmp_path / "out"
    assert _exit_code(["run", "--out", str(out), "--data-dir", str(tmp_path / "cache"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no run directory, no data cache: nothing at all


def test_out_that_is_a_file_is_refused(tmp_path, mnist_dir, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert _run(f, mnist_dir) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "keep me"


@pytest.mark.parametrize("command", ["run", "audit"])
def test_an_out_path_that_is_not_utf8_is_refused_before_training(tmp_path, mnist_dir, capsys, command):
    """A byte that is not UTF-8 in --out (os.fsdecode's surrogate) left the run without its report, after training:
    the page records the path as text."""
    out = tmp_path / "r\udce9s"
    assert _exit_code([command, "--out", str(out), "--data-dir", str(mnist_dir), "--train-limit", "200",
                       "--test-limit", "100", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out: " in err and "\\udce9s is not a UTF-8 path" in err
    assert list(tmp_path.iterdir()) == []


def test_report_is_written_by_run_and_recreated_without_retraining(tiny_run, capsys):
    report = tiny_run / "report.html"
    first = report.read_bytes()
    report.unlink()
    models_before = {p: p.stat().st_mtime_ns for p in (tiny_run / "models").iterdir()}
    assert cli.main(["report", str(tiny_run)]) == 0
    assert report.read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in (tiny_run / "models").iterdir()} == models_before


@pytest.mark.parametrize("command", ["report", "validate"])
def test_commands_on_a_directory_that_does_not_exist_fail_on_one_line(tmp_path, command, capsys):
    assert _exit_code([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


def test_outputs_get_ordinary_file_permissions(tiny_run):
    import os
    mask = os.umask(0)
    os.umask(mask)
    for name in ("scores.csv", "summary.json", "report.html", "probs.npz"):
        assert (tiny_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_force_rerun_drops_results_derived_from_the_earlier_run(tmp_path, mnist_dir):
    out = tmp_path / "run"
    assert _run(out, mnist_dir) == 0
    stale = ["validation.json", "experiment.json", "cv_probs_test.npz"]
    for name in stale:
        (out / name).write_text("from an earlier run")
    (out / "imgs" / "99999.png").write_bytes(b"old")
    assert _run(out, mnist_dir, "--force") == 0
    assert not (out / "validation.json").exists() and not (out / "experiment.json").exists()
    assert (out / "cv_probs_test.npz").read_bytes()[:2] == b"PK"  # written anew by the run's own audit
    assert not (out / "imgs" / "99999.png").exists() and (out / "report.html").is_file()


# ---------------------------------------------------------------------------
# Every flag checked at the edge: one line naming the flag, exit 2, nothing written
# ---------------------------------------------------------------------------
FLAG_CASES = [  # (argv with {out}, {file}, {full}, {plain} placeholders; what the one line must say)
    (["run", "--out", "{out}", "--epochs", "0"], "--epochs: must be positive"),
    (["run", "--out", "{out}", "--epochs", "-2"], "--epochs: must be positive"),
    (["run", "--out", "{out}", "--members", "0"], "--members: must be positive"),
    (["audit", "--out", "{out}", "--members", "-1"], "--members: must be positive"),
    (["run", "--out", "{out}", "--top", "301", "--test-limit", "300"],
     "--top: 301 is more than the 300 test images scored"),
    (["run", "--out", "{out}", "--top", "10001"], "--top: 10001 is more than the 10000 test images scored"),
    (["run", "--out", "{out}", "--test-limit", "10001"], "--test-limit: mnist has 10000 images there, got 10001"),
    (["run", "--out", "{out}", "--rankings", "margin,nope"], "--rankings: unknown ranking 'nope'; choose from"),
    (["audit", "--out", "{out}", "--folds", "1"], "--folds: need at least 2 folds"),
    (["audit", "--out", "{out}", "--folds", "5", "--test-limit", "4"], "--folds: need 2 <= K <= 4 images, got 5"),
    (["run", "--out", "{full}"], "--out: {full} is not empty and is not a run directory (no manifest.json)"),
    (["run", "--out", "{full}", "--force"], "--out: {full} is not empty and is not a run directory"),  # never cleared
    (["audit", "--out", "{full}"], "--out: {full} is not empty and is not a run directory"),
    (["run", "--out", "{out}", "--data-dir", "{full}/notes.txt/x"], "--data-dir: {full}/notes.txt is a file"),
    (["run", "--out", "{file}"], "--out: {file} is a file, not a directory"),
    (["run", "--out", "{file}/sub/run"], "--out: cannot create {file}/sub/run: {file} is a file"),
    (["run", "--out", "{out}", "--data-dir", "{file}"], "--data-dir: {file} is a file, not a directory"),
    (["audit", "--out", "{out}", "--data-dir", "{file}/mnist"], "--data-dir: {file} is a file, not a directory"),
    (["run", "--resume", "{out}"], "argument --resume: {out} does not exist"),
    (["run", "--resume", "{file}"], "argument --resume: {file} is not a directory"),
    (["audit", "--resume", "{plain}"], "argument --resume: {plain} is not a run directory (no manifest.json)"),
    (["report", "{plain}"], "argument run_dir: {plain} is not a run directory"),
    (["validate", "{file}"], "argument run_dir: {file} is not a directory"),
    (["predict", "{file}", "--run", "{plain}"], "argument --run: {plain} is not a run directory"),
    (["predict", "{file}", "--run", "{out}"], "argument --run: {out} does not exist"),
]


def _tree(root):
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, message", FLAG_CASES, ids=[" ".join(a[:1] + a[2:]) for a, _ in FLAG_CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, mnist_dir, argv, message, capsys):
    places = {name: tmp_path / name for name in ("out", "file", "full", "plain")}
    places["file"].write_text("keep me")
    places["full"].mkdir()
    (places["full"] / "notes.txt").write_text("mine")
    places["plain"].mkdir()
    before = _tree(tmp_path)
    argv = [a.format(**places) for a in argv]
    if "--data-dir" not in argv and argv[0] in ("run", "audit"):
        argv += ["--data-dir", str(mnist_dir)]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message.format(**places) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _tree(tmp_path) == before  # nothing created, nothing changed


@pytest.mark.parametrize("variable, cache", [("AMBIGUOUS_DIGITS_DATA", "{file}"), ("XDG_CACHE_HOME", "{file}/c")])
def test_a_data_cache_set_in_the_environment_is_blamed_by_its_variable(tmp_path, monkeypatch, capsys, variable, cache):
    """No --data-dir typed: the message names the variable that chose the cache, not the flag."""
    (tmp_path / "file").write_text("keep me")
    monkeypatch.delenv("AMBIGUOUS_DIGITS_DATA", raising=False)
    monkeypatch.setenv(variable, cache.format(file=tmp_path / "file"))
    assert _exit_code(["run", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ambiguous-digits: error: {variable}: {tmp_path / 'file'} is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_out_is_refused_before_anything_is_written(tmp_path, mnist_dir, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", read_only)
    assert _run(tmp_path / "out", mnist_dir) == 2
    assert "--out: cannot write to" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_rankings_restrict_the_top_k_lists_and_the_gallery(tmp_path, mnist_dir):
    out = tmp_path / "run"
    assert _run(out, mnist_dir, "--rankings", "margin,confident_wrong") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["top"]) == ["margin", "confident_wrong"]
    sheets = sorted(p.name for p in out.glob("top_*.png") if "label_issues" not in p.name)  # the audits' own
    assert sheets == ["top_confident_wrong.png", "top_margin.png"]
    assert list(_rows(out / "scores.csv")[0]) == COLUMNS  # the table still holds every measure


def test_every_output_is_listed_in_the_manifest_with_its_sha256(tiny_run):
    listed = manifest.load(tiny_run)
    locks = {manifest.LOCK_FILE, rundir.LOCK_FILE}
    on_disk = {p.relative_to(tiny_run).as_posix() for p in tiny_run.rglob("*") if p.is_file()} - {"manifest.json", *locks}
    assert set(listed) == on_disk
    assert all(manifest.sha256(tiny_run / name) == entry["sha256"] for name, entry in listed.items())


def test_a_diverging_learning_rate_is_one_line_and_saves_no_member(tmp_path, mnist_dir, capsys):
    out = tmp_path / "out"
    assert _run(out, mnist_dir, "--lr", "1e30", "--members", "1", "--epochs", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr: training diverged (seed" in err[0] and "try a lower --lr than 1e+30" in err[0]
    # no epoch state to resume from, no member, no finished run
    assert not list(out.glob("members/*")) and not (out / "summary.json").exists()


@pytest.mark.parametrize("lr, says", [(None, "--weight-decay: training diverged (seed"),
                                      ("0.5", "--lr: training diverged (seed")])
def test_a_diverging_weight_decay_is_blamed_with_the_flags_typed_above_their_defaults(tmp_path, mnist_dir, capsys,
                                                                                       lr, says):
    """A huge --weight-decay used to be blamed on the default --lr."""
    lrs = [] if lr is None else ["--lr", lr]
    assert _run(tmp_path / "out", mnist_dir, "--weight-decay", "1e30", *lrs, "--members", "1", "--epochs", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    tail = "try a lower --weight-decay than 1e+30" if lr is None else "try a lower --lr than 0.5 or --weight-decay than 1e+30"
    assert len(err) == 1 and says in err[0] and err[0].endswith(tail)


@pytest.mark.parametrize("error, asked", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 480000000000 bytes. Error code 12 (Cannot allocate memory)"), " (480.0 GB asked for)"),
    (MemoryError("Unable to allocate 447. GiB for an array with shape (60000, 1000000) and data type float64"),
     " (447. GiB asked for)"),
    (MemoryError(), ""),
])
def test_running_out_of_memory_is_one_line(monkeypatch, tmp_path, capsys, error, asked):
    def allocate(*args, **kwargs):  # what --epochs 100000000 or --widths 1000000,16 meet in training
        raise error

    (tmp_path / "manifest.json").write_text("{}")  # enough of a run directory for report's argument check
    for command, argv, hint in (("run", ["--out", str(tmp_path / "out")], cli.TRAINING_HINT),
                                ("report", [str(tmp_path)], "")):  # report has no such flags to name
        monkeypatch.setitem(cli.COMMANDS, command, allocate)
        assert cli.main([command, *argv]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"ambiguous-digits: error: out of memory{asked}{hint}"]
    assert "lower --widths, --hidden, --batch-size or --epochs" in cli.TRAINING_HINT


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "run", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["run", "--out", str(tmp_path / "out")])


def _help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_each_default_once_as_it_would_be_typed(capsys):
    text = _help("run", capsys)
    assert "(default: 0)" in text  # --seed
    assert "(default: True)" not in text and "(default: None)" not in text and "(default: (" not in text
    assert text.count("(default:") == text.count("default")  # no help that already names its default gets a second


def test_help_names_every_recipe_default_of_the_knobs_a_recipe_sets(capsys, monkeypatch):
    """--members, --epochs, --widths, --pad-first and --augment: one default per measured recipe (config.RECIPES)."""
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would break "fashion-mnist" at its hyphen
    text = _help("run", capsys)
    assert "(default: the data set's recipe: 8 for mnist, 10 for fashion-mnist)" in text  # --epochs
    assert "(default: the data set's recipe: 16,32,128 for mnist, 24,48,128 for fashion-mnist)" in text  # --widths
    assert "(default: the data set's recipe: 4 for mnist, 6 for fashion-mnist)" in text  # --members
    assert text.count("the data set's recipe:") == len(config.RECIPE_KNOBS)


def test_help_leaves_out_the_flags_a_command_refuses(capsys):
    assert "--rankings" not in _help("audit", capsys)
    text = _help("experiment", capsys)
    for flag in ("--members", "--top", "--rankings", "--no-augment", "--backend", "--resume"):
        assert flag not in text, flag
    assert "(default: 10)" in text  # its own epochs


def test_a_relative_data_dir_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    """So `report` and `validate`, run from another folder, still find the cache the run used."""
    monkeypatch.chdir(tmp_path)
    a = cli.build_parser().parse_args(["run", "--out", "r", "--data-dir", "cache/mnist"])
    assert cli.invocation(a).data_dir == tmp_path / "cache" / "mnist"


# ---------------------------------------------------------------------------
# From the flags to the settings `run` gets
# ---------------------------------------------------------------------------
def test_run_gets_the_typed_flags_and_the_defaults_for_the_rest(called, tmp_path):
    got = called("run", "--out", tmp_path / "r", "--epochs", "3", "--widths", "4,8,8", "--no-augment", "--top", "7",
                 "--rankings", "margin,entropy", "--threads", "2", "--workers", "3", "--quiet")
    assert got["recipe"] == Recipe(epochs=3, widths=(4, 8, 8), augment=False)
    assert got["outputs_"] == RunOutputs(top=7, rankings=("margin", "entropy"))
    assert got["inv"] == Invocation(out=tmp_path / "r", threads=2, workers=3, progress=False)
    assert called("run")["recipe"] == Recipe() and called("run")["outputs_"] == RunOutputs()


def test_a_new_run_never_follows_an_earlier_run_in_its_out(called, tmp_path):
    """Only `audit` and `experiment` follow the run in --out; a new `run` is its own recipe."""
    rundir.save_run_config(tmp_path, Recipe(widths=(4, 8, 8), seed=5), RunOutputs(), Invocation())
    assert called("run", "--out", tmp_path, "--force")["recipe"] == Recipe()


def test_a_hidden_layer_is_a_flag(called):
    assert called("run")["recipe"].hidden == Recipe().hidden == 0
    assert called("run", "--hidden", "64")["recipe"].hidden == 64
    assert called("audit", "--hidden", "64")["recipe"].hidden == 64


def test_resume_continues_in_the_run_dir_with_the_backend_given_now(called, tmp_path):
    manifest.record(tmp_path)  # a run directory
    got = called("run", "--resume", tmp_path, "--data-dir", tmp_path / "cache", "--quiet")
    assert got["inv"] == Invocation(out=tmp_path, data_dir=tmp_path / "cache", progress=False)  # local by default
    assert set(got) == {"inv", "log"}  # the recipe is the run directory's own
    ray = called("run", "--resume", tmp_path, "--backend", "ray", "--ray-address", "head:6379")["inv"]
    assert (ray.backend, ray.ray_address, ray.out) == ("ray", "head:6379", tmp_path)


@pytest.mark.parametrize("command", ["run", "audit"])
@pytest.mark.parametrize("flags, named", [(["--epochs", "5"], "--epochs"), (["--no-augment"], "--no-augment"),
                                          (["--threads", "2", "--seed", "1"], "--threads, --seed")])
def test_resume_names_every_flag_it_drops_on_one_line(called, tmp_path, command, flags, named, capsys):
    manifest.record(tmp_path)
    assert cli.main([command, "--resume", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ambiguous-digits: error: --resume:") and f"saved in {tmp_path}" in err
    assert f"drop {named}" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------
# The run directory a run claims
# ---------------------------------------------------------------------------
def test_force_clears_every_output_of_the_earlier_run_and_nothing_else(tmp_path):
    manifest.record(tmp_path)  # a run directory
    for name in ("scores.csv", "probs.npz", "top_entropy.png", "data.json", "summary.json", "notes.txt",
                 "top_picks.png"):
        (tmp_path / name).write_text("x")
    rundir.clear_earlier_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["notes.txt", "top_picks.png"]


def test_force_recovers_a_run_directory_whose_manifest_a_killed_force_rerun_removed(tmp_path):
    manifest.record(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "7.png").write_bytes(b"half cleared")
    (tmp_path / rundir.CLEARING_FILE).write_text("")  # killed while clearing: the manifest gone, the marker not
    (tmp_path / manifest.MANIFEST_FILE).unlink()
    rundir.check_out_dir(tmp_path, force=True)  # still a run's directory: --force may clear it
    with pytest.raises(ConfigError, match="pass --force"):
        rundir.check_out_dir(tmp_path, force=False)
    with rundir.claiming(tmp_path):
        rundir.clear_earlier_run(tmp_path)
    assert not (tmp_path / "imgs").exists() and not (tmp_path / rundir.CLEARING_FILE).exists()


def test_a_first_run_killed_before_its_manifest_leaves_a_directory_force_may_clear(tmp_path, monkeypatch, mnist):
    """Killed after writing config.json, before manifest.json listed it: still a run's directory."""
    recipe, inv = Recipe(), Invocation(out=tmp_path / "r")
    inv.out.mkdir()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(manifest, "record", killed)
        with pytest.raises(KeyboardInterrupt):
            run_command.claim(recipe, RunOutputs(), inv, mnist, 10_000)
    assert (inv.out / rundir.CONFIG_FILE).is_file() and not (inv.out / manifest.MANIFEST_FILE).exists()
    with pytest.raises(ConfigError, match="pass --force"):
        rundir.check_out_dir(inv.out, force=False)
    run_command.claim(recipe, RunOutputs(), Invocation(out=inv.out, force=True), mnist, 10_000)
    assert manifest.listed(inv.out, rundir.CONFIG_FILE) and rundir.load_run_config(inv.out) == (recipe, RunOutputs())
    assert not (inv.out / rundir.CLEARING_FILE).exists()


def test_a_claim_marker_beside_the_users_own_files_does_not_make_a_run_directory(tmp_path):
    """Files a run never writes beside a killed claim's marker keep the folder the user's."""
    (tmp_path / rundir.CLEARING_FILE).write_text("")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "imgs").mkdir()
    rundir.check_out_dir(tmp_path, force=True)  # only a run's own names: still a half-claimed run directory
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="is not a run directory"):
        rundir.check_out_dir(tmp_path, force=True)


def test_emptying_a_half_claimed_folder_by_hand_takes_the_claim_marker_too(tmp_path):
    """`rm -rf dir/*` removes every name that does not start with a dot: the marker must be one of them,
    or the user's own imgs/ put there later would be a run's to clear."""
    assert not rundir.CLEARING_FILE.startswith(".")
    (tmp_path / rundir.CLEARING_FILE).write_text("")
    with pytest.raises(ConfigError, match="pass --force"):  # a killed claim: a run's directory
        rundir.check_out_dir(tmp_path, force=False)
    for p in tmp_path.glob("*"):  # rm -rf dir/*
        p.unlink()
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ConfigError, match="is not a run directory"):
        rundir.check_out_dir(tmp_path, force=True)


def test_a_folder_emptied_by_hand_is_not_a_run_directory_any_more(tmp_path):
    """`rm -rf dir/*` leaves the hidden .manifest.lock: the folder is the user's again, never cleared."""
    manifest.record(tmp_path)
    (tmp_path / manifest.MANIFEST_FILE).unlink()
    (tmp_path / "models").mkdir()  # the user's own, later
    with pytest.raises(ConfigError, match="is not a run directory"):
        rundir.check_out_dir(tmp_path, force=True)


def test_a_folder_holding_only_hidden_files_counts_as_empty(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"")
    rundir.check_out_dir(tmp_path, force=False)


def test_the_stages_after_training_are_named_on_a_bar_of_their_own(capsys):
    """After the members, a run's stages are silent for up to a minute each: the bar names the one running."""
    timings, said = {}, []
    stages = Stages(["features", "health"], True, said.append)
    with stages("features", timings):
        stages.log("features: a line printed mid-stage")
    with stages("health"):
        pass
    stages.close()
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "after training: 0/2 stages [00:00, features]" in bar and "1/2 stages [00:00, health]" in bar
    assert "2/2 stages [00:00, done]" in bar
    assert said == ["features: a line printed mid-stage"] and set(timings) == {"features"}
    failing = Stages(["features", "health"], True, said.append)
    with pytest.raises(RuntimeError), failing("features"):
        raise RuntimeError("a stage that fails")
    failing.close()
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "0/2 stages [00:00, features]" in bar and "done" not in bar  # the bar ends on the stage that failed

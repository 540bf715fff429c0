"""End-to-end: the command line on a tiny slice of the real MNIST."""

import csv
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ambiguous_digits import cli, scores
from ambiguous_digits.config import Config, ConfigError

TINY = ["--train-limit", "600", "--test-limit", "300", "--epochs", "1", "--widths", "8,16,32", "--members", "2",
        "--top", "5", "--quiet"]
COLUMNS = ["index", "label", "pred", "prob_pred", "prob_label", "margin", "entropy",
           "vote_disagreement", "expected_entropy", "mutual_information", "members_wrong", "ambiguity",
           "rank_confident_wrong", "rank_least_confident", "rank_margin", "rank_entropy", "rank_ambiguity"]


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
                 "report.html",
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


def test_labels_in_scores_are_the_real_test_labels(tiny_run, mnist):
    rows = _rows(tiny_run / "scores.csv")
    np.testing.assert_array_equal([int(r["label"]) for r in rows], mnist.y_test[:300])


def test_top_images_are_the_original_pixels_named_by_index(tiny_run, mnist):
    summary = json.loads((tiny_run / "summary.json").read_text())
    named = {int(p.stem) for p in (tiny_run / "imgs").glob("*.png")}
    listed = {i for top in summary["top"].values() for i in top}
    assert named == listed and len(summary["top"]["least_confident"]) == 5
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
    assert json.loads((tiny_run / "config.json").read_text()) == s["config"]


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
    (["--seed", "-1"], "--seed: must be >= 0"),
    (["--widths", "8,8,8,8,8"], "--widths: at most 4 stages"),
    (["--members", "0"], "--members: must be positive"),
    (["--hidden", "-1"], "--hidden: must be 0 or positive, got -1"),
    (["--hidden", "1.5"], "--hidden: expected 0 or a positive integer, got '1.5'"),
    (["--norm-stats", "fresh"], "--norm-stats: invalid choice: 'fresh'"),
    (["--device", "cuda:9"], "--device: cuda:9 asked for, but this machine has"),
])
def test_bad_flags_fail_on_one_line_and_write_nothing(tmp_path, flags, message, capsys):
    out = tmp_path / "out"
    assert _exit_code(["run", "--out", str(out), "--data-dir", str(tmp_path / "cache"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no run directory, no data cache: nothing at all


def test_audit_refuses_rankings_it_would_ignore(tmp_path, capsys):
    out = tmp_path / "out"
    assert _exit_code(["audit", "--out", str(out), "--rankings", "margin"]) == 2
    assert "--rankings: not used by audit" in capsys.readouterr().err
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, mnist_dir, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert _run(f, mnist_dir) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "keep me"


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
    stale = ["label_issues.csv", "validation.json", "audit_test.json"]
    for name in stale:
        (out / name).write_text("from an earlier run")
    (out / "imgs" / "99999.png").write_bytes(b"old")
    assert _run(out, mnist_dir, "--force") == 0
    assert not any((out / name).exists() for name in stale)
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


def test_unwritable_out_is_refused_before_anything_is_written(tmp_path, mnist_dir, monkeypatch, capsys):
    from ambiguous_digits import pipeline

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pipeline.tempfile, "TemporaryFile", read_only)
    assert _run(tmp_path / "out", mnist_dir) == 2
    assert "--out: cannot write to" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_rankings_restrict_the_top_k_lists_and_the_gallery(tmp_path, mnist_dir):
    out = tmp_path / "run"
    assert _run(out, mnist_dir, "--rankings", "margin,confident_wrong") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["top"]) == ["margin", "confident_wrong"]
    assert sorted(p.name for p in out.glob("top_*.png")) == ["top_confident_wrong.png", "top_margin.png"]
    assert list(_rows(out / "scores.csv")[0]) == COLUMNS  # the table still holds every measure


def test_ranking_names_in_the_config_are_the_scoring_ones():
    from ambiguous_digits.config import RANKING_NAMES
    assert RANKING_NAMES == tuple(scores.RANKINGS)


def test_every_output_is_listed_in_the_manifest_with_its_sha256(tiny_run):
    from ambiguous_digits import manifest
    listed = manifest.load(tiny_run)
    on_disk = {p.relative_to(tiny_run).as_posix() for p in tiny_run.rglob("*") if p.is_file()} - {"manifest.json", manifest.LOCK_FILE}
    assert set(listed) == on_disk
    assert all(manifest.sha256(tiny_run / name) == entry["sha256"] for name, entry in listed.items())


def test_a_diverging_learning_rate_is_one_line_and_saves_no_member(tmp_path, mnist_dir, capsys):
    out = tmp_path / "out"
    assert _run(out, mnist_dir, "--lr", "1e30", "--members", "1", "--epochs", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lr: training diverged (seed" in err[0] and "try a lower --lr than 1e+30" in err[0]
    # no epoch state to resume from, no member, no finished run
    assert not list(out.glob("members/*")) and not (out / "summary.json").exists()


def _help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_each_default_once_as_it_would_be_typed(capsys):
    text = _help("run", capsys)
    assert "(default: 16,32,128)" in text and "(default: 0)" in text
    assert "(default: True)" not in text and "(default: None)" not in text and "(default: (" not in text
    assert text.count("(default:") == text.count("default")  # no help that already names its default gets a second


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
    assert cli.config_from_args(a).data_dir == tmp_path / "cache" / "mnist"


def test_force_clears_every_output_of_the_earlier_run_and_nothing_else(tmp_path):
    from ambiguous_digits import manifest, pipeline
    manifest.record(tmp_path)  # a run directory
    for name in ("scores.csv", "probs.npz", "top_entropy.png", "data.json", "summary.json", "notes.txt",
                 "top_picks.png"):
        (tmp_path / name).write_text("x")
    pipeline._remove_earlier_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["notes.txt", "top_picks.png"]


def test_force_recovers_a_run_directory_whose_manifest_a_killed_force_rerun_removed(tmp_path):
    from ambiguous_digits import manifest, pipeline
    manifest.record(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "7.png").write_bytes(b"half cleared")
    (tmp_path / pipeline.CLEARING_FILE).write_text("")  # killed while clearing: the manifest gone, the marker not
    (tmp_path / manifest.MANIFEST_FILE).unlink()
    pipeline.check_out_dir(tmp_path, force=True)  # still a run's directory: --force may clear it
    with pytest.raises(ConfigError, match="pass --force"):
        pipeline.check_out_dir(tmp_path, force=False)
    with pipeline._claiming(tmp_path):
        pipeline._remove_earlier_run(tmp_path)
    assert not (tmp_path / "imgs").exists() and not (tmp_path / pipeline.CLEARING_FILE).exists()


def test_a_first_run_killed_before_its_manifest_leaves_a_directory_force_may_clear(tmp_path, monkeypatch):
    """Killed after writing config.json, before manifest.json listed it: still a run's directory."""
    from ambiguous_digits import manifest, pipeline
    cfg = Config(out=tmp_path / "r")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(manifest, "record", killed)
        with pytest.raises(KeyboardInterrupt):
            pipeline.start_run(cfg, 10_000)
    assert (cfg.out / pipeline.CONFIG_FILE).is_file() and not (cfg.out / manifest.MANIFEST_FILE).exists()
    with pytest.raises(ConfigError, match="pass --force"):
        pipeline.check_out_dir(cfg.out, force=False)
    pipeline.start_run(dataclasses.replace(cfg, force=True), 10_000)
    assert manifest.listed(cfg.out, pipeline.CONFIG_FILE)
    assert not (cfg.out / pipeline.CLEARING_FILE).exists()


def test_a_claim_marker_beside_the_users_own_files_does_not_make_a_run_directory(tmp_path):
    """Files a run never writes beside a killed claim's marker keep the folder the user's."""
    from ambiguous_digits import pipeline
    (tmp_path / pipeline.CLEARING_FILE).write_text("")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "imgs").mkdir()
    pipeline.check_out_dir(tmp_path, force=True)  # only a run's own names: still a half-claimed run directory
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="is not a run directory"):
        pipeline.check_out_dir(tmp_path, force=True)


def test_emptying_a_half_claimed_folder_by_hand_takes_the_claim_marker_too(tmp_path):
    """`rm -rf dir/*` removes every name that does not start with a dot: the marker must be one of them,
    or the user's own imgs/ put there later would be a run's to clear."""
    from ambiguous_digits import pipeline
    assert not pipeline.CLEARING_FILE.startswith(".")
    (tmp_path / pipeline.CLEARING_FILE).write_text("")
    with pytest.raises(ConfigError, match="pass --force"):  # a killed claim: a run's directory
        pipeline.check_out_dir(tmp_path, force=False)
    for p in tmp_path.glob("*"):  # rm -rf dir/*
        p.unlink()
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ConfigError, match="is not a run directory"):
        pipeline.check_out_dir(tmp_path, force=True)


def test_an_audit_killed_before_its_manifest_leaves_a_directory_it_may_claim_again(tmp_path, monkeypatch, mnist_dir):
    from ambiguous_digits import manifest, pipeline
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
    assert manifest.listed(out, "label_issues.csv") and not (out / pipeline.CLEARING_FILE).exists()


def test_a_folder_emptied_by_hand_is_not_a_run_directory_any_more(tmp_path):
    """`rm -rf dir/*` leaves the hidden .manifest.lock: the folder is the user's again, never cleared."""
    from ambiguous_digits import manifest, pipeline
    manifest.record(tmp_path)
    (tmp_path / manifest.MANIFEST_FILE).unlink()
    (tmp_path / "models").mkdir()  # the user's own, later
    with pytest.raises(ConfigError, match="is not a run directory"):
        pipeline.check_out_dir(tmp_path, force=True)


def test_a_folder_holding_only_hidden_files_counts_as_empty(tmp_path):
    from ambiguous_digits import pipeline
    (tmp_path / ".DS_Store").write_bytes(b"")
    pipeline.check_out_dir(tmp_path, force=False)


def test_a_hidden_layer_is_a_flag_and_a_config_without_it_has_none():
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["run"])).hidden == Config().hidden == 0
    assert cli.config_from_args(parse(["run", "--hidden", "64"])).hidden == 64
    assert cli.config_from_args(parse(["audit", "--hidden", "64"])).hidden == 64
    before = {k: v for k, v in Config().to_json().items() if k != "hidden"}  # a config.json of version 0.3
    assert Config.from_json(before).hidden == 0
    assert Config.from_json(Config(hidden=64).to_json()).hidden == 64
    with pytest.raises(ConfigError, match="--hidden: expected 0"):
        Config.from_json({**before, "hidden": "128"})  # a hand-edited config.json


def test_norm_stats_is_a_flag_of_every_training_command_and_a_config_without_it_kept_the_averages():
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["run"])).norm_stats == Config().norm_stats == "clean"
    for command in ("run", "audit", "experiment"):
        assert cli.config_from_args(parse([command, "--norm-stats", "running"])).norm_stats == "running"
    before = {k: v for k, v in Config().to_json().items() if k != "norm_stats"}  # a config.json of version 0.4
    assert Config.from_json(before).norm_stats == "running"
    with pytest.raises(ConfigError, match="--norm-stats: expected clean or running, got 'yes'"):
        Config.from_json({**before, "norm_stats": "yes"})  # a hand-edited config.json


def test_the_stage_order_is_a_flag_and_a_config_without_it_is_the_earlier_order():
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["run"])).pool_first is True
    assert cli.config_from_args(parse(["run", "--norm-before-pool"])).pool_first is False
    assert cli.config_from_args(parse(["audit", "--norm-before-pool"])).pool_first is False
    cfg = Config(pool_first=False)
    assert Config.from_json(cfg.to_json()) == cfg and Config.from_json(Config().to_json()) == Config()
    before = {k: v for k, v in Config().to_json().items() if k != "pool_first"}  # a config.json of version 0.1
    assert Config.from_json(before).pool_first is False
    for bad in (None, "false", 0):  # a hand-edited config.json: never read as one order or the other
        with pytest.raises(ConfigError, match="pool_first: expected true or false"):
            Config.from_json({**before, "pool_first": bad})

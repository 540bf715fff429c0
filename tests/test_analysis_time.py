"""bench/analysis_time.py: the alternating order, the ratios, the reference's code from git, whole benchmarks of
two stand-in packages, bad flags."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ambiguous_digits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not part of the installed package

from bench import analysis_time  # noqa: E402
from bench.analysis_time import (  # noqa: E402
    REFERENCE, order, parse_args, passed_flags, reference_source, render, summarize,
)


def test_the_order_alternates_between_seeds():
    assert [order(s) for s in (0, 1, 2, 3)] == [("reference", "ours"), ("ours", "reference")] * 2


def _row(seed, ref, ours):
    return {"seed": seed, "reference": {"wall_s": ref, "train_s": ref - 10, "test_accuracy": 0.996},
            "ours": {"wall_s": ours, "train_s": ours - 50, "test_accuracy": 0.9963}}


def test_ratios_are_ours_over_the_reference_with_their_mean_and_sample_std():
    s = summarize([_row(0, 600.0, 540.0), _row(1, 500.0, 550.0), _row(2, 400.0, 600.0)])
    assert s["ratios"] == [0.9, 1.1, 1.5]
    assert s["ratio_mean"] == pytest.approx(3.5 / 3)
    assert s["ratio_std"] == pytest.approx(((0.9 - 3.5 / 3) ** 2 + (1.1 - 3.5 / 3) ** 2 + (1.5 - 3.5 / 3) ** 2) ** 0.5
                                           / 2 ** 0.5)
    assert s["wall_mean_s"] == {"reference": 500.0, "ours": 1690 / 3}
    assert s["met"] is True  # 1.167 <= 1.25
    one = summarize([_row(0, 400.0, 520.0)])
    assert one["met"] is None and one["ratio_std"] == 0.0  # a target is judged on 3 seeds or more
    assert summarize([_row(s, 400.0, 520.0) for s in range(3)])["met"] is False  # 1.3 > 1.25
    assert summarize([_row(s, 400.0, 520.0) for s in range(3)], sliced=True)["met"] is None  # a smoke run


def test_the_table_has_a_row_a_seed_and_the_mean():
    rows = [_row(0, 600.0, 540.0), _row(1, 500.0, 550.0)]
    table = render({"seeds": rows, "summary": summarize(rows)})
    assert table.count("\n") == 4 and "| 0 | 600.0 s (590.0 s) | 540.0 s (490.0 s) | 0.900 |" in table
    assert "**1.000 ± 0.141**" in table


NO_GIT = shutil.which("git") is None or not (REPO / ".git").exists()


def _has(commit: str) -> bool:
    return not NO_GIT and subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                                         capture_output=True).returncode == 0


@pytest.mark.skipif(NO_GIT, reason="needs this repository's git")
def test_the_reference_code_is_the_commit_s_src(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    src = reference_source(head, tmp_path)
    assert src == tmp_path / "src"
    init = (src / "ambiguous_digits" / "__init__.py").read_text()
    assert f'"{ambiguous_digits.__version__}"' in init


@pytest.mark.skipif(not _has(REFERENCE), reason="a clone without 0.7.0's commit")
def test_the_default_reference_is_version_0_7_0(tmp_path):
    assert '"0.7.0"' in (reference_source(REFERENCE, tmp_path) / "ambiguous_digits" / "__init__.py").read_text()


@pytest.mark.skipif(NO_GIT, reason="needs this repository's git")
def test_a_commit_not_in_the_repository_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^--reference 0{40}: not a commit of .* with a src/ folder \(") as e:
        reference_source("0" * 40, tmp_path)
    assert "\n" not in str(e.value)


def test_bad_flags_are_refused(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "file").write_text("")
    new = str(tmp_path / "a")
    for argv, message in ((["--out", str(tmp_path / "full")], "not empty"),
                          (["--out", str(tmp_path / "file")], "not a folder"),
                          (["--out", new, "--seeds", "1", "1"], "distinct non-negative"),
                          (["--out", new, "--seeds", "-1"], "distinct non-negative"),
                          (["--out", new, "--epochs", "0"], "--epochs: must be positive, got 0"),
                          (["--out", new, "--train-limit", "1.5"],
                           "--train-limit: expected a positive integer, got '1.5'"),
                          (["--out", new, "--reference=--output=x"], "expected a commit")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_only_the_given_slice_flags_reach_both_commands(tmp_path):
    a = parse_args(["--out", str(tmp_path / "o"), "--train-limit", "3000", "--epochs", "1"])
    assert passed_flags(a) == ["--train-limit", "3000", "--epochs", "1"]
    assert passed_flags(parse_args(["--out", str(tmp_path / "o")])) == []


# A stand-in package: its `run` logs which side ran which seed, writes a summary, and fails where told to.
STUB_CLI = """
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
out, seed = Path(args[args.index("--out") + 1]), int(args[args.index("--seed") + 1])
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(f"{NAME} {seed} {' '.join(args)}\\n")
if str(seed) == os.environ.get("STUB_FAIL_" + NAME):
    sys.exit("--seed: a stand-in error")
out.mkdir()
(out / "summary.json").write_text(json.dumps({"seconds": {"train": 1.0}, "test_accuracy": 0.99}))
"""


def _stub(root: Path, name: str) -> Path:
    package = root / name / "ambiguous_digits"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(f"NAME = {name!r}\n" + STUB_CLI)
    return root / name


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    monkeypatch.setattr(analysis_time, "OURS", _stub(tmp_path / "stubs", "ours"))
    monkeypatch.setattr(analysis_time, "reference_source", lambda commit, dest: _stub(tmp_path / "stubs", "reference"))
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "log"))
    return tmp_path / "log"


def test_both_commands_run_each_seed_in_alternating_order_and_the_report_is_written(stubs, tmp_path):
    out = tmp_path / "at"
    report = analysis_time.main(["--out", str(out), "--seeds", "0", "1", "2", "--epochs", "1"])
    log = [line.split(" ", 2) for line in stubs.read_text().splitlines()]
    assert [(side, int(seed)) for side, seed, _ in log] == [
        ("reference", 0), ("ours", 0), ("ours", 1), ("reference", 1), ("reference", 2), ("ours", 2)]
    assert all(args.split() == ["run", "--out", str(out / f"{side}_{seed}"), "--quiet", "--seed", seed, "--epochs",
                                "1"] for side, seed, args in log)
    assert json.loads((out / "analysis_time.json").read_text()) == report
    assert len(report["seeds"]) == 3 and report["summary"]["met"] is None  # --epochs 1: not the runs


def test_the_reference_s_code_runs_even_from_a_folder_holding_another_copy(stubs, tmp_path, monkeypatch):
    _stub(tmp_path / "here", "intruder")
    monkeypatch.chdir(tmp_path / "here" / "intruder")  # python -m would find ./ambiguous_digits first without -P
    analysis_time.main(["--out", str(tmp_path / "at"), "--seeds", "0"])
    assert [line.split()[0] for line in stubs.read_text().splitlines()] == ["reference", "ours"]


def test_a_failed_run_is_one_line_naming_it_and_the_finished_seeds_stay_reported(stubs, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setenv("STUB_FAIL_ours", "1")
    out = tmp_path / "at"
    with pytest.raises(SystemExit) as e:
        analysis_time.main(["--out", str(out), "--seeds", "0", "1", "2"])
    assert str(e.value) == f"{out / 'ours_1'}: `run` failed with exit 1 (--seed: a stand-in error)"
    assert "--seed: a stand-in error" in capsys.readouterr().err  # the failed run's own output, shown above
    assert [r["seed"] for r in json.loads((out / "analysis_time.json").read_text())["seeds"]] == [0]

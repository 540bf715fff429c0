"""The run directory's owner: its names, one writer at a time (two real processes), and older runs refused."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ambiguous_digits import cli, manifest, rundir
from ambiguous_digits.config import ConfigError, RANKING_NAMES

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--train-limit", "600", "--test-limit", "200", "--epochs", "1", "--widths", "8,16,32", "--members", "2",
        "--top", "5", "--quiet", "--threads", "1"]
# Holds a run directory's lock in a process of its own until its stdin closes.
HOLDER = ("import sys; from pathlib import Path; from ambiguous_digits import rundir\n"
          "with rundir.locked(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "ambiguous_digits.cli", *args]


@pytest.fixture
def holder(tmp_path):
    """A second process holding tmp_path's lock while the test runs."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_every_audit_split_has_its_own_files():
    names = [n for a in rundir.AUDIT.values() for n in (*a.outputs, a.config, a.data)]
    assert len(names) == len(set(names))
    assert rundir.AUDIT["test"].table == "label_issues.csv" and rundir.AUDIT["train"].images == "imgs/train"


def test_the_earlier_runs_files_include_every_contact_sheet_and_audit_output():
    names = set(rundir._earlier_run_names())
    assert {rundir.sheet_file(r) for r in RANKING_NAMES} <= names
    assert all(set(a.outputs) <= names for a in rundir.AUDIT.values())


def test_a_held_lock_refuses_a_second_writer_in_one_line(tmp_path, holder):
    with pytest.raises(ConfigError, match=r"is being written by another ambiguous-digits command; wait for it"):
        with rundir.locked(tmp_path):
            pass


def test_the_lock_is_free_again_once_its_holder_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.kill()
    proc.wait(timeout=30)
    with rundir.locked(tmp_path):  # the kernel dropped the dead process's lock
        pass


@pytest.mark.parametrize("command", [["report"], ["validate"]])
def test_report_or_validate_while_another_command_writes_is_refused(tmp_path, holder, command, capsys):
    manifest.record(tmp_path)  # a run directory
    assert cli.main([*command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ambiguous-digits: error: RUN_DIR:") and "being written" in err
    assert len(err.splitlines()) == 1


def test_two_real_writers_of_one_run_directory_one_waits_its_turn_and_no_entry_is_lost(tmp_path, mnist_dir):
    """A run in one process; while it trains, an audit of the same directory in another is refused in one line;
    once the run is done, every file it wrote is listed, and the manifest verifies."""
    out, longer = tmp_path / "run", [*TINY, "--train-limit", "6000", "--epochs", "2"]  # seconds to try it meanwhile
    first = subprocess.Popen(_cli("run", "--out", str(out), "--data-dir", str(mnist_dir), *longer), env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "manifest.json").is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    assert first.poll() is None, "the run finished before a second command could try its directory"
    second = subprocess.run(_cli("audit", "--out", str(out), "--data-dir", str(mnist_dir), "--folds", "2",
                                 "--epochs", "1", "--quiet"), env=_env(), capture_output=True, text=True)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and "being written by another ambiguous-digits command" in second.stderr
    listed = manifest.load(out)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    on_disk.remove("manifest.json")  # the list itself
    assert on_disk == set(listed)
    assert all(manifest.verified(out, name) for name in listed)


def test_two_real_processes_recording_at_once_keep_every_manifest_entry(tmp_path):
    code = ("import sys; from pathlib import Path; from ambiguous_digits import manifest\n"
            "d, tag = Path(sys.argv[1]), sys.argv[2]\n"
            "for i in range(60):\n    p = d / f'{tag}-{i}.txt'; p.write_text(tag); manifest.record(d, p)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag], env=_env()) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(manifest.load(tmp_path)) == sorted(f"{t}-{i}.txt" for t in "ab" for i in range(60))


def test_a_run_directory_of_an_earlier_version_is_refused_naming_its_version(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "files": {}}))
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "written by ambiguous-digits 0.6 or earlier" in err and "run again" in err
    assert len(err.splitlines()) == 1


def test_an_unknown_later_format_names_its_writer(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 9, "written_by": "9.0.0", "files": {}}))
    with pytest.raises(ConfigError, match=r"written by ambiguous-digits 9\.0\.0 \(manifest format 9\)"):
        manifest.load(tmp_path)


@pytest.mark.parametrize("body, message", [
    ("{not json", r"unreadable manifest \(Expecting property name"),
    ("[]", r"unreadable manifest \(expected an object with a \"files\" object\)"),
    ('{"version": 2}', r"unreadable manifest \(expected an object with a \"files\" object\)"),
    ('{"version": 2, "files": []}', r"unreadable manifest \(expected an object with a \"files\" object\)"),
    ('{"version": 2, "files": {"a.csv": null}}', r"unreadable manifest \(its entry 'a.csv' has no sha256\)"),
    ('{"files": {}}', r"no manifest format version \(edited, or not written by ambiguous-digits\)"),
])
def test_a_malformed_manifest_is_one_line_naming_what_is_wrong(tmp_path, capsys, body, message):
    (tmp_path / "manifest.json").write_text(body)
    with pytest.raises(ConfigError, match=message):
        manifest.load(tmp_path)
    assert cli.main(["report", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_save_json_writes_and_lists_in_one_call(tmp_path):
    path = rundir.save_json(tmp_path, rundir.SUMMARY_FILE, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert manifest.listed_json(tmp_path, rundir.SUMMARY_FILE) == {"a": 1}


def test_a_config_without_its_recipe_is_one_line(tmp_path):
    rundir.save_json(tmp_path, rundir.CONFIG_FILE, {"epochs": 8})
    with pytest.raises(ConfigError, match=r"config.json: not a config this version can read"):
        rundir.load_run_config(tmp_path)


def test_a_hand_edited_recipe_names_the_config_file(tmp_path):
    from ambiguous_digits.config import Recipe

    bad = {**Recipe().to_json(), "pad_first": 2}
    rundir.save_json(tmp_path, rundir.CONFIG_FILE, {"recipe": bad, "outputs": {"top": 10, "rankings": ["margin"]}})
    with pytest.raises(ConfigError) as e:
        rundir.load_run_config(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / rundir.CONFIG_FILE}: not a config this version can read")
    assert "--pad-first: expected 0 or 1, got 2" in str(e.value) and "\n" not in str(e.value)

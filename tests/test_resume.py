"""Interrupted runs: killed for real, resumed, and compared byte for byte with uninterrupted ones."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ambiguous_digits import cli, manifest, members
from ambiguous_digits.config import ConfigError, Recipe
from ambiguous_digits.train import Runtime, resolve_precision

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Small enough to train in seconds, large enough that a member spends a while in each epoch; one thread, which a
# resume keeps (torch rounds differently on another number of threads).
SMALL = ["--threads", "1", "--train-limit", "2000", "--test-limit", "300", "--members", "2", "--epochs", "3",
         "--widths", "8,16,32", "--precision", "fp32", "--top", "5", "--quiet"]
KILL_AFTER = "members/member-0.epoch-1.pt"  # member 0 has finished its first epoch
POLL_S = 0.02


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "ambiguous_digits.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(_cli("run", "--out", str(out), "--data-dir", str(mnist_dir), *SMALL), env=_env(), check=True,
                   capture_output=True)
    return out


def _kill_mid_training(out: Path, data_dir: Path, *extra: str, flags: list[str] = SMALL) -> dict[int, bytes]:
    """Start a run in a subprocess and SIGKILL it once its first epoch checkpoint is listed as complete; returns
    the processes it had started (local workers), with their command lines, as they were just before the kill."""
    proc = subprocess.Popen(_cli("run", "--out", str(out), "--data-dir", str(data_dir), *flags, *extra), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _listed(out, KILL_AFTER) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    below = {pid: _cmdline(pid) for pid in _descendants(proc.pid)}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    return below


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (Linux's /proc/PID/task/TID/children)."""
    found, todo = set(), [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                new = {int(c) for c in children.read_text().split()} - found
            except OSError:  # the thread ended meanwhile
                continue
            found |= new
            todo += new
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _listed(out: Path, name: str) -> bool:
    return (out / manifest.MANIFEST_FILE).is_file() and manifest.listed(out, name)  # written atomically


def test_a_killed_run_resumes_to_the_same_bytes(uninterrupted, tmp_path, mnist_dir):
    out = tmp_path / "killed"
    _kill_mid_training(out, mnist_dir)
    assert not manifest.listed(out, "summary.json") and not (out / "scores.csv").exists()
    done = subprocess.run(_cli("run", "--resume", str(out), "--quiet"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "member 1/2 (seed" in done.stdout and "resuming after epoch" in done.stdout
    for name in ("scores.csv", "train_dynamics.csv", "train_label_issues.csv", "label_issues.csv", "embeddings.npz"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name  # dynamics kept in the state
    with np.load(out / "probs.npz") as a, np.load(uninterrupted / "probs.npz") as b:
        for key in ("probs", "labels", "index", "seeds"):
            np.testing.assert_array_equal(a[key], b[key])
    assert not list(out.rglob("*.epoch-*.pt")) and not list(out.rglob(".*.tmp"))
    listed = manifest.load(out)
    expected = {"config.json", "scores.csv", "probs.npz", "summary.json", "report.html", "models/member-1.pt",
                "models/member-1.npz"}
    assert expected <= set(listed)
    assert all(manifest.sha256(out / name) == e["sha256"] for name, e in listed.items())


@pytest.mark.skipif(not list(Path("/proc/self/task").glob("*/children")), reason="needs Linux's /proc children")
def test_a_killed_run_with_workers_leaves_none_training_and_resumes_to_the_same_bytes(uninterrupted, tmp_path,
                                                                                       mnist_dir):
    """Each member in a worker process of its own (1 thread each, untyped): the workers end with the driver (none
    writes on into the run directory), and the run resumed with one worker (as after running out of memory) keeps
    each member's one thread, so it equals one trained a member at a time on --threads 1."""
    out = tmp_path / "killed"
    assert SMALL[:2] == ["--threads", "1"]
    below = _kill_mid_training(out, mnist_dir, "--workers", "2", flags=SMALL[2:])  # no --threads
    workers = [pid for pid, cmdline in below.items() if b"spawn_main" in cmdline]
    assert len(workers) == 2  # and multiprocessing's resource tracker
    deadline = time.monotonic() + 30
    while any(map(_alive, below)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, below))
    done = subprocess.run(_cli("run", "--resume", str(out), "--workers", "1"), env=_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming after epoch" in done.stdout and "1 threads" in done.stdout  # one at a time, on 1 thread
    for name in ("scores.csv", "train_dynamics.csv", "train_label_issues.csv", "label_issues.csv"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    with np.load(out / "probs.npz") as a, np.load(uninterrupted / "probs.npz") as b:
        for key in ("probs", "labels", "index", "seeds"):
            np.testing.assert_array_equal(a[key], b[key])
    assert not list(out.rglob("*.epoch-*.pt")) and not list(out.rglob(".*.tmp"))


def test_epoch_checkpoint_continues_training_exactly(mnist):
    """In process: a member stopped after epoch 1 and continued from its saved state equals one never stopped."""
    recipe = Recipe(epochs=2, widths=(4, 8, 8), batch_size=64, precision="fp32")
    x, y, x_eval = mnist.x_train[:300], mnist.y_train[:300], mnist.x_test[:50]
    cpu = torch.device("cpu")
    fp32, states = resolve_precision("fp32", cpu), []
    held = np.arange(300) % 3 == 0  # cross-fitted: the dynamics recorded so far travel in the state
    whole = members.train_member(recipe, 7, x, y, x_eval, 10, Runtime(cpu, fp32, on_epoch=states.append),
                                 held_out=held)
    assert [s["epoch"] for s in states] == [1]
    rest = members.train_member(recipe, 7, x, y, x_eval, 10, Runtime(cpu, fp32), state=states[0], held_out=held)
    np.testing.assert_array_equal(rest.probs, whole.probs)
    np.testing.assert_array_equal(rest.holdout_probs, whole.holdout_probs)
    np.testing.assert_array_equal(rest.dynamics, whole.dynamics)
    assert not np.isnan(whole.dynamics[0]).all() and whole.dynamics.shape == (2, 2, 200)
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in whole.history]


def test_resume_of_a_finished_run_changes_nothing(uninterrupted, capsys):
    before = {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()}
    assert cli.main(["run", "--resume", str(uninterrupted), "--quiet"]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in uninterrupted.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("flags", [["--epochs", "5"], ["--seed", "0"], ["--out", "elsewhere"], ["--force"],
                                   ["--no-augment"], ["--hidden", "16"], ["--threads", "2"]])
def test_resume_refuses_flags_that_would_change_the_result(uninterrupted, flags, capsys):
    assert cli.main(["run", "--resume", str(uninterrupted), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ambiguous-digits: error: --resume:") and flags[0] in err and len(err.splitlines()) == 1


def _copy_run(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _unfinish(run: Path) -> None:
    """Make a finished run look interrupted after its members (the summary never got listed)."""
    manifest.forget(run, "summary.json")


@pytest.mark.parametrize("name, damage", [
    ("members/member-1.npz", lambda b: b[: len(b) // 2]),  # truncated
    ("members/member-0.npz", lambda b: b[:-1] + bytes([b[-1] ^ 1])),  # one bit flipped
    ("config.json", lambda b: b.replace(b'"epochs": 3', b'"epochs": 9')),  # edited
])
def test_resume_refuses_a_changed_file_on_one_line(uninterrupted, tmp_path, name, damage, capsys):
    run = _copy_run(uninterrupted, tmp_path / "run")
    _unfinish(run)
    (run / name).write_bytes(damage((run / name).read_bytes()))
    assert cli.main(["run", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run / name}: sha256 differs from manifest.json" in err and len(err.splitlines()) == 1
    assert not manifest.listed(run, "summary.json")


def test_a_truncated_epoch_checkpoint_is_refused_never_loaded(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    state = {"epoch": 1, "model": {"w": torch.ones(3)}, "history": [{"epoch": 1}]}
    members.save_state(run, "members/member-0", state)
    path = run / "members/member-0.epoch-1.pt"
    assert members.latest_state(run, "members/member-0")["epoch"] == 1
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="sha256 differs"):
        members.latest_state(run, "members/member-0")


def test_a_newer_epoch_state_replaces_the_older_one(tmp_path):
    for epoch in (1, 2):
        members.save_state(tmp_path, "members/member-3", {"epoch": epoch, "history": [{}] * epoch})
    assert sorted(p.name for p in (tmp_path / "members").iterdir()) == ["member-3.epoch-2.pt"]
    assert [n for n in manifest.load(tmp_path) if n.startswith("members/")] == ["members/member-3.epoch-2.pt"]
    assert members.latest_state(tmp_path, "members/member-3")["epoch"] == 2


def test_report_and_validate_refuse_tampered_outputs(uninterrupted, tmp_path, capsys):
    run = _copy_run(uninterrupted, tmp_path / "run")
    probs = run / "probs.npz"
    probs.write_bytes(probs.read_bytes()[:-10])
    assert cli.main(["report", str(run)]) == 2
    assert f"{probs}: sha256 differs" in capsys.readouterr().err
    scores_csv = run / "scores.csv"
    scores_csv.write_text(scores_csv.read_text().replace(",", ";", 1))
    assert cli.main(["validate", str(run)]) == 2
    assert f"{scores_csv}: sha256 differs" in capsys.readouterr().err


class _Interrupt(KeyboardInterrupt):
    pass


def test_an_interrupted_audit_resumes_fold_by_fold_to_the_same_table(tmp_path, mnist_dir, monkeypatch, capsys):
    common = ["--data-dir", str(mnist_dir), "--train-limit", "300", "--test-limit", "60", "--folds", "3",
              "--members", "2", "--epochs", "1", "--widths", "4,8,8", "--quiet"]
    assert cli.main(["audit", "--out", str(tmp_path / "full"), *common]) == 0
    saved, save = [], members.save_member

    def save_then_stop(*args, **kwargs):  # Ctrl-C right after the third member job of the audit is saved
        save(*args, **kwargs)
        saved.append(args[1])
        if len(saved) == 3:
            raise _Interrupt

    monkeypatch.setattr(members, "save_member", save_then_stop)
    assert cli.main(["audit", "--out", str(tmp_path / "cut"), *common]) == 130
    monkeypatch.setattr(members, "save_member", save)
    capsys.readouterr()
    assert cli.main(["audit", "--resume", str(tmp_path / "cut")]) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier") == 3 and log.count("training on") == 3
    for name in ("label_issues.csv", "cv_probs_test.npz"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    summary = json.loads((tmp_path / "cut" / "audit_test.json").read_text())
    assert summary["folds"] == 3 and summary["members_per_fold"] == 2


def test_a_finished_members_left_over_epoch_states_are_dropped_on_resume(uninterrupted, tmp_path, mnist_dir):
    """A kill between listing a finished member and dropping its epoch states leaves them listed."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    manifest.forget(out, "summary.json")  # as if killed right after member 1 was saved
    state = out / "members" / "member-0.epoch-2.pt"
    state.write_bytes(b"left over")
    manifest.record(out, state)
    assert cli.main(["run", "--resume", str(out), "--data-dir", str(mnist_dir), "--quiet"]) == 0
    assert not state.exists() and not manifest.listed(out, "members/member-0.epoch-2.pt")
    for name in ("probs.npz", "embeddings.npz"):  # every member's CNN loaded back for the features pass
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name

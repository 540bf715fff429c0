"""Local workers (--workers): members trained side by side, each in a process of its own, to the bytes that one
member at a time with the same threads gives."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ambiguous_digits import backend, cli, pool, rundir, train
from ambiguous_digits.commands.run import run as run_recipe
from ambiguous_digits.config import ConfigError, Invocation, Recipe, RunOutputs

# Three members for two workers: the third starts when one of the first two ends.
TINY = ["--train-limit", "1500", "--test-limit", "300", "--members", "3", "--epochs", "2", "--widths", "8,16,32",
        "--precision", "fp32", "--top", "5", "--quiet"]
SAME = ["probs.npz", "models/member-0.npz", "models/member-1.npz", "models/member-2.npz", "scores.csv",
        "train_dynamics.csv", "label_issues.csv", "train_label_issues.csv"]


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("one") / "run"
    assert cli.main(["run", "--out", str(out), "--data-dir", str(mnist_dir), *TINY, "--workers", "1",
                     "--threads", "1"]) == 0
    return out


def test_two_workers_give_the_bytes_of_one_member_at_a_time(one_at_a_time, tmp_path, mnist_dir, capsys,
                                                           monkeypatch):
    pools = []
    monkeypatch.setattr(backend, "_run_pool", lambda *a, _run=backend._run_pool: pools.append(a) or _run(*a))
    out = tmp_path / "run"
    loud = [flag for flag in TINY if flag != "--quiet"]  # the bars too
    assert cli.main(["run", "--out", str(out), "--data-dir", str(mnist_dir), *loud, "--workers", "2"]) == 0
    assert len(pools) == 1  # the members did train in worker processes
    said = capsys.readouterr()
    log, bars = said.out, said.err.replace("\r", "\n")
    assert "1 thread(s) a member, up to 2 at a time" in log and log.count(", saved") == 3
    assert "3 members: 2 at a time in worker processes" in log
    assert "epochs=6/6" in bars and "after training: 7/7 stages" in bars  # each member's epochs, from its worker
    for name in SAME:
        assert (out / name).read_bytes() == (one_at_a_time / name).read_bytes(), name
    for m in range(3):  # a member's file also holds its epochs' seconds
        with np.load(out / f"members/member-{m}.npz") as a, np.load(one_at_a_time / f"members/member-{m}.npz") as b:
            for key in ("probs", "holdout_probs", "dynamics", "seed"):
                np.testing.assert_array_equal(a[key], b[key])
    placement = json.loads((out / rundir.CONFIG_FILE).read_text())["placement"]
    assert placement == {"device": "auto", "threads": None, "workers": 2, "member_threads": 1}


def test_by_default_each_core_trains_a_member_of_one_thread(monkeypatch):
    monkeypatch.setattr(backend, "cores", lambda: 2)
    inv = Invocation(device="cpu")
    assert (backend.local_workers(inv), backend.member_threads(inv)) == (2, 1)
    assert backend.side_by_side(inv, jobs=6, work=8 * 50_000)
    assert not backend.side_by_side(inv, jobs=6, work=backend.POOL_MIN_WORK - 1)  # the start-up would not pay
    assert not backend.side_by_side(inv, jobs=1, work=8 * 50_000)  # a resumed run's last member: here, one thread
    assert backend.side_by_side(Invocation(device="cpu", workers=2), jobs=2, work=1)  # asked for
    assert backend.member_threads(Invocation(device="cpu", threads=3)) == 3
    assert backend.local_workers(Invocation(device="cpu", threads=3)) == 1  # no more threads than cores
    assert backend.member_threads(Invocation(backend="ray")) == backend.task_cpus(Invocation(backend="ray")) == 1
    one = Invocation(device="cpu", workers=1)
    assert (backend.member_threads(one), backend.side_by_side(one, jobs=6, work=10**6)) == (None, False)  # every core
    monkeypatch.setattr(backend, "cores", lambda: 8)
    assert backend.local_workers(Invocation(device="cpu", threads=2)) == 4
    monkeypatch.setattr(backend, "cores", lambda: 1)
    assert (backend.local_workers(inv), backend.member_threads(inv)) == (1, None)


def test_a_gpu_trains_one_member_at_a_time(monkeypatch):
    monkeypatch.setattr(backend, "cores", lambda: 16)
    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("cuda"))
    inv = Invocation(device="cuda")
    assert (backend.local_workers(inv), backend.member_threads(inv)) == (1, None)


@pytest.mark.parametrize("where, message", [
    ({"workers": 0}, "--workers: must be positive, got 0"),
    ({"workers": 2, "backend": "ray"}, r"--workers: only with --backend local \(a Ray cluster places its own"),
])
def test_bad_worker_settings_are_refused(where, message):
    with pytest.raises(ConfigError, match=message):
        Invocation(**where)


@pytest.mark.parametrize("argv, message", [
    (["run", "--workers", "0"], "argument --workers: must be positive, got 0"),
    (["audit", "--workers", "2", "--backend", "ray"], "--workers: only with --backend local"),
])
def test_the_cli_refuses_bad_workers_on_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = cli.main([*argv, "--out", str(out)])
    except SystemExit as e:  # argparse's own refusal of a flag's value
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_resume_keeps_the_workers_a_run_started_with_and_older_runs_train_one_at_a_time(tmp_path):
    rundir.save_run_config(tmp_path, Recipe(), RunOutputs(), Invocation(workers=3, threads=2))
    placed = rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path))
    assert (placed.workers, placed.threads, placed.member_threads) == (3, 2, 2)
    on_ray = rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path, backend="ray"))
    assert (on_ray.workers, on_ray.threads, backend.task_cpus(on_ray)) == (None, 2, 2)  # Ray places its tasks
    config = tmp_path / rundir.CONFIG_FILE
    body = json.loads(config.read_text())
    del body["placement"]["workers"], body["placement"]["member_threads"]  # as 0.11 wrote it
    rundir.save_json(tmp_path, rundir.CONFIG_FILE, body)
    older = rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path))
    assert (older.workers, older.member_threads) == (1, 2)


def test_a_resume_may_change_the_workers_but_never_a_members_threads(tmp_path):
    """A run whose members trained side by side (1 thread each) resumed one at a time: still 1 thread each, where
    --workers 1 alone would give every core to a member (other bytes)."""
    rundir.save_run_config(tmp_path, Recipe(), RunOutputs(), Invocation(workers=2))
    placed = rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path, workers=1))
    assert (placed.workers, backend.member_threads(placed)) == (1, 1)
    assert backend.member_threads(Invocation(workers=1)) is None  # torch's default: every core
    body = json.loads((tmp_path / rundir.CONFIG_FILE).read_text())
    del body["placement"]["member_threads"]  # as 0.12.0 wrote it: resolved from its settings, on this machine
    rundir.save_json(tmp_path, rundir.CONFIG_FILE, body)
    placed = rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path, workers=1))
    assert (placed.workers, backend.member_threads(placed)) == (1, 1)
    for bad in (0, 1.5, True):
        body["placement"]["member_threads"] = bad
        rundir.save_json(tmp_path, rundir.CONFIG_FILE, body)
        with pytest.raises(ConfigError, match=f"not a config this version can read \\(member_threads {bad}\\)"):
            rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path))


def test_a_run_of_one_member_at_a_time_resumed_on_ray_reserves_its_threads_only(tmp_path):
    """Its members had every core of their machine; a Ray task reserving as many could find no node to run on."""
    rundir.save_run_config(tmp_path, Recipe(), RunOutputs(), Invocation(workers=1))
    assert json.loads((tmp_path / rundir.CONFIG_FILE).read_text())["placement"]["member_threads"] == \
        torch.get_num_threads()
    on_ray = rundir.placed_as_before(tmp_path, rundir.CONFIG_FILE, Invocation(out=tmp_path, backend="ray"))
    assert on_ray.member_threads is None and backend.task_cpus(on_ray) == 1


def test_the_log_says_whether_the_jobs_train_in_workers_or_here():
    two = Invocation(device="cpu", workers=None)
    assert backend.placement_note(Invocation(device="cpu", workers=2), 3, 10) == "2 at a time in worker processes"
    if backend.local_workers(two) > 1:  # a machine of 2 cores or more: small jobs stay here
        assert backend.placement_note(two, 3, 6000).startswith("one at a time in this process (the largest, 6,000")
    assert backend.placement_note(Invocation(device="cpu", workers=1), 3, 10**6) is None  # nothing to choose
    assert backend.placement_note(Invocation(device="cpu", workers=2), 1, 10**6) is None


def test_a_diverging_member_in_a_worker_is_its_own_one_line_error(tmp_path, mnist_dir):
    """The job's ConfigError crosses the process boundary as itself; the other workers are stopped."""
    recipe = Recipe(train_limit=1500, test_limit=300, members=3, epochs=1, widths=(8, 16, 32), lr=1e30)
    with pytest.raises(ConfigError) as info:
        run_recipe(recipe, RunOutputs(), Invocation(out=tmp_path, data_dir=mnist_dir, workers=2, progress=False),
                   log=lambda _: None)
    assert type(info.value) is ConfigError and str(info.value).startswith("--lr: training diverged (seed")
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "members").glob("member-*.npz"))


def _fail_once_the_other_runs(name: str, pids: str, progress: bool) -> None:
    """A toy job for the worker processes: "fail" raises once "sleep" has started, which sleeps on."""
    Path(pids, f"{name}-{os.getpid()}").touch()
    if name == "fail":
        deadline = time.monotonic() + 60
        while not list(Path(pids).glob("sleep-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        raise ConfigError("--lr: a job's own error")
    if name == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)
    Path(pids, "slept").touch()  # never, unless the worker was left to run on


def _ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_job_s_error_stops_the_other_workers(tmp_path):
    """The error is the job's own; the worker still training is stopped, not left to sleep on."""
    inv = Invocation(device="cpu", workers=2, progress=False)
    with pytest.raises(ConfigError, match="^--lr: a job's own error$"):
        backend.map_jobs(_fail_once_the_other_runs, [{"name": "fail"}, {"name": "sleep"}], {"pids": str(tmp_path)},
                         inv, lambda i, r: "", "jobs", progress=False)
    (sleeper,) = tmp_path.glob("sleep-*")
    assert _ended(int(sleeper.name.split("-")[1])) and not (tmp_path / "slept").exists()


def test_a_worker_that_dies_is_one_line_naming_resume(tmp_path):
    inv = Invocation(out=tmp_path / "run", device="cpu", workers=2, progress=False)
    with pytest.raises(ConfigError) as info:
        backend.map_jobs(_fail_once_the_other_runs, [{"name": "die"}, {"name": "sleep"}], {"pids": str(tmp_path)},
                         inv, lambda i, r: "", "jobs", progress=False)
    message = str(info.value)
    assert message.startswith("--workers: a worker process died (killed, out of memory, or failed to start)")
    assert f"--resume {tmp_path / 'run'}" in message and "\n" not in message
    assert all(_ended(int(p.name.split("-")[1])) for p in tmp_path.glob("*-*"))
    assert not (tmp_path / "slept").exists()


def _three_epochs(name: str, progress: bool) -> str:
    """A toy job of three epochs: the first two reported as they end, the last by the job's end."""
    for _ in range(2):
        time.sleep(0.2)
        pool.epoch_done()
    return name


def test_the_bar_counts_the_epochs_the_workers_report(capsys):
    """Workers show no bars of their own: the driver's counts their epochs, not only the finished jobs."""
    inv = Invocation(device="cpu", workers=2)
    got = backend.map_jobs(_three_epochs, [{"name": "a"}, {"name": "b"}], {}, inv, lambda i, r: r, "jobs",
                           epochs=6)
    assert got == ["a", "b"]
    bar = capsys.readouterr().err
    assert "epochs=6/6" in bar and "2/2" in bar
    pool.epoch_done()  # in the driver: nothing to tell, and no error


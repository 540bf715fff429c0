"""The Ray backend, for real: a two-node Ray cluster on loopback, started and torn down here.

Each node is a `ray start --block` in its own process group with 1 CPU
(bench.ray_scaling.loopback_cluster); the driver joins it with --ray-address.
Results must be byte-identical to the local backend's.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from ambiguous_digits import backend, cli, jobs, outputs, rundir
from ambiguous_digits.cli import main
from ambiguous_digits.commands.audit import run_audit
from ambiguous_digits.commands.run import run as run_recipe
from ambiguous_digits.config import AuditPlan, ConfigError, Invocation, Recipe, RunOutputs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not part of the installed package
from bench.ray_scaling import free_port, loopback_cluster, ray_env  # noqa: E402

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed: pip install '.[ray]' (requirements.txt installs it)")
TINY = dict(train_limit=2000, test_limit=300, members=2, epochs=1, precision="fp32")  # and 1 thread
WHERE = ("out", "data_dir", "backend", "ray_address", "threads", "progress")


@pytest.fixture(scope="module")
def cluster():
    """HOST:PORT of a live two-node Ray cluster on loopback, 1 CPU per node; torn down after the module."""
    with loopback_cluster(nodes=2) as address:
        yield address


def _cfg(out: Path, mnist_dir: Path | None, **overrides) -> tuple[Recipe, Invocation]:
    """The tiny recipe and an invocation writing to `out`, with overrides of either."""
    settings = {**TINY, "out": out, "data_dir": mnist_dir, "threads": 1, "progress": False, **overrides}
    inv = Invocation(**{k: v for k, v in settings.items() if k in WHERE})
    return Recipe(**{k: v for k, v in settings.items() if k not in WHERE}), inv


def run(settings: tuple[Recipe, Invocation], log=lambda _: None, progress: bool = False) -> dict:
    recipe, inv = settings
    return run_recipe(recipe, RunOutputs(), inv, log=log)


def _bare(out: Path, **where) -> tuple[Recipe, Invocation]:
    """The default recipe, run with these invocation settings (for failures before any data)."""
    return Recipe(), Invocation(out=out, progress=False, **where)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("local-run")
    run(_cfg(out, mnist_dir), log=lambda _: None, progress=False)
    return out


# ---------------------------------------------------------------------------
# the same results on either backend
# ---------------------------------------------------------------------------
@needs_ray
def test_run_on_ray_matches_local_byte_for_byte(cluster, local_run, mnist_dir, tmp_path, monkeypatch):
    import ray

    puts = []
    monkeypatch.setattr(ray, "put", lambda value, _put=ray.put, **kw: puts.append(value) or _put(value, **kw))
    lines = []
    summary = run(_cfg(tmp_path, mnist_dir, backend="ray", ray_address=cluster), log=lines.append, progress=False)
    assert (tmp_path / "probs.npz").read_bytes() == (local_run / "probs.npz").read_bytes()
    assert summary["backend"] == "ray" and summary["member_seeds"] == Recipe(**TINY).member_seeds()
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert models == ["member-0.npz", "member-0.pt", "member-1.npz", "member-1.pt"]  # torch's, and predict's numpy
    assert len(puts) == 4  # x_train, y_train, x_test and the folds: once each, not once per member
    for name in ("train_dynamics.csv", "train_label_issues.csv", "label_issues.csv", "embeddings.npz"):  # the analysis
        assert (tmp_path / name).read_bytes() == (local_run / name).read_bytes(), name
    assert sum(", saved" in line for line in lines) == TINY["members"]  # one line as each arrives


@needs_ray
def test_audit_on_ray_matches_local_byte_for_byte(cluster, mnist_dir, tmp_path):
    audit = dict(folds=3)
    recipe, inv = _cfg(tmp_path / "local", mnist_dir, members=1)
    run_audit(recipe, AuditPlan(**audit), inv, log=lambda _: None)
    lines = []
    recipe, inv = _cfg(tmp_path / "ray", mnist_dir, members=1, backend="ray", ray_address=cluster)
    s = run_audit(recipe, AuditPlan(**audit), inv, log=lines.append)
    name = "cv_probs_test.npz"
    assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert s["digits"] == TINY["test_limit"] and sum("held-out" in line for line in lines) == audit["folds"]


@needs_ray
def test_a_local_ray_run_leaves_no_token_that_locks_out_a_later_cluster(mnist_dir, tmp_path, monkeypatch):
    """A local --backend ray run, then `ray start --head` on the same machine and a run that names its address.

    ray.init would write ~/.ray/auth_token for the local Ray it starts; the later head would find it and refuse
    drivers without it. Here $HOME is this test's, for the runs and the cluster alike.
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    ray_tmp = tempfile.mkdtemp(prefix="adray")  # the local Ray's own: not one a `ray start` left in /tmp/ray
    args = [*(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()), "--threads=1"]
    cmd = [sys.executable, "-m", "ambiguous_digits.cli", "run", "--out", str(tmp_path / "local"), "--data-dir",
           str(mnist_dir), "--quiet", "--backend", "ray", *args]
    try:
        local = subprocess.run(cmd, env={**ray_env(), "RAY_TMPDIR": ray_tmp}, capture_output=True, text=True,
                               timeout=600)  # a process of its own, as a user's earlier command is
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert local.returncode == 0, local.stdout + local.stderr

    with loopback_cluster(nodes=1, home=str(home)) as address:
        run(_cfg(tmp_path / "cluster", mnist_dir, backend="ray", ray_address=address), log=lambda _: None,
            progress=False)
    assert (tmp_path / "cluster" / "probs.npz").read_bytes() == (tmp_path / "local" / "probs.npz").read_bytes()
    assert not (home / ".ray").exists()


@needs_ray
def test_a_cluster_that_wants_a_token_is_one_line_naming_the_token_file(tmp_path, monkeypatch):
    """ray.init's ConnectionError, wrapped round the GCS client's InvalidAuthToken as Ray 2.60 raises it."""
    import ray

    def init(**_):
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                               "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication "
                               "token is missing or incorrect.")
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1") from e

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(backend, "check_reachable", lambda address: None)
    with pytest.raises(ConfigError) as info:
        backend._connect(types.SimpleNamespace(init=init, exceptions=ray.exceptions), "127.0.0.1:1")
    message = str(info.value)
    assert message.startswith("--ray-address: the Ray cluster at 127.0.0.1:1 and this driver disagree on its token")
    assert str(tmp_path / ".ray" / "auth_token") in message and "RAY_AUTH_MODE=token" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------
def _task_workers(task: str) -> list[int]:
    """PIDs of Ray worker processes now running `task` (Ray titles them 'ray::<task>')."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(f"ray::{task}".encode()):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@needs_ray
def test_a_worker_killed_mid_task_is_retried_and_every_member_arrives(cluster, local_run, mnist_dir, tmp_path):
    args = [*(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()), "--threads=1"]
    cmd = [sys.executable, "-m", "ambiguous_digits.cli", "run", "--out", str(tmp_path), "--data-dir", str(mnist_dir),
           "--quiet", "--backend", "ray", "--ray-address", cluster, *args]
    driver = subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    while killed is None and driver.poll() is None:
        workers = _task_workers("member_job")
        if workers:
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.02)
    out, _ = driver.communicate(timeout=300)
    assert killed is not None, f"no worker was seen running a member; driver said:\n{out}"
    assert driver.returncode == 0, out
    with np.load(tmp_path / "probs.npz") as z:
        assert z["probs"].shape == (TINY["members"], TINY["test_limit"], 10)
    assert (tmp_path / "probs.npz").read_bytes() == (local_run / "probs.npz").read_bytes()


def _listed_members(out: Path) -> list[str]:
    listing = out / "manifest.json"
    try:
        names = json.loads(listing.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(n for n in names if n.startswith("members/") and n.endswith(".npz"))


@needs_ray
def test_resume_after_a_driver_crash_trains_only_the_missing_members(cluster, local_run, mnist_dir, tmp_path,
                                                                   capsys):
    """Kill the driver once a member's result is saved; --resume loads it and trains only the rest on Ray."""
    members = 3  # two tasks at a time on the two nodes: the third is still to come when the first arrives
    args = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, "members": members}.items()]
    cmd = [sys.executable, "-m", "ambiguous_digits.cli", "run", "--out", str(tmp_path), "--data-dir", str(mnist_dir),
           "--quiet", "--backend", "ray", "--ray-address", cluster, *args]
    driver = subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while driver.poll() is None and not _listed_members(tmp_path):
        time.sleep(0.02)
    driver.kill()
    out, _ = driver.communicate(timeout=60)
    done = _listed_members(tmp_path)
    assert 1 <= len(done) < members, f"the driver was not killed mid-run; it said:\n{out}"
    before = {name: (tmp_path / name).read_bytes() for name in done}

    assert main(["run", "--resume", str(tmp_path), "--quiet"]) == 0  # on the saved backend and address
    log = capsys.readouterr().out
    assert log.count("finished earlier") == len(done) and log.count("training on") == members - len(done)
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())  # not recomputed
    with np.load(tmp_path / "probs.npz") as z, np.load(local_run / "probs.npz") as ref:
        assert z["probs"].shape[0] == members and ref["probs"].shape[0] == 2
    # Cross-fitted over 3 folds: every training digit trained on by the 2 members that do not hold it out.
    assert set(outputs.read_table(tmp_path / "train_dynamics.csv")["members_trained"]) == {members - 1}


def test_resume_may_move_a_run_to_another_backend(tmp_path, capsys):
    """--backend and --ray-address may go with --resume (the result does not depend on them); others may not."""
    rundir.save_run_config(tmp_path, Recipe(), RunOutputs(), Invocation())
    local = cli.invocation(cli.build_parser().parse_args(["run", "--resume", str(tmp_path), "--backend", "local"]))
    assert (local.out, local.backend, local.ray_address) == (tmp_path, "local", None)
    argv = ["run", "--resume", str(tmp_path), "--backend", "ray", "--ray-address", "10.0.0.2:6379"]
    assert cli.invocation(cli.build_parser().parse_args(argv)).ray_address == "10.0.0.2:6379"
    assert main(["run", "--resume", str(tmp_path), "--members", "3"]) == 2
    assert "drop --members" in capsys.readouterr().err


def _member_job_the_workers_cannot_import(**job):
    raise AssertionError("this module is not on the workers' path, so this never runs there")


@needs_ray
def test_workers_without_the_package_are_one_clear_error(cluster, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "member_job", _member_job_the_workers_cannot_import)
    with pytest.raises(ConfigError, match=r"--backend ray: a worker cannot import this package \(.*No module "
                                          r"named .*\); install ambiguous-digits .* on every node"):
        run(_cfg(tmp_path, mnist_dir, backend="ray", ray_address=cluster, members=1), progress=False,
            log=lambda _: None)


@needs_ray
def test_a_node_on_another_version_is_one_clear_error_before_any_training(cluster, mnist_dir, tmp_path, monkeypatch):
    """A node with another version would train another network (0.1's stage order) under this one's name."""
    import ambiguous_digits
    monkeypatch.setattr(backend, "__version__", "0.0.0")  # this machine's, as the driver sees it
    with pytest.raises(ConfigError) as info:
        run(_cfg(tmp_path, mnist_dir, backend="ray", ray_address=cluster, members=1), progress=False,
            log=lambda _: None)
    assert re.fullmatch(rf"--backend ray: the node at \S+ runs ambiguous-digits {re.escape(ambiguous_digits.__version__)}, "
                        r"this machine 0\.0\.0; install the same version on every node", str(info.value))
    assert not list(tmp_path.rglob("member-*"))


@pytest.mark.parametrize("address", [
    "127.0.0.1:{free}",  # nothing listens there
    "192.0.2.1:6379",  # TEST-NET-1 (RFC 5737): never routed, nothing answers
])
@needs_ray
def test_an_unreachable_address_fails_fast_and_writes_nothing(address, tmp_path, monkeypatch):
    monkeypatch.setattr(backend, "CONNECT_TIMEOUT_S", 1.0)
    out, start = tmp_path / "out", time.monotonic()
    with pytest.raises(ConfigError, match="--ray-address: cannot reach a Ray cluster"):
        run(_bare(out, backend="ray", ray_address=address.format(free=free_port())))
    assert time.monotonic() - start < 5
    assert not out.exists()


@needs_ray
def test_an_unreachable_ray_address_variable_fails_fast_and_writes_nothing(tmp_path, monkeypatch):
    """Without --ray-address, ray.init would use $RAY_ADDRESS: it is probed first as well."""
    monkeypatch.setattr(backend, "CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"\$RAY_ADDRESS: cannot reach a Ray cluster at 127.0.0.1:"):
        run(_bare(out, backend="ray"))
    assert not out.exists()


@needs_ray
def test_an_address_where_something_else_listens_is_refused(tmp_path):
    """A web server on the wrong port answers HTTP/1.1, not gRPC: refused at once, not handed to ray.init."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        answer = threading.Thread(target=_answer_http1, args=(server,))
        answer.start()
        with pytest.raises(ConfigError, match="--ray-address: .* answers, but not as a Ray head node"):
            run(_bare(tmp_path / "out", backend="ray", ray_address=f"127.0.0.1:{server.getsockname()[1]}"))
        answer.join(timeout=5)
    assert not (tmp_path / "out").exists()


def _answer_http1(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.recv(64)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_ray_not_installed_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"--backend ray: Ray is not installed.*\.\[ray\]"):
        run(_bare(tmp_path / "out", backend="ray"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# the flags
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"backend": "dask"}, "--backend: expected local or ray"),
    ({"ray_address": "127.0.0.1:6379"}, "--ray-address: only meaningful with --backend ray"),
    ({"backend": "ray", "ray_address": "head-node"}, "--ray-address: expected HOST:PORT"),
    ({"backend": "ray", "ray_address": ":6379"}, "--ray-address: expected HOST:PORT"),
    ({"backend": "ray", "ray_address": "head:0"}, "--ray-address: expected HOST:PORT"),
    ({"backend": "ray", "ray_address": "head:70000"}, "--ray-address: expected HOST:PORT"),
])
def test_bad_backend_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Invocation(**overrides)


@pytest.mark.parametrize("command", ["run", "audit"])
def test_cli_reports_a_bad_address_on_one_line(command, tmp_path, capsys):
    assert main([command, "--out", str(tmp_path / "out"), "--backend", "ray", "--ray-address", "nohost"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray-address: expected HOST:PORT" in err
    assert not (tmp_path / "out").exists()


def test_experiment_has_no_ray_backend(tmp_path, capsys):
    """Its variants train in this process: it has no --backend flag, so one is refused, not silently ignored."""
    with pytest.raises(SystemExit) as info:
        main(["experiment", "--out", str(tmp_path), "--backend", "ray"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --backend ray" in err and err.count("\n") == 1


@needs_ray
def test_a_diverging_member_on_a_worker_is_its_own_one_line_error(cluster, mnist_dir, tmp_path):
    """The job's ConfigError, not the worker traceback Ray wraps round it."""
    with pytest.raises(ConfigError) as info:
        run(_cfg(tmp_path, mnist_dir, backend="ray", ray_address=cluster, members=1, lr=1e30), progress=False,
            log=lambda _: None)
    assert type(info.value) is ConfigError and str(info.value).startswith("--lr: training diverged (seed")
    assert "\n" not in str(info.value)


def test_ray_addresses_split_with_the_flag_they_came_from():
    from ambiguous_digits.config import split_address
    assert split_address("[::1]:6379") == ("::1", 6379)  # IPv6, as Ray writes it
    assert split_address("head.example:6379") == ("head.example", 6379)
    with pytest.raises(ConfigError, match=r"^\$RAY_ADDRESS: expected HOST:PORT"):
        backend.check_reachable("head:0", flag="$RAY_ADDRESS")  # the flag passed on to the parser

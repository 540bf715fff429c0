"""Wall time of one `run` on a Ray cluster of 1, then 2, ... nodes on this machine, against the local backend.

Each cluster is real: `ray start --block` processes on loopback, started before
and torn down after its run, the machine's cores split evenly between its nodes
(so every row uses the same cores: what changes is how many nodes share them).
Each member is one task of --threads CPUs. The local row trains the members one
after another with --local-threads torch threads (default: every core), as a
plain `run` does. The same seeds and threads give the same probs.npz on every
backend, so each row's sha256 of probs.npz is recorded: the Ray rows must agree.

    python bench/ray_scaling.py --members 10 --nodes 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not the package
from bench import runs  # noqa: E402

# Seconds a cluster may take to start all its nodes before the benchmark gives up.
CLUSTER_START_S = 60
# `ray start --block` takes its time over SIGTERM; nothing in a throwaway cluster needs a clean stop.
STOP_GRACE_S = 2


# ---------------------------------------------------------------------------
# A throwaway Ray cluster on loopback (also used by tests/test_ray.py)
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(home: str | None = None) -> dict:
    """The environment for Ray nodes and drivers: workers import this checkout's package, and Ray's token
    authentication is left to Ray's defaults (none of the caller's RAY_AUTH_* variables). With `home`, the
    processes' $HOME, where Ray looks for .ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    env.update(PYTHONPATH=runs.pythonpath(SRC), RAY_USAGE_STATS_ENABLED="0")
    if home:
        # packages installed with pip --user stay importable under another $HOME
        env.update(HOME=home, PYTHONUSERBASE=os.environ.get("PYTHONUSERBASE") or site.getuserbase())
    return env


@contextlib.contextmanager
def loopback_cluster(nodes: int, cpus: int = 1, home: str | None = None) -> Iterator[str]:
    """HOST:PORT of a live Ray cluster of `nodes` nodes on 127.0.0.1, each with `cpus` CPUs.

    Every node is a `ray start --block` in a process group of its own; on exit each
    group (raylet, GCS, workers) is terminated, and nothing of it is left running.
    The nodes' $HOME is `home`, else the cluster's own temporary folder: a `ray start --head` turns
    token authentication on where $HOME/.ray/auth_token exists, and a driver that names the address
    sends no token (unless RAY_AUTH_MODE=token).
    """
    from ambiguous_digits.backend import check_reachable
    from ambiguous_digits.config import ConfigError

    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="adray")  # short: Ray's socket paths live under it
    home = home or temp_dir
    procs = [_node(["--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"],
                   cpus, temp_dir, home)]
    try:
        _retry(lambda: check_reachable(address), ConfigError)
        procs += [_node([f"--address={address}"], cpus, temp_dir, home) for _ in range(nodes - 1)]
        _retry(lambda: _expect_nodes(address, nodes), (ConfigError, RuntimeError))
        yield address
    finally:
        _stop(procs)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _node(args: list[str], cpus: int, temp_dir: str, home: str) -> subprocess.Popen:
    cmd = [shutil.which("ray") or "ray", "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
           f"--temp-dir={temp_dir}", *args]
    return subprocess.Popen(cmd, env=ray_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _retry(check, errors) -> None:
    deadline = time.monotonic() + CLUSTER_START_S
    while True:
        try:
            return check()
        except errors:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _expect_nodes(address: str, n: int) -> None:
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        alive = sum(node["Alive"] for node in ray.nodes())
    finally:
        ray.shutdown()
    if alive != n:
        raise RuntimeError(f"the Ray cluster at {address} has {alive} of {n} nodes")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each node's process group; SIGKILL whatever is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10)):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(group_alive(p.pid) for p in procs):
            time.sleep(0.2)
    for proc in procs:
        proc.wait(timeout=10)
    assert not any(group_alive(p.pid) for p in procs), "a Ray process outlived the teardown"


def group_alive(pgid: int) -> bool:
    """Is any live (not zombie) process left in process group `pgid`?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def timed_run(run_args: list[str], backend_args: list[str]) -> dict:
    """One `ambiguous-digits run` in a subprocess: wall seconds, accuracy and probs.npz's sha256."""
    with tempfile.TemporaryDirectory() as out:
        result = runs.timed_run(Path(out), [*run_args, *backend_args], env=ray_env())
        result["probs_sha256"] = hashlib.sha256((Path(out) / "probs.npz").read_bytes()).hexdigest()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ambiguous_digits.config import Recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--members", type=int, default=10, help="ensemble members (one Ray task each)")
    p.add_argument("--epochs", type=int, default=Recipe().epochs, help="training epochs per member (run's default)")
    p.add_argument("--threads", type=int, default=1, help="CPUs (and torch threads) per Ray task")
    p.add_argument("--local-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the local row")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="cluster sizes to time, in order")
    p.add_argument("--no-local", dest="local", action="store_false", help="skip the local-backend baseline")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST cache (as for `run`)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N digits only (smoke tests)")
    p.add_argument("--test-limit", type=int, default=None, help="score the first N test digits only (smoke tests)")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "ray_scaling.json", help="where to write results")
    a = p.parse_args(argv)
    for flag, value in (("--members", a.members), ("--epochs", a.epochs), ("--threads", a.threads),
                        ("--local-threads", a.local_threads), *(("--nodes", n) for n in a.nodes)):
        if value < 1:
            p.error(f"{flag}: expected a positive number, got {value}")
    cores = os.cpu_count() or 1
    if max(a.nodes) * a.threads > cores:  # the rows would no longer share the same cores
        p.error(f"--nodes {max(a.nodes)}: that many nodes of --threads {a.threads} need "
                f"{max(a.nodes) * a.threads} cores, and this machine has {cores}")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    run_args = [f"--members={a.members}", f"--epochs={a.epochs}"]
    run_args += [f"--{k}={v}" for k, v in (("data-dir", a.data_dir), ("train-limit", a.train_limit),
                                           ("test-limit", a.test_limit)) if v is not None]
    rows = {}
    if a.local:
        rows["local"] = timed_run(run_args, ["--backend=local", f"--threads={a.local_threads}"])
        print(f"local backend, {a.local_threads} thread(s): {rows['local']['wall_s']} s", flush=True)
    for n in a.nodes:
        cpus = (os.cpu_count() or 1) // n  # parse_args made sure a task's threads fit
        with loopback_cluster(n, cpus) as address:
            row = timed_run(run_args, ["--backend=ray", f"--ray-address={address}", f"--threads={a.threads}"])
        rows[f"ray_{n}_nodes"] = {**row, "cpus_per_node": cpus}
        print(f"Ray, {n} node(s) of {cpus} CPU(s), tasks of {a.threads}: {row['wall_s']} s", flush=True)
    ray_shas = {r["probs_sha256"] for name, r in rows.items() if name != "local"}
    result = {"members": a.members, "epochs": a.epochs, "threads_per_task": a.threads,
              "local_threads": a.local_threads, "cpu_count": os.cpu_count(), "runs": rows,
              "same_probs_on_every_cluster": len(ray_shas) <= 1}
    from ambiguous_digits import files

    files.write_json(a.json, result)
    print(f"same probs.npz on every cluster: {result['same_probs_on_every_cluster']}; wrote {a.json}")
    return result


if __name__ == "__main__":
    main()

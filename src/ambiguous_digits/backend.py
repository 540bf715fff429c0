"""Where independent training jobs run: here (side by side in worker processes, run by `pool`, or one after
another), or as Ray tasks on a cluster.

A job is a call `fn(**shared, **job)`. The shared arrays (the images) go to a
Ray cluster once, through its object store; each job's own arguments (a seed, a
fold number, a saved training state) are small. Results reach the
caller through `on_result(i, result)` in the driver as each job finishes, so the
caller can write them to disk before the next one arrives; it returns a short note
(an accuracy) for the progress bar.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from . import __version__, pool
from .config import ConfigError, Invocation, split_address
from .data import DataError
from .files import WriteError

# Seconds to wait for a TCP connection to the cluster's address before giving up:
# an unreachable or mistyped address fails in seconds instead of hanging.
CONNECT_TIMEOUT_S = 5.0
# How often Ray re-runs a task whose worker process or node died mid-task (Ray's
# own retry; an exception raised by the job itself is a bug and is not retried).
TASK_RETRIES = 3
# Training digits x epochs of a job below which default local workers do not pay: their start-up (about 2 s, each
# a fresh process importing torch) outweighs what two 1-thread members side by side save (docs/usage.md).
POOL_MIN_WORK = 20_000
# A Ray head node's GCS speaks gRPC (HTTP/2): it answers the HTTP/2 connection preface
# with a SETTINGS frame (9-byte header, type 0x4). An empty SETTINGS frame of our own
# follows the preface, as the protocol asks (RFC 9113, section 3.4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
# How Ray's RayTaskError begins its message when a worker could not import the task's function.
WORKER_IMPORT_FAILED = "failed to import on the worker"
# Ray's token authentication: its mode, then where it looks for a token, the first found winning (Ray 2.60).
RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
RAY_AUTH_VARS = (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH)
# What Ray's error says when a cluster refuses a driver's token, or its lack of one.
TOKEN_REFUSED = "InvalidAuthToken"

Job = dict
OnResult = Callable[[int, Any], str]


def map_jobs(fn: Callable[..., Any], jobs: Sequence[Job], shared: dict, inv: Invocation, on_result: OnResult,
             desc: str, progress: bool = True, on_start: Callable[[int], None] = lambda i: None,
             work: int = 0, epochs: int = 0) -> list:
    """Run `fn(**shared, **job)` for every job on inv.backend; returns the results in job order.

    `on_start(i)` is called as job i is started (locally) or handed to the cluster (Ray).
    One progress bar over the jobs, advanced as each finishes, with on_result's note.
    `work`: the training digits times epochs of the largest job, which decides whether local workers pay.
    `epochs`: the jobs' epochs in all, shown on the bar as they end where jobs run in worker processes (whose own
    bars are off; pool.run reports them).
    """
    if inv.backend == "ray":
        run = _run_ray
    else:  # side by side or not, a job trains with member_threads(inv): the same bytes either way
        run = _run_pool if side_by_side(inv, len(jobs), work) else _run_local
    results: list = [None] * len(jobs)
    with tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress or not jobs) as bar:
        shown: dict = {}  # the bar's postfix
        ended = 0  # epochs ended, where the jobs' runner reports them (stepped)

        def started(i: int) -> None:
            with tqdm.external_write_mode():  # the caller's log lines do not tear the bar
                on_start(i)

        def stepped(n: int) -> None:
            nonlocal ended
            ended += n
            if epochs:
                shown["epochs"] = f"{ended}/{epochs}"
                bar.set_postfix(shown)

        def arrived(i: int, result) -> None:
            results[i] = result
            with tqdm.external_write_mode():
                note = on_result(i, result)
            shown["last"] = f"{i + 1}: {note}"
            bar.set_postfix(shown)
            bar.update(1)
        if jobs:  # a resumed run may have none left: no cluster to join
            run(fn, jobs, shared, inv, started, arrived, progress, stepped)
    assert all(r is not None for r in results)
    return results


def _run_local(fn, jobs, shared, inv: Invocation, started, arrived: OnResult, progress: bool,
               stepped: Callable[[int], None]) -> None:  # each job shows its own epochs here
    import torch

    threads = torch.get_num_threads()  # a job sets its own count (member_threads); the driver's stages keep theirs
    try:
        for i, job in enumerate(jobs):
            started(i)
            arrived(i, fn(**shared, **job, progress=progress))
    finally:
        torch.set_num_threads(threads)


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_workers(inv: Invocation) -> int:
    """Jobs trained at once by the local backend: --workers, else as many as the cores hold at --threads each
    (default 1) on a CPU, and 1 on a GPU. A small CNN's step spreads poorly over threads (docs/usage.md, "Members
    side by side")."""
    if inv.workers:
        return inv.workers
    from .train import resolve_device

    return max(1, cores() // (inv.threads or 1)) if resolve_device(inv.device).type == "cpu" else 1


def _pool_possible(inv: Invocation, jobs: int) -> bool:
    """Whether local workers are a choice here at all: more than one job, and more than one worker to run them."""
    return inv.backend == "local" and jobs >= 2 and local_workers(inv) >= 2


def side_by_side(inv: Invocation, jobs: int, work: int) -> bool:
    """Whether local jobs run in worker processes: asked for with --workers, or by default where each job is large
    enough (POOL_MIN_WORK) to pay for the workers' start-up."""
    return _pool_possible(inv, jobs) and (inv.workers is not None or work >= POOL_MIN_WORK)


def member_threads(inv: Invocation) -> int | None:
    """torch threads of each job: --threads; else 1 where jobs run side by side (Ray tasks, local workers), and
    None (torch's default, every core) where they run one at a time. Decided by the settings alone, never by how
    many jobs are left, so a resumed run trains its last member as it would have uninterrupted. A resumed local run's
    saved count (inv.member_threads) comes first, whatever --workers it resumes with."""
    if inv.member_threads:
        return inv.member_threads
    if inv.threads:
        return inv.threads
    return 1 if inv.backend == "ray" or local_workers(inv) > 1 else None


def resolved_member_threads(inv: Invocation) -> int:
    """member_threads, with torch's count in this process where it is left to torch (before --threads is applied
    here, its default), as a run saves it for a resume."""
    import torch

    return member_threads(inv) or torch.get_num_threads()


def placement_note(inv: Invocation, jobs: int, work: int) -> str | None:
    """For the log, where the local backend has workers to choose: whether these jobs (the largest `work` digit-
    epochs) train in worker processes or one at a time in this one."""
    if not _pool_possible(inv, jobs):
        return None
    if side_by_side(inv, jobs, work):
        return f"{min(jobs, local_workers(inv))} at a time in worker processes"  # _run_pool's count
    return (f"one at a time in this process (the largest, {work:,} digit-epochs, is under the {POOL_MIN_WORK:,} "
            f"that pay for workers' start-up)")


def _run_pool(fn, jobs, shared, inv: Invocation, started, arrived: OnResult, progress: bool,
              stepped: Callable[[int], None]) -> None:  # the jobs' own bars are off: the driver's counts epochs
    pool.run(fn, jobs, shared, min(local_workers(inv), len(jobs)), inv.out, started, arrived, stepped)


def task_cpus(inv: Invocation) -> int:
    """CPUs each Ray task reserves; it runs torch with as many threads (--threads, default 1)."""
    return member_threads(inv) or 1


def _run_ray(fn, jobs, shared, inv: Invocation, started, arrived: OnResult, progress: bool,
             stepped: Callable[[int], None]) -> None:  # a task's epochs are not reported: the bar counts tasks
    ray = _import_ray()
    with _connected(ray, inv.ray_address):
        _check_versions(ray)
        refs = {name: ray.put(value) for name, value in shared.items()}  # once, not once per task
        remote = ray.remote(num_cpus=task_cpus(inv), max_retries=TASK_RETRIES)(fn)
        pending = {}
        for i, job in enumerate(jobs):
            pending[remote.remote(**refs, **job, progress=False)] = i
            started(i)
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            arrived(pending.pop(done), _get(ray, done))


def package_version() -> str:
    """This package's version where this runs (a Ray task on each node, see _check_versions)."""
    import ambiguous_digits

    return ambiguous_digits.__version__


def _check_versions(ray) -> None:
    """Every node must run this package's version: another could train another network and send back
    results saved as this one's. One zero-CPU task pinned to each node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(package_version)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    for node, ref in zip(nodes, refs):
        theirs = _get(ray, ref)
        if theirs != __version__:
            raise ConfigError(f"--backend ray: the node at {node.get('NodeManagerAddress', '?')} runs "
                              f"ambiguous-digits {theirs}, this machine {__version__}; install the same "
                              f"version on every node")


def _get(ray, ref) -> dict:
    """The task's result; a worker without this package, or a job's own one-line error (a diverged
    member), is a one-line error; other failures propagate."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (ConfigError, DataError, WriteError)):
            raise e.cause from None  # its own message, not the worker's traceback Ray wraps round it
        if WORKER_IMPORT_FAILED not in str(e):
            raise
        missing = str(e).strip().splitlines()[-1]
        raise ConfigError(f"--backend ray: a worker cannot import this package ({missing}); install "
                          f"ambiguous-digits {__version__} on every node") from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('--backend ray: Ray is not installed; install it with pip install ".[ray]"') from None
    return ray


@contextlib.contextmanager
def _connected(ray, address: str | None):
    """Connected to Ray (see _connect) inside the with block; afterwards disconnected, with this process's
    Ray authentication settings (its environment and Ray's caches of them) as they were before."""
    saved = {name: os.environ.get(name) for name in RAY_AUTH_VARS}
    try:
        _connect(ray, address)
        yield
    finally:
        ray.shutdown()
        _restore_auth(saved)


def _connect(ray, address: str | None) -> None:
    """Join the cluster at `address`; without one, Ray's own default ($RAY_ADDRESS, else a local Ray).

    A local Ray that ray.init starts turns token authentication on and, finding no token, writes one to
    ~/.ray/auth_token; every later `ray start --head` on this machine finds that file and demands the
    token, which drivers that name an address do not send. So such a Ray gets a token in this process's
    environment instead, inherited by its processes and gone with them (see _connected).
    """
    if address:
        check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address and _ray_would_write_a_token():
        os.environ[RAY_AUTH_TOKEN] = secrets.token_hex(32)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as e:
        if _token_refused(ray, e):
            raise ConfigError(_token_refused_message(address)) from None
        raise ConfigError(f"--ray-address: cannot join a Ray cluster at {address}: {_first_line(e)}") from None


def default_token_path() -> Path:
    """Where Ray looks for a token that no variable gives (and where ray.init writes a new one)."""
    return Path.home() / ".ray" / "auth_token"


def _ray_would_write_a_token() -> bool:
    """Would ray.init() write default_token_path()? Where it starts a local Ray with token authentication
    on (its default unless $RAY_AUTH_MODE says otherwise) and finds no token, it does."""
    if os.environ.get("RAY_ADDRESS") or os.environ.get(RAY_AUTH_MODE, "token").lower() != "token":
        return False
    return not (os.environ.get(RAY_AUTH_TOKEN) or os.environ.get(RAY_AUTH_TOKEN_PATH)
                or default_token_path().exists())


def _restore_auth(saved: dict) -> None:
    """Put Ray's authentication variables back as `saved`, and have Ray in this process re-read them."""
    if all(os.environ.get(name) == value for name, value in saved.items()):
        return
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    from ray._raylet import AuthenticationTokenLoader, Config as RayConfig

    RayConfig.initialize("")  # the mode first, then the token, in the order Ray's own tests reset them
    AuthenticationTokenLoader.instance().reset_cache()


def _token_refused(ray, e: BaseException | None) -> bool:
    """Did ray.init fail on token authentication (the cluster's or this driver's), however Ray wrapped it?"""
    while e is not None:
        if isinstance(e, ray.exceptions.AuthenticationError) or TOKEN_REFUSED in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _token_refused_message(address: str | None) -> str:
    where = address or os.environ.get("RAY_ADDRESS") or "the address ray.init found"
    path = default_token_path()
    return (f"--ray-address: the Ray cluster at {where} and this driver disagree on its token (RAY_AUTH_MODE is "
            f"'{os.environ.get(RAY_AUTH_MODE, 'disabled')}' here; `ray start --head` turns token authentication on "
            f"wherever {path} exists): connect with RAY_AUTH_MODE=token and the cluster's token in $RAY_AUTH_TOKEN "
            f"or {path}, or restart the cluster without that file")


def check_backend(inv: Invocation) -> None:
    """Fail fast, before anything is written: Ray importable, its cluster's address answering."""
    if inv.backend == "ray":
        _import_ray()
        env = os.environ.get("RAY_ADDRESS", "")
        if inv.ray_address:
            check_reachable(inv.ray_address)
        elif "://" not in env and env.rpartition(":")[2].isdigit():  # HOST:PORT (not 'auto', not a ray:// client)
            check_reachable(env, flag="$RAY_ADDRESS")


def check_reachable(address: str, flag: str = "--ray-address") -> None:
    """Raise ConfigError unless HOST:PORT answers as a gRPC server (a Ray head's GCS) within the timeout.

    ray.init itself waits minutes on a silent address, and exits the process when
    something other than Ray listens there, so the address is probed first.
    """
    host, port = split_address(address, flag)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.sendall(HTTP2_PREFACE + HTTP2_SETTINGS)
            frame = conn.recv(9)
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise ConfigError(f"{flag}: cannot reach a Ray cluster at {address} ({reason})") from None
    if len(frame) < 9 or frame[3] != HTTP2_SETTINGS[3]:
        raise ConfigError(f"{flag}: {address} answers, but not as a Ray head node (no gRPC there)")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

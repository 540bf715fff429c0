"""Local worker processes: jobs side by side on this machine, each in a spawned process of its own that ends with
the driver, the shared arrays sent to each once, results and finished epochs reported back to the driver.

backend decides whether and how many (local_workers, side_by_side); this module only runs them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .config import ConfigError

# Seconds between the driver's checks that no worker has died (besides the pool's own), and of its epochs' count.
WORKER_CHECK_S = 1.0
# prctl's option that has the kernel signal a process when its parent ends (<linux/prctl.h>).
PR_SET_PDEATHSIG = 1

# The jobs' shared arrays in a worker process, sent once when it starts (_hold), not once per job.
_SHARED: dict = {}
# In a worker process: the queue through which epoch_done tells the driver of an epoch ended (empty in the
# driver: its jobs show their own bars).
_EPOCHS: list = []


def epoch_done() -> None:
    """Tell the driver's bar that an epoch of this job ended (in a worker process; nothing elsewhere)."""
    if _EPOCHS:
        _EPOCHS[0].put(1)


def _hold(shared: dict, driver: int, epochs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process: the driver stops its workers
    _die_with(driver)
    # A thread lock for tqdm's (disabled) bars: its default, a semaphore, is reported leaked by a worker stopped early.
    tqdm.set_lock(threading.RLock())
    _SHARED.update(shared)
    _EPOCHS[:] = [epochs]


def _die_with(driver: int) -> None:
    """Linux: the kernel kills this worker when the driver (its parent) ends, even killed outright, so no member
    trains on into its run directory. Without prctl (not Linux) such a worker may finish the member it is on."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no prctl: not Linux
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != driver:  # the driver ended before prctl took effect
        os._exit(1)


def _call_held(fn: Callable[..., Any], job: dict) -> Any:
    return fn(**_SHARED, **job, progress=False)  # one bar, the driver's, over the jobs


def run(fn: Callable[..., Any], jobs: Sequence[dict], shared: dict, workers: int, out: Path,
        started: Callable[[int], None], arrived: Callable[[int, Any], Any], stepped: Callable[[int], None]) -> None:
    """Up to `workers` jobs at a time, each in a worker process; each result reaches `arrived` here, in the driver,
    as it finishes, and each epoch `stepped`: the workers report all but a job's last (epoch_done), its end the
    last. A job's error stops the others (their epochs so far are saved in `out`: --resume goes on)."""
    waiting = list(enumerate(jobs))[::-1]
    # Spawned, not forked: a process forked after torch has run can hang in its thread pool, and a spawned
    # worker's parent is the driver, with whom it ends (_die_with).
    context = multiprocessing.get_context("spawn")
    epochs = context.SimpleQueue()
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_hold,
                                   initargs=(shared, os.getpid(), epochs))
    running: dict = {}
    processes: dict = {}  # kept here: a broken pool forgets its workers before it has ended them all
    try:
        stepped(0)
        while waiting or running:
            while waiting and len(running) < workers:  # started when it starts, so the log says what runs
                i, job = waiting.pop()
                running[executor.submit(_call_held, fn, job)] = i
                processes.update(executor._processes or {})
                started(i)
            done, _ = wait(running, timeout=WORKER_CHECK_S, return_when=FIRST_COMPLETED)
            if not done and multiprocessing.connection.wait([w.sentinel for w in processes.values()], timeout=0):
                raise BrokenProcessPool  # a worker ended mid-job: Python 3.11's pool can miss one spawned late
            reported = 0
            while not epochs.empty():  # this loop is its only reader
                reported += epochs.get()
            stepped(reported)
            for future in done:
                arrived(running.pop(future), future.result())
                stepped(1)
    except BrokenProcessPool:
        raise ConfigError(f"--workers: a worker process died (killed, out of memory, or failed to start); "
                          f"--resume {out} goes on from the last saved epochs (with --workers 1 one member at a "
                          f"time, in less memory)") from None
    finally:
        if running:  # an error or an interrupt: the other members' workers would train on to their end
            # No public way to stop them before 3.14. A worker stopped mid-way through sending its result could in
            # principle leave the pool's reader waiting; the window is the milliseconds of one send.
            for process in processes.values():
                process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        epochs.close()

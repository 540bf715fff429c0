"""Training an ensemble of independent members (a run's, or an audit's folds'), each saved as it finishes."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import numpy as np
import torch

from . import backend, members, pool
from .config import Invocation, Recipe

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class MemberPlan:
    """One member to have: where it is saved, its seed, its job's own arguments, its evaluation labels."""

    stem: str
    seed: int
    label: str  # for the log, e.g. "member 2/5"
    args: dict  # the job function's own keyword arguments (the shared arrays go to every job)
    labels: np.ndarray  # (N,) labels of the images it predicts, for its accuracy
    train_images: int  # how many it trains on, for the log
    model_name: str | None = None  # models/member-M.pt for run members


def train_members(recipe: Recipe, inv: Invocation, plan: list[MemberPlan], fn, shared: dict, log: Log,
                  desc: str = "members") -> list[members.MemberResult]:
    """One result per planned member: loaded when it finished earlier (--resume), else run on inv.backend.

    `fn(recipe=, device=, threads=, seed=, **shared, **plan.args, state=, on_epoch=, progress=)` is the job
    (jobs.member_job, jobs.fold_member_job); each result is saved in inv.out as it arrives.
    """
    out = inv.out
    results = [members.load_member(out, p.stem, p.seed) for p in plan]
    for p, done in zip(plan, results):
        if done is not None:
            members.drop_states(out, p.stem)  # a kill between listing it and dropping them leaves epoch states
            log(f"{p.label} (seed {p.seed}): finished earlier, loaded from {out / p.stem}.npz")
    todo = [i for i, done in enumerate(results) if done is None]

    def arrived(j: int, result: members.MemberResult) -> str:
        p = plan[todo[j]]
        members.save_member(out, p.stem, result, p.model_name)
        results[todo[j]] = result
        accuracy = f"{(result.probs.argmax(1) == p.labels).mean():.2%}"
        log(f"{p.label} (seed {p.seed}): accuracy {accuracy} on its {len(p.labels)} images, saved")
        return accuracy

    def started(j: int) -> None:
        p, state = plan[todo[j]], member_jobs[j]["state"]
        after = f", resuming after epoch {state['epoch']}" if state else ""
        log(f"{p.label} (seed {p.seed}): training on {p.train_images} images{after}")

    member_jobs = [_job(recipe, inv, plan[i]) for i in todo]
    work = recipe.epochs * max((plan[i].train_images for i in todo), default=0)
    note = backend.placement_note(inv, len(todo), work)
    if note:
        log(f"{len(todo)} {desc}: {note}")
    epochs = sum(recipe.epochs - (job["state"]["epoch"] if job["state"] else 0) for job in member_jobs)
    backend.map_jobs(fn, member_jobs, shared, inv, arrived, desc, inv.progress, on_start=started, work=work,
                     epochs=epochs)
    return results


def _job(recipe: Recipe, inv: Invocation, p: MemberPlan) -> dict:
    """The job's own arguments: its seed, and the training state an interrupted member left behind.

    Locally each epoch's state is saved as it ends; a Ray task runs on another machine, so it
    resumes from a saved state but saves none of its own.
    """
    on_epoch = partial(_epoch_ended, inv.out, p.stem) if inv.backend == "local" else None
    return {"recipe": recipe, "device": inv.device, "threads": backend.member_threads(inv), "seed": p.seed, **p.args,
            "state": members.latest_state(inv.out, p.stem), "on_epoch": on_epoch}


def _epoch_ended(out, stem: str, state: dict) -> None:
    """A local member's epoch ended: its state saved, and the driver's bar told where it runs in a worker."""
    members.save_state(out, stem, state)
    pool.epoch_done()


def where(inv: Invocation, device, precision) -> str:
    """Where the jobs run, for the log: this machine's device, workers and threads, or the Ray cluster."""
    if inv.backend == "ray":
        return (f"as Ray tasks of {backend.task_cpus(inv)} CPU(s) each on "
                f"{inv.ray_address or 'the default Ray cluster'}")
    threads = backend.member_threads(inv) or torch.get_num_threads()
    workers = backend.local_workers(inv)
    at_once = f"{threads} thread(s) a member, up to {workers} at a time" if workers > 1 else f"{threads} threads"
    return f"{device}, bf16 autocast {'on' if precision.autocast else 'off'}, {at_once}"

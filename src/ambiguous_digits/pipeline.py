"""The `run` pipeline: data -> train -> predict -> scores -> outputs, with each stage timed."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import audit, backend, data, files, jobs, manifest, members, outputs, report, scores, validate
from .config import RANKING_NAMES, Config, ConfigError
from .model import describe
from .train import new_net, setup

Log = Callable[[str], None]
CONFIG_FILE = "config.json"
PROBS_FILE = "probs.npz"
SCORES_FILE = "scores.csv"
# Written by `experiment` (experiment.py) into a run's directory, from that run's numbers.
EXPERIMENT_FILES = ("experiment.json", "experiment.md", "experiment_probs.npz")
SUMMARY_FILE = "summary.json"
VALIDATION_FILE = "validation.json"
# What a run was started on (an audit: its AUDIT_FILES data record): the data set's record with the MD5 of every file
# or array. --resume compares it with the data loaded then, so an edited npz:/idx: file
# never mixes members trained on the old data with members trained on the new.
DATA_FILE = "data.json"
MEMBER_STEM = "members/member-{m}"
MODEL_FILE = "models/member-{m}.pt"
# Present only while a run or an audit claims its directory (see _claiming): clearing an
# earlier run with --force, then writing its config and listing it in manifest.json. Not a
# hidden file, so emptying the folder by hand (rm -rf dir/*) takes it too.
CLEARING_FILE = "claiming-run-directory.txt"
# Folders of per-digit images and per-member files; a --force rerun starts them afresh.
RUN_FOLDERS = ("members", "models", "folds", "imgs", "predictions")


# ---------------------------------------------------------------------------
# The run directory and the data directory, checked before anything is written
# ---------------------------------------------------------------------------
def check_out_dir(out: Path, force: bool, flag: str = "--out", any_folder: bool = False) -> None:
    """Refuse a file, an unwritable place, an existing run without --force, and any other non-empty
    directory (--force overwrites only a run's directory: one with a manifest.json); creates nothing.
    With `any_folder` (predict's images accumulate) any directory will do."""
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{flag}: {out} is a file, not a directory")
        entries = set()
        if not any_folder and out.is_dir():
            entries = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if entries:
            # A run's directory: its manifest, or the marker of a run killed while claiming the
            # directory (clearing an earlier run, or before its manifest listed its config) beside
            # nothing but a run's own files.
            own = {CLEARING_FILE, CONFIG_FILE, *_earlier_run_names(), *RUN_FOLDERS}
            claimed = (out / CLEARING_FILE).is_file() and entries <= own
            if not ((out / manifest.MANIFEST_FILE).is_file() or claimed):
                raise ConfigError(f"{flag}: {out} is not empty and is not a run directory (no "
                                  f"{manifest.MANIFEST_FILE}); give an empty or new directory")
            if not force:
                raise ConfigError(f"{flag}: {out} is not empty (it holds an earlier run); pass --force to overwrite")
        parent = next(p for p in (out, *out.parents) if p.exists())
    except OSError as e:  # a directory we may not look into
        raise ConfigError(f"{flag}: cannot read {out}: {e.strerror or e}") from None
    if not parent.is_dir():
        raise ConfigError(f"{flag}: cannot create {out}: {parent} is a file")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write to {parent}: {e.strerror or e}") from None


def check_data_dir(cfg: Config) -> None:
    """A published data set's cache must be (or become) a directory; user data sets have none."""
    if cfg.dataset not in data.PUBLISHED:
        return
    path = Path(cfg.data_dir).expanduser() if cfg.data_dir else data.default_data_dir(cfg.dataset)
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as e:
        raise ConfigError(f"--data-dir: cannot read {path}: {e.strerror or e}") from None
    if not existing.is_dir():
        raise ConfigError(f"--data-dir: {existing} is a file, not a directory")


def prepare_out_dir(out: Path, force: bool, any_folder: bool = False) -> None:
    check_out_dir(out, force, any_folder=any_folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out: cannot create {out}: {e.strerror or e}") from None


@contextmanager
def _claiming(out: Path) -> Iterator[None]:
    """CLEARING_FILE marks `out` as a run's directory while a run or an audit claims it: from before
    an earlier run is cleared until the new config is listed in manifest.json. A kill at any moment
    between leaves a directory that --force (or an audit) may claim again. Not removed on an error:
    the directory is then still half-claimed."""
    files.write_text(out / CLEARING_FILE, "A run or an audit is claiming this directory: clearing any earlier run, "
                     "then listing its config in manifest.json. If none is running, it was killed meanwhile, and "
                     "`--force` may clear this directory.\n")
    yield
    (out / CLEARING_FILE).unlink()


def _earlier_run_names() -> list[str]:
    """The files a run, its audits, validation, report and experiment write at the top of their directory."""
    names = [SUMMARY_FILE, VALIDATION_FILE, report.REPORT_FILE, SCORES_FILE, PROBS_FILE, DATA_FILE, *EXPERIMENT_FILES]
    names += [f"top_{name}.png" for name in RANKING_NAMES]  # contact sheets, of whichever rankings the run had
    names += [n for files_ in AUDIT_FILES.values() for n in files_ if n.endswith((".csv", ".npz", ".json", ".png"))]
    return names


def _remove_earlier_run(out: Path) -> None:
    """With --force: the earlier manifest first (so nothing of it is trusted), then every result
    written from it (members, audits, validation, report), so a new run never sits beside another's.
    Called inside _claiming, so a kill midway leaves a directory --force may clear again."""
    (out / manifest.MANIFEST_FILE).unlink(missing_ok=True)
    for name in _earlier_run_names():
        (out / name).unlink(missing_ok=True)
    for folder in RUN_FOLDERS:
        shutil.rmtree(out / folder, ignore_errors=True)


def _remove_temp_files(out: Path) -> None:
    """Temporary files of writes a kill interrupted (files.atomic_path's names); never listed, never used."""
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load_config(run_dir: Path, name: str = CONFIG_FILE) -> Config:
    """The config a run directory was started with (checked against the manifest), writing into run_dir."""
    path = manifest.verified(run_dir, name)
    try:
        saved = Config.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a config this version can read ({e})") from None
    return dataclasses.replace(saved, out=Path(run_dir), force=False)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def environment(device: torch.device, precision) -> dict:
    libs = {name: version(name) for name in ("torch", "numpy", "matplotlib", "pillow", "tqdm")}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "bf16_autocast": precision.autocast,
        "libraries": libs,
    }


def _record_data(out: Path, name: str, ds: data.Dataset) -> None:
    files.write_json(out / name, ds.record())
    manifest.record(out, out / name)


def _check_resume_data(out: Path, name: str, ds: data.Dataset) -> None:
    """--resume only on the data the run started on (directories older than this record are not checked)."""
    started = manifest.listed_json(out, name)
    if started is None:
        return
    if started.get("md5") != ds.checksums:
        changed = sorted(k for k in ds.checksums if started.get("md5", {}).get(k) != ds.checksums[k])
        raise ConfigError(f"--resume: {ds.name}'s {', '.join(changed) or 'files'} changed since this run started "
                          f"(MD5s in {out / name}); start a new run (--force) on the new data")


def check_limits(cfg: Config, ds: data.Dataset) -> None:
    """--train-limit and --test-limit against the images loaded (a user data set's counts are known only now)."""
    for flag, limit, have, where in (("--train-limit", cfg.train_limit, len(ds.y_train), "training"),
                                     ("--test-limit", cfg.test_limit, len(ds.y_test), "test")):
        if limit is not None and limit > have:
            raise ConfigError(f"{flag}: {ds.name} has {have} {where} images, got {limit}")


def _subset(ds: data.Dataset, cfg: Config) -> tuple[np.ndarray, ...]:
    """The first train_limit / test_limit images (all by default): indices stay canonical."""
    tr, te = slice(cfg.train_limit), slice(cfg.test_limit)
    return ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te]


def write_results(out: Path, cfg: Config, x_test: np.ndarray, table: dict[str, np.ndarray],
                  class_names: tuple[str, ...]) -> dict[str, list[int]]:
    """scores.csv, imgs/<index>.png for every image in a top-K list, one contact sheet per chosen ranking."""
    outputs.write_table(out / SCORES_FILE, table)
    written, tops = [out / SCORES_FILE], {}
    for name in cfg.rankings:
        rows = scores.top_indices(table[f"rank_{name}"], cfg.top)
        tops[name] = [int(table["index"][r]) for r in rows]
        written += _write_images(out / "imgs", x_test, rows)
        titles = [f"#{table['index'][r]}: true {class_names[table['label'][r]]}, "
                  f"pred {class_names[table['pred'][r]]}\n"
                  f"p={table['prob_pred'][r]:.3f}" for r in rows]
        outputs.contact_sheet(out / f"top_{name}.png", x_test[rows], titles,
                              f"Top {len(rows)} by {name.replace('_', '-')}")
        written.append(out / f"top_{name}.png")
    manifest.record(out, *written)
    return tops


# ---------------------------------------------------------------------------
# The ensemble: each member an independent job, saved as soon as it finishes
# ---------------------------------------------------------------------------
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


def ensemble(cfg: Config, out: Path, plan: list[MemberPlan], fn, shared: dict, progress: bool, log: Log,
             desc: str = "members") -> list[members.MemberResult]:
    """One result per planned member: loaded when it finished earlier (--resume), else run on cfg.backend.

    `fn(cfg=, seed=, **shared, **plan.args, state=, on_epoch=, progress=)` is the job
    (jobs.member_job, jobs.fold_member_job); each result is saved as it arrives.
    """
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

    member_jobs = [_job(cfg, out, plan[i]) for i in todo]
    backend.map_jobs(fn, member_jobs, shared, cfg, arrived, desc, progress, on_start=started)
    return results


def _job(cfg: Config, out: Path, p: MemberPlan) -> dict:
    """The job's own arguments: its seed, and the training state an interrupted member left behind.

    Locally each epoch's state is saved as it ends (members.save_state); a Ray task runs
    on another machine, so it resumes from a saved state but saves none of its own.
    """
    on_epoch = partial(members.save_state, out, p.stem) if cfg.backend == "local" else None
    return {"cfg": cfg, "seed": p.seed, **p.args, "state": members.latest_state(out, p.stem), "on_epoch": on_epoch}


def _save_probs(out: Path, probs: np.ndarray, labels: np.ndarray, seeds: list[int]) -> None:
    """probs.npz: per-member test probabilities (M, N, K) float32, labels (N,), index (N,), seeds (M,)."""
    with files.atomic_path(out / PROBS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, probs=probs.astype(np.float32), labels=labels, index=np.arange(len(labels)),
                     seeds=np.array(seeds, dtype=np.uint64))
    manifest.record(out, out / PROBS_FILE)


def _where(cfg: Config, device, precision) -> str:
    """Where the jobs run, for the log: this process's device and threads, or the Ray cluster."""
    if cfg.backend == "ray":
        return (f"as Ray tasks of {backend.task_cpus(cfg)} CPU(s) each on "
                f"{cfg.ray_address or 'the default Ray cluster'}")
    return (f"{device}, bf16 autocast {'on' if precision.autocast else 'off'}, "
            f"{torch.get_num_threads()} threads")


def check_run(cfg: Config) -> None:
    """The flags against the data and the directories, before the data are loaded; writes nothing."""
    cfg.check_top()
    check_data_dir(cfg)
    check_out_dir(cfg.out, cfg.force)


def start_run(cfg: Config, test_images: int) -> None:
    """Once the data are loaded (check_run ran before): --top against the test images scored, then
    clear (with --force) and claim cfg.out (prepare_out_dir checks it again: the load may have taken minutes)."""
    cfg.check_top(test_images)
    prepare_out_dir(cfg.out, cfg.force)
    with _claiming(cfg.out):
        _remove_earlier_run(cfg.out)
        files.write_text(cfg.out / CONFIG_FILE, cfg.dumps() + "\n")
        manifest.record(cfg.out, cfg.out / CONFIG_FILE)


def _begin(cfg: Config, resume: bool, check: Callable[[Config], None]):
    """Everything checked before the data are loaded (a bad flag costs nothing); this process's device, precision.

    `check` (check_run, check_audit) checks a new run's flags and directories; a resumed
    one had them checked when it started, and its interrupted writes' temporary files go.
    """
    backend.check_backend(cfg)
    if resume:
        check_data_dir(cfg)
        _remove_temp_files(cfg.out)
    else:
        check(cfg)
    return setup(cfg)  # here; each job resolves its own too


def run(cfg: Config, log: Log = print, progress: bool = True, resume: bool = False) -> dict:
    """Run the whole pipeline into cfg.out; returns the summary also written as summary.json.

    With `resume`, cfg is the run directory's own (load_config): finished members are
    loaded, an interrupted one continues from its last epoch, and the rest is redone.
    """
    if resume and manifest.listed(cfg.out, SUMMARY_FILE):
        log(f"{cfg.out} holds a finished run; nothing to resume")
        return json.loads(manifest.verified(cfg.out, SUMMARY_FILE).read_text())
    device, precision = _begin(cfg, resume, check_run)
    timings: dict[str, float] = {}
    wall = time.perf_counter()
    with timed(timings, "data"):
        ds = data.load_dataset(cfg.dataset, cfg.data_dir, class_names=cfg.class_names, log=log, progress=progress)
        x_train, y_train, x_test, y_test = _subset(ds, cfg)
    if resume:
        _check_resume_data(cfg.out, DATA_FILE, ds)
    else:
        check_limits(cfg, ds)
        start_run(cfg, len(y_test))  # a user data set's size is known only now
        _record_data(cfg.out, DATA_FILE, ds)
    log(f"training {cfg.members} CNN(s) on {len(x_train)} {ds.name} images, {ds.num_classes} classes, "
        f"{_where(cfg, device, precision)}")
    seeds = cfg.member_seeds()
    plan = [MemberPlan(MEMBER_STEM.format(m=m), seed, f"member {m + 1}/{cfg.members}", {"num_classes": ds.num_classes},
                       y_test, len(y_train), MODEL_FILE.format(m=m)) for m, seed in enumerate(seeds)]
    with timed(timings, "train"):
        results = ensemble(cfg, cfg.out, plan, jobs.member_job,
                           {"x_train": x_train, "y_train": y_train, "x_eval": x_test}, progress, log)
    timings["predict"] = round(sum(r.predict_seconds for r in results), 3)  # inside each member's job
    member_probs = np.stack([r.probs for r in results])
    with timed(timings, "scores"):
        table = scores.score_table(member_probs, y_test)
    with timed(timings, "write"):
        _save_probs(cfg.out, member_probs, y_test, seeds)
        tops = write_results(cfg.out, cfg, x_test, table, ds.class_names)
    summary = _run_summary(cfg, ds, results, table, tops, device, precision)
    summary["seconds"] = {**timings, "total": round(time.perf_counter() - wall, 3)}
    files.write_json(cfg.out / SUMMARY_FILE, summary)
    manifest.record(cfg.out, cfg.out / SUMMARY_FILE)  # listed last: the run is finished
    report.write_report(cfg.out, dataset=ds)
    return summary


def _run_summary(cfg: Config, ds: data.Dataset, results, table, tops, device, precision) -> dict:
    labels = table["label"]
    member_acc = [float((r.probs.argmax(1) == labels).mean()) for r in results]
    errors = int((table["pred"] != labels).sum())
    return {
        "test_accuracy": 1 - errors / len(labels),
        "test_errors": errors,
        "test_digits": len(labels),
        "train_digits": len(ds.y_train[:cfg.train_limit]),
        "member_accuracy": member_acc,
        "member_accuracy_mean": float(np.mean(member_acc)),
        "member_accuracy_std": float(np.std(member_acc)),
        "members": cfg.members,
        "member_seeds": [r.seed for r in results],
        "model": describe(new_net(cfg, ds.num_classes)),
        "history": [r.history for r in results],
        "top": tops,
        "top_ambiguous": [{"index": int(i), "label": ds.class_names[table["label"][i]], "pred": ds.class_names[table["pred"][i]]}
                          for i in scores.top_indices(table["rank_ambiguity"], cfg.top)],  # whatever --rankings
        "data": ds.record(),
        "environment": environment(device, precision),
        "backend": cfg.backend,
        "config": cfg.to_json(),
    }


# ---------------------------------------------------------------------------
# audit: suspected label errors by K-fold cross-validation + cleanlab
# ---------------------------------------------------------------------------
AUDIT_FILES = {  # split -> (table, probabilities, contact sheet, image folder, summary, config, data record)
    "test": ("label_issues.csv", "cv_probs_test.npz", "top_label_issues.png", "imgs", "audit_test.json",
             "audit_test_config.json", "audit_test_data.json"),
    "train": ("train_label_issues.csv", "cv_probs_train.npz", "top_train_label_issues.png", "imgs/train",
              "audit_train.json", "audit_train_config.json", "audit_train_data.json"),
}
FOLD_STEM = "folds/{split}-fold-{f}-member-{m}"


def check_audit(cfg: Config) -> None:
    """The flags against the data and the directories, before the data are loaded; writes nothing."""
    cfg.check_folds()
    check_data_dir(cfg)
    _check_no_audit(cfg)
    check_out_dir(cfg.out, force=True)


def _check_no_audit(cfg: Config) -> None:
    """The audit may join a finished run's directory, but never overwrites an audit without --force."""
    table = cfg.out / AUDIT_FILES[cfg.split][0]
    if table.exists() and not cfg.force:
        raise ConfigError(f"--out: {table} exists; pass --force to overwrite it")


def start_audit(cfg: Config, ds: data.Dataset, images: int) -> None:
    """Once the data are loaded (check_audit ran before): --folds against the split's images, the data
    against a run already in cfg.out, then claim cfg.out for this split's audit (checked again: the load
    may have taken minutes). An interrupted audit's folds are dropped (resume them with --resume), and
    the validation of an earlier test-set audit is unlisted (it scored that audit's ranking)."""
    config_name = AUDIT_FILES[cfg.split][5]
    cfg.check_folds(images)
    _check_no_audit(cfg)
    _check_same_data(cfg.out, ds, cfg.split)
    prepare_out_dir(cfg.out, force=True)
    with _claiming(cfg.out):
        prefix = f"folds/{cfg.split}-fold-"
        stale = {p.relative_to(cfg.out).as_posix() for p in cfg.out.glob(f"{prefix}*")}
        stale |= {name for name in manifest.load(cfg.out) if name.startswith(prefix)}
        unlist = [AUDIT_FILES[cfg.split][6]]  # the earlier audit's data record: this one's is written next
        unlist += [VALIDATION_FILE] if cfg.split == "test" else []  # unlisted (so unused), the file left alone
        manifest.forget(cfg.out, *AUDIT_FILES[cfg.split][:3], AUDIT_FILES[cfg.split][4], *unlist, *stale)
        for name in stale:
            (cfg.out / name).unlink(missing_ok=True)
        files.write_text(cfg.out / config_name, cfg.dumps() + "\n")
        manifest.record(cfg.out, cfg.out / config_name)


def _check_same_data(out: Path, ds: data.Dataset, split: str) -> None:
    """An audit joins a run's directory, or the other split's audit, only when it audits the same
    data (same files, same MD5s)."""
    summary = manifest.listed_json(out, SUMMARY_FILE)
    # A finished run's data are in its summary; a run in progress (or killed) has only DATA_FILE.
    run_data = summary.get("data", {}) if summary is not None else manifest.listed_json(out, DATA_FILE)
    other = next(s for s in AUDIT_FILES if s != split)
    held = [("a run", run_data), (f"a {other}-set audit", manifest.listed_json(out, AUDIT_FILES[other][6]))]
    for what, record in held:
        if record is not None and record.get("md5") != ds.checksums:
            raise ConfigError(f"--dataset: {out} holds {what} on {record.get('dataset', 'other data')}, and these "
                              f"data ({ds.name}) are not its files (their MD5s differ); audit that data set "
                              f"(its --dataset), or give another --out")


def cross_val_probs(cfg: Config, out: Path, extra, x, y, num_classes: int, progress: bool, log: Log):
    """Out-of-sample probabilities (N, K) for every image of (x, y), and the (N,) fold of each.

    Every member of every fold is an independent job on cfg.backend (jobs.fold_member_job,
    seeded by cfg.member_seeds(fold)), saved as it finishes; all folds' jobs run at once.
    """
    folds = audit.fold_ids(len(y), cfg.folds, cfg.seed)
    plan = [MemberPlan(FOLD_STEM.format(split=cfg.split, f=f, m=m), seed,
                       f"fold {f + 1}/{cfg.folds}, member {m + 1}/{cfg.members}",
                       {"num_classes": num_classes, "fold": f}, y[folds == f], len(extra[1]) + int((folds != f).sum()))
            for f in range(cfg.folds) for m, seed in enumerate(cfg.member_seeds(fold=f))]
    shared = {"extra_x": extra[0], "extra_y": extra[1], "x": x, "y": y, "folds": folds}
    results = ensemble(cfg, out, plan, jobs.fold_member_job, shared, progress, log, desc="fold members")
    probs = np.zeros((len(y), num_classes), dtype=np.float32)
    for f in range(cfg.folds):
        held = folds == f
        probs[held] = np.mean([r.probs for r in results[f * cfg.members : (f + 1) * cfg.members]], axis=0)
        log(f"fold {f + 1}/{cfg.folds}: accuracy on its {held.sum()} held-out images "
            f"{(probs[held].argmax(1) == y[held]).mean():.2%}")
    return probs, folds


def run_audit(cfg: Config, log: Log = print, progress: bool = True, resume: bool = False) -> dict:
    """Rank every digit of cfg.split by how likely its label is wrong; writes the table and images.

    With `resume`, cfg is the audit's own (load_config) and finished fold members are loaded.
    """
    table_name, probs_name, sheet_name, img_dir, summary_name, _, data_name = AUDIT_FILES[cfg.split]
    if resume and manifest.listed(cfg.out, summary_name):
        log(f"{cfg.out} holds a finished {cfg.split}-set audit; nothing to resume")
        return json.loads(manifest.verified(cfg.out, summary_name).read_text())
    device, precision = _begin(cfg, resume, check_audit)
    start = time.perf_counter()
    ds = data.load_dataset(cfg.dataset, cfg.data_dir, class_names=cfg.class_names, log=log, progress=progress)
    x_train, y_train, x_test, y_test = _subset(ds, cfg)
    if cfg.split == "test":
        extra, x, y = (x_train, y_train), x_test, y_test
    else:
        extra, x, y = (x_train[:0], y_train[:0]), x_train, y_train
    if resume:
        _check_resume_data(cfg.out, data_name, ds)
    else:
        check_limits(cfg, ds)
        start_audit(cfg, ds, len(y))  # a user data set's size is known only now
        _record_data(cfg.out, data_name, ds)
    log(f"{cfg.folds} folds of {cfg.members} CNN(s), {_where(cfg, device, precision)}")
    probs, folds = cross_val_probs(cfg, cfg.out, extra, x, y, ds.num_classes, progress, log)
    with files.atomic_path(cfg.out / probs_name) as tmp, open(tmp, "wb") as f:
        np.savez(f, probs=probs, labels=y, folds=folds, index=np.arange(len(y)))
    manifest.record(cfg.out, cfg.out / probs_name)
    pooled, run_members = _pool_with_run(cfg, probs, y)
    if run_members:
        log(f"pooling the {cfg.members} cross-validated CNN(s) per digit with the run's {run_members} members "
            f"(trained on the training set only, so also out-of-sample for every test digit)")
    table = audit.label_issue_table(y, pooled)
    names = ds.class_names
    top = _write_audit_results(cfg, table, x, y, names)
    summary = {
        "split": cfg.split, "digits": len(y), "folds": cfg.folds, "members_per_fold": cfg.members,
        "run_members_pooled": run_members,
        "cv_accuracy": float((probs.argmax(1) == y).mean()),
        "label_issues_found": int(table["is_label_issue"].sum()),
        "top": [int(i) for i in top], "top_labels": [[names[y[i]], names[table["suggested_label"][i]]] for i in top],
        "quality_method": audit.QUALITY_METHOD,
        "fold_seeds": [cfg.member_seeds(fold=f) for f in range(cfg.folds)],
        "seconds": round(time.perf_counter() - start, 3),
        "data": ds.record(),
        "environment": environment(device, precision), "config": cfg.to_json(),
    }
    files.write_json(cfg.out / summary_name, summary)
    manifest.record(cfg.out, cfg.out / summary_name)
    _refresh_report(cfg.out, ds, log)
    return summary


def _write_audit_results(cfg: Config, table: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                         names: tuple[str, ...]) -> np.ndarray:
    """The label-issue table, the top digits' images and their contact sheet; returns the top rows."""
    table_name, _, sheet_name, img_dir, _, _, _ = AUDIT_FILES[cfg.split]
    outputs.write_table(cfg.out / table_name, table)
    top = scores.top_indices(table["rank"].astype(float), cfg.top)
    written = _write_images(cfg.out / img_dir, x, top)
    titles = [f"#{i}: {names[y[i]]} \u2192 {names[table['suggested_label'][i]]}\nq={table['label_quality'][i]:.2g}"
              for i in top]
    outputs.contact_sheet(cfg.out / sheet_name, x[top], titles,
                          f"Top {len(top)} suspected label errors ({cfg.split} set; given \u2192 suggested)")
    manifest.record(cfg.out, cfg.out / table_name, cfg.out / sheet_name, *written)
    return top


def _pool_with_run(cfg: Config, cv_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, K) mean over every out-of-sample CNN of each digit, and how many run members joined.

    For the test split, a finished run in the same directory holds M members trained on
    the training digits only: they never saw a test digit, so they are out-of-sample
    too, and pooling them steadies the ranking. The training split has no such models.
    """
    if cfg.split != "test" or not manifest.listed(cfg.out, PROBS_FILE):
        return cv_probs, 0
    with np.load(manifest.verified(cfg.out, PROBS_FILE), allow_pickle=False) as z:
        run_probs, run_labels = z["probs"], z["labels"]
    if run_probs.shape[1:] != cv_probs.shape or not np.array_equal(run_labels, labels):
        return cv_probs, 0
    m = len(run_probs)
    return (cv_probs * cfg.members + run_probs.sum(axis=0)) / (cfg.members + m), m


def _refresh_report(run_dir: Path, ds: data.Dataset | None = None, log: Log = print) -> None:
    """Re-render report.html when run_dir holds a finished run, so new results show up in it."""
    if not manifest.listed(run_dir, SUMMARY_FILE):
        return
    try:
        report.write_report(run_dir, dataset=ds)
    except (ConfigError, data.DataError, files.WriteError) as e:  # e.g. an audit over other images: keep the results
        log(f"report.html not refreshed: {e}")


def _write_images(folder: Path, x: np.ndarray, rows) -> list[Path]:
    files.make_dirs(folder)
    for r in rows:
        outputs.write_digit(folder / f"{r}.png", x[r])
    return [folder / f"{r}.png" for r in rows]


# ---------------------------------------------------------------------------
# validate: our rankings against the human review of 100 test digits
# ---------------------------------------------------------------------------
def run_dataset(run_dir: Path) -> str:
    """The --dataset a run directory's results come from (runs older than --dataset: mnist)."""
    for name in (SUMMARY_FILE, AUDIT_FILES["test"][4]):
        if manifest.listed(run_dir, name):
            return json.loads(manifest.verified(run_dir, name).read_text()).get("config", {}).get("dataset", "mnist")
    return "mnist"


def run_validate(run_dir: Path) -> dict:
    """validation.json: each available ranking (audit's label issues, the run's ambiguity) vs the review."""
    sources = {"label_issues": (run_dir / AUDIT_FILES["test"][0], "rank"),
               "ambiguity": (run_dir / SCORES_FILE, "rank_ambiguity")}
    manifest.require(run_dir)
    available = {k: (manifest.verified(run_dir, v[0].name), v[1]) for k, v in sources.items()
                 if manifest.listed(run_dir, v[0].name)}  # written (and listed); unlisted ones are not complete
    if not available:
        raise ConfigError(f"RUN_DIR: {run_dir} has neither label_issues.csv (run `audit`) nor scores.csv (run `run`)")
    dataset = run_dataset(run_dir)
    if dataset not in validate.REVIEWS:
        raise ConfigError(f"RUN_DIR: {run_dir} is a run on {dataset}, and no human review of {dataset}'s labels "
                          f"exists to validate against (only MNIST's test set has one)")
    review = validate.load_review(dataset)
    result = {}
    for name, (path, column) in available.items():
        table = outputs.read_table(path)  # raises ConfigError naming the file
        if column not in table:
            raise ConfigError(f"{path}: no column {column!r}")
        try:
            result[name] = validate.validate_ranking(table[column], review)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None
    out = {"rankings": result, "review": validate.REVIEWS[dataset]}
    files.write_json(run_dir / VALIDATION_FILE, out)
    manifest.record(run_dir, run_dir / VALIDATION_FILE)
    _refresh_report(run_dir)
    return out

"""The `run` pipeline: data -> train -> predict -> scores -> outputs, with each stage timed."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import audit, backend, data, files, jobs, outputs, report, scores, validate
from .config import Config, ConfigError
from .model import describe, from_checkpoint

Log = Callable[[str], None]
PROBS_FILE = "probs.npz"
SCORES_FILE = "scores.csv"
# Written by `experiment` (experiment.py) into a run's directory, from that run's numbers.
EXPERIMENT_FILES = ("experiment.json", "experiment.md", "experiment_probs.npz")


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, an unwritable directory, or an existing run without --force."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out: {out} is not empty (it may hold an earlier run); pass --force to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise ConfigError(f"--out: cannot write to {out}: {e.strerror or e}") from None


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


def _subset(ds: data.Dataset, cfg: Config) -> tuple[np.ndarray, ...]:
    """The first train_limit / test_limit images (all by default): indices stay canonical."""
    tr, te = slice(cfg.train_limit), slice(cfg.test_limit)
    return ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te]


def write_results(out: Path, cfg: Config, x_test: np.ndarray, table: dict[str, np.ndarray],
                  class_names: tuple[str, ...]) -> dict[str, list[int]]:
    """scores.csv, imgs/<index>.png for every image in a top-K list, one contact sheet per ranking."""
    outputs.write_table(out / SCORES_FILE, table)
    tops = {}
    for name in scores.RANKINGS:
        rows = scores.top_indices(table[f"rank_{name}"], cfg.top)
        tops[name] = [int(table["index"][r]) for r in rows]
        _write_images(out / "imgs", x_test, rows)
        titles = [f"#{table['index'][r]}: true {class_names[table['label'][r]]}, "
                  f"pred {class_names[table['pred'][r]]}\n"
                  f"p={table['prob_pred'][r]:.3f}" for r in rows]
        outputs.contact_sheet(out / f"top_{name}.png", x_test[rows], titles,
                              f"Top {len(rows)} by {name.replace('_', '-')}")
    return tops


def _train_members(cfg: Config, seeds: list[int], x_train, y_train, x_test, y_test, num_classes: int,
                   progress: bool, log: Log) -> list[dict]:
    """One job per seed on cfg.backend (jobs.member_job); each member's weights are saved as it arrives."""
    (cfg.out / "models").mkdir(exist_ok=True)

    def arrived(m: int, result: dict) -> None:
        with files.atomic_path(cfg.out / "models" / f"member-{m}.pt") as tmp:
            torch.save(result["checkpoint"], tmp)
        log(f"member {m + 1}/{len(seeds)} (seed {seeds[m]}): test accuracy {result['accuracy']:.2%}, "
            f"trained in {result['seconds']['train']:.1f} s")

    shared = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    member_jobs = [{"cfg": cfg, "seed": seed, "num_classes": num_classes} for seed in seeds]
    return backend.map_jobs(jobs.member_job, member_jobs, shared, cfg, arrived, "members", progress)


def _save_probs(path: Path, probs: np.ndarray, labels: np.ndarray, seeds: list[int]) -> None:
    """probs.npz: per-member test probabilities (M, N, K) float32, labels (N,), index (N,), seeds (M,)."""
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, probs=probs.astype(np.float32), labels=labels, index=np.arange(len(labels)),
                     seeds=np.array(seeds, dtype=np.uint64))


def _where(cfg: Config, device, precision) -> str:
    """Where the jobs run, for the log: this process's device and threads, or the Ray cluster."""
    if cfg.backend == "ray":
        return (f"as Ray tasks of {backend.task_cpus(cfg)} CPU(s) each on "
                f"{cfg.ray_address or 'the default Ray cluster'}")
    return (f"{device}, bf16 autocast {'on' if precision.autocast else 'off'}, "
            f"{torch.get_num_threads()} threads")


def _remove_derived(out: Path) -> None:
    """With --force: drop an earlier run's summary and every result derived from it (audits,
    validation, report), so a new run never sits beside results of another."""
    names = ["summary.json", "validation.json", report.REPORT_FILE, *EXPERIMENT_FILES]
    names += [name for files_ in AUDIT_FILES.values() for name in files_ if name.endswith((".csv", ".npz", ".json", ".png"))]
    for name in names:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "imgs", ignore_errors=True)  # the earlier top-K lists' digits


def run(cfg: Config, log: Log = print, progress: bool = True) -> dict:
    """Run the whole pipeline into cfg.out; returns the summary also written as summary.json."""
    backend.check_backend(cfg)
    prepare_out_dir(cfg.out, cfg.force)
    _remove_derived(cfg.out)
    device, precision = jobs.setup(cfg)  # here; each job resolves its own too
    files.write_text(cfg.out / "config.json", cfg.dumps() + "\n")
    timings: dict[str, float] = {}
    wall = time.perf_counter()
    with timed(timings, "data"):
        ds = data.load_dataset(cfg, log=log, progress=progress)
        x_train, y_train, x_test, y_test = _subset(ds, cfg)
    log(f"training {cfg.members} CNN(s) on {len(x_train)} {ds.name} images, {ds.num_classes} classes, "
        f"{_where(cfg, device, precision)}")
    seeds = cfg.member_seeds()
    with timed(timings, "train"):  # each member's job also predicts the test images
        results = _train_members(cfg, seeds, x_train, y_train, x_test, y_test, ds.num_classes, progress, log)
    timings["predict"] = round(sum(r["seconds"]["predict"] for r in results), 3)  # of which, summed
    member_probs = np.stack([r["probs"] for r in results])
    with timed(timings, "scores"):
        table = scores.score_table(member_probs, y_test)
    with timed(timings, "write"):
        _save_probs(cfg.out / PROBS_FILE, member_probs, y_test, seeds)
        tops = write_results(cfg.out, cfg, x_test, table, ds.class_names)
    member_acc = [float((p.argmax(1) == y_test).mean()) for p in member_probs]
    errors = int((table["pred"] != table["label"]).sum())
    summary = {
        "test_accuracy": 1 - errors / len(y_test),
        "test_errors": errors,
        "test_digits": len(y_test),
        "train_digits": len(x_train),
        "member_accuracy": member_acc,
        "member_accuracy_mean": float(np.mean(member_acc)),
        "member_accuracy_std": float(np.std(member_acc)),
        "members": cfg.members,
        "member_seeds": seeds,
        "model": describe(from_checkpoint(results[0]["checkpoint"])),
        "seconds": {**timings, "total": round(time.perf_counter() - wall, 3)},
        "history": [r["history"] for r in results],
        "top": tops,
        "top_ambiguous": [{"index": i, "label": ds.class_names[table["label"][i]], "pred": ds.class_names[table["pred"][i]]}
                          for i in tops["ambiguity"]],
        "data": ds.record(),
        "environment": environment(device, precision),
        "backend": cfg.backend,
        "config": cfg.to_json(),
    }
    files.write_json(cfg.out / "summary.json", summary)
    report.write_report(cfg.out, dataset=ds)
    return summary


# ---------------------------------------------------------------------------
# audit: suspected label errors by K-fold cross-validation + cleanlab
# ---------------------------------------------------------------------------
AUDIT_TOP = 30  # digits on the label-issue contact sheet
AUDIT_FILES = {  # split -> (table, probabilities, contact sheet, image folder, summary)
    "test": ("label_issues.csv", "cv_probs_test.npz", "top_label_issues.png", "imgs", "audit_test.json"),
    "train": ("train_label_issues.csv", "cv_probs_train.npz", "top_train_label_issues.png", "imgs/train",
              "audit_train.json"),
}


def _prepare_audit_dir(out: Path, table: str, force: bool) -> None:
    """The audit may join a finished run's directory, but never overwrites an audit without --force."""
    if (out / table).exists() and not force:
        raise ConfigError(f"--out: {out / table} exists; pass --force to overwrite it")
    prepare_out_dir(out, force=True)


def cross_val_probs(cfg: Config, extra, x, y, num_classes: int, progress: bool, log: Log):
    """Out-of-sample probabilities (N, K) for every image of (x, y), and the (N,) fold of each.

    One job per fold on cfg.backend (jobs.fold_job), seeded by cfg.member_seeds(fold).
    """
    folds = audit.fold_ids(len(y), cfg.folds, cfg.seed)

    def arrived(f: int, result: dict) -> None:
        log(f"fold {f + 1}/{cfg.folds}: accuracy on its {(folds == f).sum()} held-out images "
            f"{result['accuracy']:.2%}")

    shared = {"extra_x": extra[0], "extra_y": extra[1], "x": x, "y": y, "folds": folds}
    fold_jobs = [{"cfg": cfg, "fold": f, "seeds": cfg.member_seeds(fold=f), "num_classes": num_classes}
                 for f in range(cfg.folds)]
    results = backend.map_jobs(jobs.fold_job, fold_jobs, shared, cfg, arrived, "folds", progress)
    probs = np.zeros((len(y), num_classes), dtype=np.float32)
    for f, result in enumerate(results):
        probs[folds == f] = result["probs"]
    return probs, folds


def run_audit(cfg: Config, log: Log = print, progress: bool = True) -> dict:
    """Rank every digit of cfg.split by how likely its label is wrong; writes the table and images."""
    table_name, probs_name, sheet_name, img_dir, summary_name = AUDIT_FILES[cfg.split]
    backend.check_backend(cfg)
    _prepare_audit_dir(cfg.out, table_name, cfg.force)
    device, precision = jobs.setup(cfg)  # here; each job resolves its own too
    start = time.perf_counter()
    ds = data.load_dataset(cfg, log=log, progress=progress)
    x_train, y_train, x_test, y_test = _subset(ds, cfg)
    if cfg.split == "test":
        extra, x, y = (x_train, y_train), x_test, y_test
    else:
        extra, x, y = (x_train[:0], y_train[:0]), x_train, y_train
    log(f"{cfg.folds} folds of {cfg.members} CNN(s), {_where(cfg, device, precision)}")
    probs, folds = cross_val_probs(cfg, extra, x, y, ds.num_classes, progress, log)
    with files.atomic_path(cfg.out / probs_name) as tmp, open(tmp, "wb") as f:
        np.savez(f, probs=probs, labels=y, folds=folds, index=np.arange(len(y)))
    pooled, run_members = _pool_with_run(cfg, probs, y)
    if run_members:
        log(f"pooling the {cfg.members} cross-validated CNN(s) per digit with the run's {run_members} members "
            f"(trained on the training set only, so also out-of-sample for every test digit)")
    table = audit.label_issue_table(y, pooled)
    outputs.write_table(cfg.out / table_name, table)
    top = scores.top_indices(table["rank"].astype(float), AUDIT_TOP)
    _write_images(cfg.out / img_dir, x, top)
    names = ds.class_names
    titles = [f"#{i}: {names[y[i]]} \u2192 {names[table['suggested_label'][i]]}\nq={table['label_quality'][i]:.2g}"
              for i in top]
    outputs.contact_sheet(cfg.out / sheet_name, x[top], titles,
                          f"Top {len(top)} suspected label errors ({cfg.split} set; given \u2192 suggested)")
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
    _refresh_report(cfg.out, ds, log)
    return summary


def _pool_with_run(cfg: Config, cv_probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, K) mean over every out-of-sample CNN of each digit, and how many run members joined.

    For the test split, a finished run in the same directory holds M members trained on
    the training digits only: they never saw a test digit, so they are out-of-sample
    too, and pooling them steadies the ranking. The training split has no such models.
    """
    path = cfg.out / PROBS_FILE
    if cfg.split != "test" or not path.is_file():
        return cv_probs, 0
    with np.load(path) as z:
        run_probs, run_labels = z["probs"], z["labels"]
    if run_probs.shape[1:] != cv_probs.shape or not np.array_equal(run_labels, labels):
        return cv_probs, 0
    m = len(run_probs)
    return (cv_probs * cfg.members + run_probs.sum(axis=0)) / (cfg.members + m), m


def _refresh_report(run_dir: Path, ds: data.Dataset | None = None, log: Log = print) -> None:
    """Re-render report.html when run_dir holds a finished run, so new results show up in it."""
    if not (run_dir / "summary.json").is_file():
        return
    try:
        report.write_report(run_dir, dataset=ds)
    except (ConfigError, data.DataError) as e:  # e.g. an audit over other images than the run's: keep the results
        log(f"report.html not refreshed: {e}")


def _write_images(folder: Path, x: np.ndarray, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        outputs.write_digit(folder / f"{r}.png", x[r])


# ---------------------------------------------------------------------------
# validate: our rankings against the human review of 100 test digits
# ---------------------------------------------------------------------------
def run_dataset(run_dir: Path) -> str:
    """The --dataset a run directory's results come from (runs older than --dataset: mnist)."""
    for name in ("summary.json", AUDIT_FILES["test"][4]):
        if (run_dir / name).is_file():
            return json.loads((run_dir / name).read_text()).get("config", {}).get("dataset", "mnist")
    return "mnist"


def run_validate(run_dir: Path) -> dict:
    """validation.json: each available ranking (audit's label issues, the run's ambiguity) vs the review."""
    sources = {"label_issues": (run_dir / AUDIT_FILES["test"][0], "rank"),
               "ambiguity": (run_dir / SCORES_FILE, "rank_ambiguity")}
    available = {k: v for k, v in sources.items() if v[0].is_file()}
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
    files.write_json(run_dir / "validation.json", out)
    _refresh_report(run_dir)
    return out

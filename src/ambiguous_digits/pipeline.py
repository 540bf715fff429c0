"""The `run` pipeline: data -> train -> predict -> scores -> outputs, with each stage timed."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import data, files, outputs, scores
from .config import EVAL_BATCH, Config, ConfigError
from .model import checkpoint, describe
from .train import predict_probs, resolve_device, resolve_precision, train

Log = Callable[[str], None]
PROBS_FILE = "probs.npz"
SCORES_FILE = "scores.csv"


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


def _subset(mnist: data.Mnist, cfg: Config) -> tuple[np.ndarray, ...]:
    """The first train_limit / test_limit digits (all by default): indices stay canonical."""
    tr, te = slice(cfg.train_limit), slice(cfg.test_limit)
    return mnist.x_train[tr], mnist.y_train[tr], mnist.x_test[te], mnist.y_test[te]


def write_results(out: Path, cfg: Config, x_test: np.ndarray, table: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """scores.csv, imgs/<index>.png for every digit in a top-K list, one contact sheet per ranking."""
    outputs.write_table(out / SCORES_FILE, table)
    (out / "imgs").mkdir(exist_ok=True)
    tops = {}
    for name in scores.RANKINGS:
        rows = scores.top_indices(table[f"rank_{name}"], cfg.top)
        tops[name] = [int(table["index"][r]) for r in rows]
        for r in rows:
            outputs.write_digit(out / "imgs" / f"{table['index'][r]}.png", x_test[r])
        titles = [f"#{table['index'][r]}: true {table['label'][r]}, pred {table['pred'][r]}\n"
                  f"p={table['prob_pred'][r]:.3f}" for r in rows]
        outputs.contact_sheet(out / f"top_{name}.png", x_test[rows], titles,
                              f"Top {len(rows)} by {name.replace('_', '-')}")
    return tops


def _train_members(cfg: Config, x_train, y_train, device, precision, progress: bool, log: Log):
    """Train each member with its own seed, saving its checkpoint; returns models and histories."""
    (cfg.out / "models").mkdir(exist_ok=True)
    models, histories = [], []
    for m, seed in enumerate(cfg.member_seeds()):
        log(f"member {m + 1}/{cfg.members} (seed {seed})")
        model, history = train(x_train, y_train, cfg, seed, device, precision, progress)
        with files.atomic_path(cfg.out / "models" / f"member-{m}.pt") as tmp:
            torch.save(checkpoint(model), tmp)
        models.append(model)
        histories.append(history)
    return models, histories


def _save_probs(path: Path, probs: np.ndarray, labels: np.ndarray, seeds: list[int]) -> None:
    """probs.npz: per-member test probabilities (M, N, K) float32, labels (N,), index (N,), seeds (M,)."""
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, probs=probs.astype(np.float32), labels=labels, index=np.arange(len(labels)),
                     seeds=np.array(seeds, dtype=np.uint64))


def run(cfg: Config, log: Log = print, progress: bool = True) -> dict:
    """Run the whole pipeline into cfg.out; returns the summary also written as summary.json."""
    prepare_out_dir(cfg.out, cfg.force)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    files.write_text(cfg.out / "config.json", cfg.dumps() + "\n")
    timings: dict[str, float] = {}
    wall = time.perf_counter()
    with timed(timings, "data"):
        mnist = data.load_mnist(cfg.data_dir, log=log, progress=progress)
        x_train, y_train, x_test, y_test = _subset(mnist, cfg)
    log(f"training {cfg.members} CNN(s) on {len(x_train)} digits, {device}, bf16 autocast "
        f"{'on' if precision.autocast else 'off'}, {torch.get_num_threads()} threads")
    with timed(timings, "train"):
        models, histories = _train_members(cfg, x_train, y_train, device, precision, progress, log)
    with timed(timings, "predict"):
        member_probs = np.stack([predict_probs(m, x_test, device, EVAL_BATCH) for m in models])
    with timed(timings, "scores"):
        table = scores.score_table(member_probs, y_test)
    with timed(timings, "write"):
        _save_probs(cfg.out / PROBS_FILE, member_probs, y_test, cfg.member_seeds())
        tops = write_results(cfg.out, cfg, x_test, table)
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
        "member_seeds": cfg.member_seeds(),
        "model": describe(models[0]),
        "seconds": {**timings, "total": round(time.perf_counter() - wall, 3)},
        "history": histories,
        "top": tops,
        "data": {"source": mnist.source, "md5": mnist.checksums},
        "environment": environment(device, precision),
        "config": cfg.to_json(),
    }
    files.write_json(cfg.out / "summary.json", summary)
    return summary

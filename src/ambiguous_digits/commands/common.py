"""What the commands that train share: checks before loading, the process set-up, the data, small writers."""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import backend, data, files, manifest, outputs, report, rundir
from ..config import IMAGES_OF, LIMIT_FLAGS, ConfigError, Invocation, Recipe
from ..train import setup

Log = Callable[[str], None]


def check_data_dir(recipe: Recipe, inv: Invocation) -> None:
    """A published data set's cache must be (or become) a directory; user data sets have none."""
    inv.check_data_dir(recipe)
    if recipe.dataset not in data.PUBLISHED:
        return
    path = Path(inv.data_dir).expanduser() if inv.data_dir else data.default_data_dir(recipe.dataset)
    source = "--data-dir" if inv.data_dir else data.cache_source(recipe.dataset)  # the name a user can change
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as e:
        raise ConfigError(f"{source}: cannot read {path}: {e.strerror or e}") from None
    if not existing.is_dir():
        raise ConfigError(f"{source}: {existing} is a file, not a directory")


def begin(recipe: Recipe, inv: Invocation, resume: bool, check: Callable[[], None]):
    """Everything checked before the data are loaded (a bad flag costs nothing); this process's device, precision.

    `check` checks a new command's flags and directories; a resumed one had them checked when it started,
    and its interrupted writes' temporary files go.
    """
    backend.check_backend(inv)
    check_data_dir(recipe, inv)
    if resume:
        rundir.remove_temp_files(inv.out)
    else:
        check()
    return setup(inv.device, inv.threads, recipe.precision)  # here; each job resolves its own too


def load(recipe: Recipe, inv: Invocation, log: Log) -> data.Dataset:
    return data.load_dataset(recipe.dataset, inv.data_dir, class_names=recipe.class_names, log=log,
                             progress=inv.progress)


def check_limits(recipe: Recipe, ds: data.Dataset) -> None:
    """--train-limit and --test-limit against the images loaded (a user data set's counts are known only now)."""
    for flag, limit, have, where in (("--train-limit", recipe.train_limit, len(ds.y_train), "training"),
                                     ("--test-limit", recipe.test_limit, len(ds.y_test), "test")):
        if limit is not None and limit > have:
            raise ConfigError(f"{flag}: {ds.name} has {have} {where} images, got {limit}")


def check_classes(recipe: Recipe, ds: data.Dataset, splits: tuple[str, ...]) -> None:
    """Each split to be audited holds two classes or more: cleanlab ranks a label against the other classes."""
    for split in splits:
        flag, limit, word = LIMIT_FLAGS[split], recipe.limit(split), IMAGES_OF[split]
        labels = ds.y_test if split == "test" else ds.y_train
        present = np.unique(labels[:limit])
        if len(present) >= 2:
            continue
        which = ", ".join(ds.class_names[c] for c in present) or "none"
        if len(np.unique(labels)) >= 2:  # the limit cut the others off
            raise ConfigError(f"{flag}: the first {limit} {word} images of {ds.name} are all of one class ({which}); "
                              f"the label audit needs two or more: give a larger {flag}")
        raise ConfigError(f"--dataset: {ds.name}'s {word} images are all of one class ({which}); the label audit "
                          "needs two or more")


def subset(ds: data.Dataset, recipe: Recipe) -> tuple[np.ndarray, ...]:
    """The first train_limit / test_limit images (all by default): indices stay canonical."""
    tr, te = slice(recipe.train_limit), slice(recipe.test_limit)
    return ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te]


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


class Stages:
    """The stages after training on one bar (each from a tenth of a second to a minute on a CPU, and silent until
    it ends): the bar names the one running; `log` prints between them without tearing it."""

    def __init__(self, names: list[str], progress: bool, log: Log):
        self.names, self._next, self._log = names, 0, log
        # No rate or time left: the stages differ too much for either to mean anything.
        self.bar = tqdm(total=len(names), desc="after training", disable=not progress,
                        bar_format="{desc}: {n_fmt}/{total_fmt} stages [{elapsed}{postfix}]")

    def log(self, message: str) -> None:
        with tqdm.external_write_mode():
            self._log(message)

    @contextmanager
    def __call__(self, name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
        """Stage `name` (the next of `names`), timed into `timings` when given."""
        assert name == self.names[self._next], (name, self.names)
        self.bar.set_postfix_str(name)
        if timings is None:
            yield
        else:
            with timed(timings, name):
                yield
        self._next += 1
        self.bar.update(1)

    def close(self) -> None:
        """The bar ends naming the stage that failed, or "done"."""
        if self._next == len(self.names):
            self.bar.set_postfix_str("done")
        self.bar.close()


def environment(device: torch.device, precision) -> dict:
    libs = {name: version(name) for name in ("torch", "numpy", "matplotlib", "pillow", "tqdm")}
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device), "bf16_autocast": precision.autocast,
            "libraries": libs}


def write_images(run_dir: Path, folder: str, x: np.ndarray, rows) -> list[Path]:
    """imgs/<index>.png (or another folder of the run directory) for each row; returns the paths, unlisted."""
    files.make_dirs(run_dir / folder)
    for r in rows:
        outputs.write_digit(run_dir / folder / f"{r}.png", x[r])
    return [run_dir / folder / f"{r}.png" for r in rows]


def refresh_report(run_dir: Path, ds: data.Dataset | None = None, log: Log = print) -> None:
    """Re-render report.html when run_dir holds a finished run, so new results show up in it."""
    if not manifest.listed(run_dir, rundir.SUMMARY_FILE):
        return
    try:
        report.write_report(run_dir, dataset=ds)
    except (ConfigError, data.DataError, files.WriteError) as e:  # e.g. an audit over other images: keep the results
        log(f"report.html not refreshed, so it still shows the earlier results ({e}); once that is mended, "
            f"`ambiguous-digits report {run_dir}` re-writes it")


def merge_neighbours(run_dir: Path, rows: dict[str, np.ndarray]) -> None:
    """Add `rows` (evidence.neighbour_rows) to neighbours.csv, replacing any earlier rows of the same
    split, digit and role; written whole, then listed."""
    path, key = run_dir / rundir.NEIGHBOURS_FILE, ("split", "index", "role")
    fresh = set(zip(*(map(str, rows[k]) for k in key)))
    kept = []
    if manifest.listed(run_dir, rundir.NEIGHBOURS_FILE):
        with open(manifest.verified(run_dir, rundir.NEIGHBOURS_FILE), newline="") as f:
            kept = [r for r in csv.DictReader(f) if tuple(r[k] for k in key) not in fresh]
    merged = {name: [r[name] for r in kept] + list(rows[name]) for name in rows}
    outputs.write_table(path, {name: np.array(v, dtype=object) for name, v in merged.items()})
    manifest.record(run_dir, path)

"""The run directory: every file name in it, who may write it, and how a file is written and listed.

One owner: no other module spells a run file's name. A file counts as written
once it is listed in manifest.json with its sha256 (manifest.py), so `save_*`
here write a file whole and list it in one call. A command that writes into a
run directory holds its lock for as long as it runs (`locked`), so two commands
never write one directory at once.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from filelock import Timeout

from . import __version__, files, manifest
from .config import LIMIT_FLAGS, RANKING_NAMES, AuditPlan, ConfigError, Invocation, Recipe, RunOutputs, measured_choice

CONFIG_FILE = "config.json"
PROBS_FILE = "probs.npz"
SCORES_FILE = "scores.csv"
SUMMARY_FILE = "summary.json"
VALIDATION_FILE = "validation.json"
REPORT_FILE = "report.html"
# What a run was started on: the data set's record with the MD5 of every file or array, so --resume
# never mixes members trained on old data with members trained on new.
DATA_FILE = "data.json"
# The members' pooled penultimate features of every digit (evidence.pool), and unfamiliarity's embedding of the
# training digits (layout_train, layout_basis: evidence.Layout) with their own unfamiliarity.
EMBEDDINGS_FILE = "embeddings.npz"
NEIGHBOURS_FILE = "neighbours.csv"
# The training digits' dynamics (dynamics.py), recorded by the cross-fitted members' training steps, and their map.
DYNAMICS_FILE = "train_dynamics.csv"
DATA_MAP_FILE = "data_map.png"
# The data set's health (health.py): near-duplicate pairs, and the classes' and whole set's numbers.
DUPLICATES_FILE = "duplicates.csv"
HEALTH_FILE = "health.json"
EXPERIMENT_FILE = "experiment.json"
EXPERIMENT_TABLE_FILE = "experiment.md"
EXPERIMENT_PROBS_FILE = "experiment_probs.npz"
# `clean`'s output folder (default: inside the run directory), the cleaned data set and the record of its changes.
CLEANED_DIR = "cleaned"
CLEANED_FILE = "cleaned.npz"
CLEANING_FILE = "cleaning.json"
MEMBER_STEM = "members/member-{m}"
MODEL_FILE = "models/member-{m}.pt"
FOLD_STEM = "folds/{split}-fold-{f}-member-{m}"
IMAGES_DIR = "imgs"
PREDICTIONS_DIR = "predictions"
# Present only while a command claims its directory (clearing an earlier run, then listing its config). Not
# hidden, so emptying the folder by hand (rm -rf dir/*) takes it too.
CLEARING_FILE = "claiming-run-directory.txt"
# Held by the one command writing into the directory; hidden, it never holds results.
LOCK_FILE = ".rundir.lock"
# Folders of per-digit images and per-member files; a --force rerun starts them afresh.
RUN_FOLDERS = ("members", "models", "folds", IMAGES_DIR, PREDICTIONS_DIR, CLEANED_DIR)


# The directories this process claimed for a run or an audit (or resumes): an interrupted one is theirs to resume.
CLAIMED: set[Path] = set()


@dataclass(frozen=True)
class AuditFiles:
    """The files of one split's audit."""

    table: str
    probs: str
    sheet: str
    images: str
    summary: str
    config: str
    data: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.table, self.probs, self.sheet, self.summary


AUDIT = {
    "test": AuditFiles("label_issues.csv", "cv_probs_test.npz", "top_label_issues.png", IMAGES_DIR,
                       "audit_test.json", "audit_test_config.json", "audit_test_data.json"),
    "train": AuditFiles("train_label_issues.csv", "cv_probs_train.npz", "top_train_label_issues.png",
                        f"{IMAGES_DIR}/train", "audit_train.json", "audit_train_config.json", "audit_train_data.json"),
}


def weights_file(model_name: str) -> str:
    """models/member-M.pt (MODEL_FILE) -> models/member-M.npz: the same CNN's weights for forward.NumpyNet."""
    return str(Path(model_name).with_suffix(".npz"))


def sheet_file(ranking: str) -> str:
    return f"top_{ranking}.png"


# ---------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------
@contextmanager
def locked(run_dir: Path, flag: str = "--out") -> Iterator[None]:
    """Hold run_dir's lock while a command writes into it; a second writer is refused in one line.

    The kernel drops the lock when its process dies, so a killed command never leaves it held.
    """
    held = False
    try:
        with files.locked(Path(run_dir) / LOCK_FILE, "the run directory", timeout=0):
            held = True
            yield
    except Timeout:
        if held:  # another lock's, inside the command
            raise
        raise ConfigError(f"{flag}: {run_dir} is being written by another ambiguous-digits command; "
                          f"wait for it to finish") from None


# ---------------------------------------------------------------------------
# Checked before anything is written; claimed and cleared once the data are loaded
# ---------------------------------------------------------------------------
def check_out_dir(out: Path, force: bool, flag: str = "--out", any_folder: bool = False) -> None:
    """Refuse a file, an unwritable place, an existing run without --force, and any other non-empty
    directory (--force overwrites only a run's directory: one with a manifest.json); creates nothing.
    With `any_folder` (predictions accumulate) any directory will do."""
    try:
        str(out).encode("utf-8")  # the report and the JSON files record the path as text
    except UnicodeEncodeError:
        shown = str(out).encode("utf-8", "backslashreplace").decode()
        raise ConfigError(f"{flag}: {shown} is not a UTF-8 path (the run records it as text); give another") from None
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{flag}: {out} is a file, not a directory")
        entries = set()
        if not any_folder and out.is_dir():
            entries = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if entries:
            # A run's directory: its manifest, or the marker of a command killed while claiming it.
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


def prepare_out_dir(out: Path, force: bool, any_folder: bool = False, flag: str = "--out") -> None:
    check_out_dir(out, force, flag, any_folder=any_folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag}: cannot create {out}: {e.strerror or e}") from None


@contextmanager
def claiming(out: Path) -> Iterator[None]:
    """CLEARING_FILE marks `out` as a run's directory from before an earlier run is cleared until the new
    config is listed; a kill between leaves a directory --force may claim again. Kept on an error."""
    files.write_text(out / CLEARING_FILE, "A run or an audit is claiming this directory: clearing any earlier run, "
                     "then listing its config in manifest.json. If none is running, it was killed meanwhile, and "
                     "`--force` may clear this directory.\n")
    yield
    (out / CLEARING_FILE).unlink()


def _earlier_run_names() -> list[str]:
    """The files any command writes at the top of a run directory."""
    names = [SUMMARY_FILE, VALIDATION_FILE, REPORT_FILE, SCORES_FILE, PROBS_FILE, DATA_FILE, EMBEDDINGS_FILE,
             NEIGHBOURS_FILE, DYNAMICS_FILE, DATA_MAP_FILE, DUPLICATES_FILE, HEALTH_FILE, EXPERIMENT_FILE,
             EXPERIMENT_TABLE_FILE, EXPERIMENT_PROBS_FILE, *map(sheet_file, RANKING_NAMES)]
    for a in AUDIT.values():
        names += [*a.outputs, a.config, a.data]
    return names


def clear_earlier_run(out: Path) -> None:
    """With --force: the earlier manifest first (so nothing of it is trusted), then every result of it."""
    (out / manifest.MANIFEST_FILE).unlink(missing_ok=True)
    for name in _earlier_run_names():
        (out / name).unlink(missing_ok=True)
    for folder in RUN_FOLDERS:
        shutil.rmtree(out / folder, ignore_errors=True)


def remove_temp_files(out: Path) -> None:
    """Temporary files of writes a kill interrupted (files.atomic_path's names); never listed, never used."""
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def clear_audit(out: Path, split: str) -> None:
    """Delete an interrupted audit's folds of `split` before a new audit of that split starts. The earlier audit's
    results stay listed until the new one has its own to write (forget_audit): an interrupted audit loses nothing."""
    a, prefix = AUDIT[split], f"folds/{split}-fold-"
    stale = {p.relative_to(out).as_posix() for p in out.glob(f"{prefix}*")}
    stale |= {name for name in manifest.load(out) if name.startswith(prefix)}
    manifest.forget(out, a.data, *stale)
    for name in stale:
        (out / name).unlink(missing_ok=True)


def forget_audit(out: Path, split: str) -> None:
    """Unlist the earlier audit of `split` (and, for the test split, the validation that scored it), just before
    the new audit writes its own."""
    manifest.forget(out, *AUDIT[split].outputs, *([VALIDATION_FILE] if split == "test" else []))


def audit_finished(out: Path, split: str) -> bool:
    """Whether the audit of `split` that audit_test_config.json (or the train one) started has written its summary:
    the summary carries the config's audit id. An audit started before 0.14.1 has none: its summary is its own."""
    a = AUDIT[split]
    if not manifest.listed(out, a.summary):
        return False
    started = _read_config(out, a.config).get("audit_id") if manifest.listed(out, a.config) else None
    return started is None or manifest.listed_json(out, a.summary).get("audit_id") == started


def resume_command(out: Path, split: str | None = None) -> str:
    """The command that continues the run in `out` (split None), or its audit of `split`."""
    what = "run" if split is None else "audit"
    return f"ambiguous-digits {what} --resume {shlex.quote(str(out))}{' --split train' if split == 'train' else ''}"


def audit_id(out: Path, split: str) -> str | None:
    """The id save_audit_config gave the audit of `split` in progress (None: one started before 0.14.1)."""
    return _read_config(out, AUDIT[split].config).get("audit_id")


# ---------------------------------------------------------------------------
# Written whole, then listed: one call
# ---------------------------------------------------------------------------
def save_json(run_dir: Path, name: str, obj: object) -> Path:
    files.write_json(run_dir / name, obj)
    manifest.record(run_dir, run_dir / name)
    return run_dir / name


def save_npz(run_dir: Path, name: str, **arrays: np.ndarray) -> Path:
    with files.atomic_path(run_dir / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    manifest.record(run_dir, run_dir / name)
    return run_dir / name


def save_with(run_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """write(path) writes the whole file (atomically, through files); then it is listed."""
    write(run_dir / name)
    manifest.record(run_dir, run_dir / name)
    return run_dir / name


# ---------------------------------------------------------------------------
# Settings saved beside the results
# ---------------------------------------------------------------------------
def _placement(inv: Invocation) -> dict:
    """Where the jobs ran: the device and each job's thread count change a float's rounding, so a resume keeps
    them; the typed --threads and --workers, and the count they gave each member."""
    from . import backend  # here: backend imports the data readers, which the run directory's names do not need

    return {"device": inv.device, "threads": inv.threads, "workers": inv.workers,
            "member_threads": backend.resolved_member_threads(inv)}


def save_run_config(out: Path, recipe: Recipe, outputs: RunOutputs, inv: Invocation,
                    choice: dict | None = None) -> None:
    """config.json, with a new run id (what a review in the browser is stored under) and how the recipe was chosen
    (recipes.choose)."""
    save_json(out, CONFIG_FILE, {"version": __version__, "run_id": uuid.uuid4().hex, "recipe": recipe.to_json(),
                                 "recipe_choice": choice or measured_choice(recipe),
                                 "outputs": {"top": outputs.top, "rankings": list(outputs.rankings)},
                                 "placement": _placement(inv)})


def recipe_choice(run_dir: Path) -> dict:
    """How the run's recipe was chosen, as config.json recorded it (before 0.9: MNIST's, always)."""
    return _read_config(run_dir, CONFIG_FILE).get("recipe_choice", measured_choice(Recipe()))


def run_id(run_dir: Path) -> str:
    return _read_config(run_dir, CONFIG_FILE)["run_id"]


def save_audit_config(out: Path, recipe: Recipe, plan: AuditPlan, inv: Invocation) -> None:
    save_json(out, AUDIT[plan.split].config, {"version": __version__, "audit_id": uuid.uuid4().hex,
                                              "recipe": recipe.to_json(),
                                              "audit": {"folds": plan.folds, "split": plan.split, "top": plan.top},
                                              "placement": _placement(inv)})


def placed_as_before(run_dir: Path, name: str, inv: Invocation) -> Invocation:
    """`inv` with the device, threads and workers the run (or audit) saved in `name` started with. Locally also
    each member's thread count then (member_threads), so a --workers typed on the resume changes how many train at
    once, never a member's bytes. A run that saved no workers (before 0.12) trained one member at a time; one that
    saved no member threads (before 0.12.1) had them from its other settings, on this machine. One resumed on Ray
    keeps only its threads: a task reserves as many CPUs, and one member's machine's every core may be more than a
    node has."""
    from . import backend

    d = _read_config(run_dir, name)
    try:
        placed = {k: d["placement"][k] for k in ("device", "threads")}
        workers, saved = d["placement"].get("workers", 1), d["placement"].get("member_threads")
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{run_dir / name}: not a config this version can read ({e})") from None
    if inv.backend != "local":
        return dataclasses.replace(inv, **placed)
    if saved is not None and (isinstance(saved, bool) or not isinstance(saved, int) or saved < 1):
        raise ConfigError(f"{run_dir / name}: not a config this version can read (member_threads {saved!r})")
    if saved is None:
        saved = backend.resolved_member_threads(dataclasses.replace(inv, **placed, workers=workers))
    return dataclasses.replace(inv, **placed, workers=inv.workers or workers, member_threads=saved)


def _read_config(run_dir: Path, name: str) -> dict:
    path = manifest.verified(run_dir, name)
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not a config this version can read ({e})") from None


def load_run_config(run_dir: Path) -> tuple[Recipe, RunOutputs]:
    """The recipe and outputs a run directory's run was started with (checked against the manifest)."""
    d = _read_config(run_dir, CONFIG_FILE)
    try:
        return Recipe.from_json(d["recipe"]), RunOutputs.from_json(d["outputs"])
    except (KeyError, TypeError, ConfigError) as e:
        raise ConfigError(f"{run_dir / CONFIG_FILE}: not a config this version can read ({e})") from None


def load_audit_config(run_dir: Path, split: str) -> tuple[Recipe, AuditPlan]:
    d = _read_config(run_dir, AUDIT[split].config)
    try:
        return Recipe.from_json(d["recipe"]), AuditPlan(**d["audit"])
    except (KeyError, TypeError, ConfigError) as e:
        raise ConfigError(f"{run_dir / AUDIT[split].config}: not a config this version can read ({e})") from None


def run_recipe(run_dir: Path) -> Recipe | None:
    """The recipe of the run in run_dir; None where no run started there. ConfigError (one line) where its
    config.json cannot be read: a command that follows the run must not guess its network."""
    if not manifest.listed(run_dir, CONFIG_FILE):
        return None
    try:
        return load_run_config(run_dir)[0]
    except OSError as e:
        raise ConfigError(f"{run_dir / CONFIG_FILE}: cannot be read ({e.strerror or e}); give another --out, "
                          "or start the run again (`run --force`)") from None


def run_dataset(run_dir: Path) -> str:
    """The --dataset a run directory's results come from."""
    for name in (SUMMARY_FILE, AUDIT["test"].summary):
        record = manifest.listed_json(run_dir, name)
        if record is not None:
            return record["recipe"]["dataset"]
    return "mnist"


# ---------------------------------------------------------------------------
# The data a directory's results were made from
# ---------------------------------------------------------------------------
def check_resume_data(out: Path, name: str, ds) -> None:
    """--resume only on the data the run started on."""
    started = manifest.listed_json(out, name)
    if started is None:
        return
    if started.get("md5") != ds.checksums:
        changed = sorted(k for k in ds.checksums if started.get("md5", {}).get(k) != ds.checksums[k])
        raise ConfigError(f"--resume: {ds.name}'s {', '.join(changed) or 'files'} changed since this run started "
                          f"(MD5s in {out / name}); start a new run (--force) on the new data")


def check_same_data(out: Path, ds, split: str, images: int | None = None) -> None:
    """An audit joins a run's directory, or the other split's audit, only on the same data (same MD5s), and
    replaces a run's table of `split` (finished, or still to come) only with one of as many digits (`images`;
    None: the data only)."""
    summary = manifest.listed_json(out, SUMMARY_FILE)
    # Other data first: on another data set, a count that differs follows from the data, not from a limit.
    # A finished run's data are in its summary; a run in progress (or killed) has only DATA_FILE.
    run_data = summary.get("data", {}) if summary is not None else manifest.listed_json(out, DATA_FILE)
    other = next(s for s in AUDIT if s != split)
    held = [("a run", run_data), (f"a {other}-set audit", manifest.listed_json(out, AUDIT[other].data))]
    for what, record in held:
        if record is not None and record.get("md5") != ds.checksums:
            raise ConfigError(f"--dataset: {out} holds {what} on {record.get('dataset', 'other data')}, and these "
                              f"data ({ds.name}) are not its files (their MD5s differ); audit that data set "
                              f"(its --dataset), or give another --out")
    held_digits = (summary or {}).get(f"{split}_digits")
    if images is not None and summary is None and run_data is not None:  # a killed run: its limit on these data
        started = run_recipe(out)
        if started is not None:  # the digits commands.common.subset takes: the first N (all where N is None)
            held_digits = len((ds.y_test if split == "test" else ds.y_train)[:started.limit(split)])
    if images is not None and held_digits is not None and held_digits != images:
        flag = LIMIT_FLAGS[split]
        raise ConfigError(f"{flag}: {out} holds a run of {held_digits} {split} digits, not this audit's "
                          f"{images}; use the run's {flag}, or give another --out")

"""`clean`: check the review -> load the run's data and probabilities -> apply the review, re-measure -> write.

A review names digits of a run's data set and says of each: its label is correct,
it should be relabelled, or it should be excluded. `clean` writes the data set with
those changes (cleaned.npz, which `run --dataset npz:FILE` reads) and cleaning.json,
and re-scores the run's ensemble on the corrected test labels without retraining.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, data, files, manifest, rundir, scores, validate
from ..config import SPLITS, ConfigError, Recipe
from .common import Log, subset

REVIEW_COLUMNS = ("split", "index", "given_label", "verdict", "new_label", "note", "reviewed_at")
VERDICTS = ("correct", "relabel", "exclude")
# `--review mturk`: the published human review of MNIST's test labels (validate.REVIEWS) in place of a file.
MTURK = "mturk"
# The review excludes mostly digits the ensemble gets wrong, so scoring without them flatters it.
REMOVAL_WARNING = ("removing excluded test digits flatters accuracy (cleanlab's maintainers warn that deleting "
                   "flagged test items inflates the score): quote the accuracy on the corrected labels")


@dataclass(frozen=True)
class Decision:
    """One reviewed digit, checked: the row that named it first, and what the review decided."""

    row: str  # 'line 7' of a file, 'record 3' of the published review
    split: str
    index: int  # canonical: the digit's position in its split
    old_label: int
    verdict: str
    new_label: int | None  # relabel only
    note: str
    reviewed_at: str


# ---------------------------------------------------------------------------
# The review: read, then checked row by row against the run's labels
# ---------------------------------------------------------------------------
def read_review(path: Path) -> list[tuple[str, dict]]:
    """The review file's rows as ('line N', {column: text}); ConfigError naming the file and the line for an
    unreadable file, a missing or extra column, a row of the wrong length or no rows at all."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--review: cannot read {path} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text; save the review as a UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # a stray quote is an error, not a field
    try:
        header = [name.strip() for name in next(reader, [])]
        _check_header(path, header)
        rows = [(f"line {reader.line_num}", fields) for fields in reader if fields]
    except csv.Error as e:
        raise ConfigError(f"{path}: line {reader.line_num}: unreadable CSV ({e})") from None
    if not rows:
        raise ConfigError(f"{path}: line 2: no reviewed digits (the file holds only its header)")
    for row, fields in rows:
        if len(fields) != len(header):
            raise ConfigError(f"{path}: {row}: {len(fields)} fields, the header has {len(header)}")
    return [(row, dict(zip(header, fields))) for row, fields in rows]


def _check_header(path: Path, header: list[str]) -> None:
    missing = [c for c in REVIEW_COLUMNS if c not in header]
    extra = [c for c in header if c not in REVIEW_COLUMNS or header.count(c) > 1]
    if missing or extra:
        found = "; ".join(f"{what} column {', '.join(map(repr, dict.fromkeys(cols)))}"
                          for what, cols in (("no", missing), ("unknown or repeated", extra)) if cols)
        raise ConfigError(f"{path}: line 1: {found} (expected {', '.join(REVIEW_COLUMNS)})")


def check_review(source: str, rows: list[tuple[str, dict]], labels: dict[str, np.ndarray],
                 k: int) -> list[Decision]:
    """One Decision per reviewed digit (an identical repeat merged), in the order first named.

    `labels`: split -> (N,) the run's labels of its digits; k: classes. ConfigError
    '{source}: {row}: ...' (one line) at the first bad row.
    """
    seen: dict[tuple[str, int], Decision] = {}
    for row, fields in rows:
        d = _decision(source, row, fields, labels, k)
        first = seen.setdefault((d.split, d.index), d)
        if (first.verdict, first.new_label) != (d.verdict, d.new_label):
            raise ConfigError(f"{source}: {row}: {d.split} digit {d.index} is reviewed twice: {_said(first)} "
                              f"({first.row}), here {_said(d)}")
    return list(seen.values())


def _said(d: Decision) -> str:
    return f"relabel to {d.new_label}" if d.verdict == "relabel" else d.verdict


def _decision(source: str, row: str, fields: dict, labels: dict[str, np.ndarray], k: int) -> Decision:
    def bad(message: str) -> ConfigError:
        return ConfigError(f"{source}: {row}: {message}")

    split, verdict, new = (_text(fields[c]) for c in ("split", "verdict", "new_label"))
    if split not in SPLITS:
        raise bad(f"split {split!r} is not test or train")
    index, n = _whole(fields["index"], "index", bad), len(labels[split])
    if not 0 <= index < n:
        raise bad(f"{split} digit {index} is not in this run (its {split} digits are 0..{n - 1})")
    if verdict not in VERDICTS:
        raise bad(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    given = _label(fields["given_label"], "given_label", k, bad)
    if (verdict == "relabel") != (new != ""):
        raise bad("verdict relabel needs a new_label" if new == "" else
                  f"new_label {new} with verdict {verdict}; only relabel takes one")
    new_label = _label(new, "new_label", k, bad) if new else None
    ours = int(labels[split][index])
    if given != ours:
        raise bad(f"{split} digit {index} is labelled {ours} in this run, the file says {given} "
                  f"(a review of another data set's run?)")
    if new_label == given:
        raise bad(f"relabel of {split} digit {index} to {given}, the label it has (say correct)")
    return Decision(row, split, index, given, verdict, new_label, _text(fields["note"]),
                    _text(fields["reviewed_at"]))


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _whole(value, column: str, bad) -> int:
    try:
        return int(_text(value))
    except ValueError:
        raise bad(f"{column} {_text(value)!r} is not a whole number") from None


def _label(value, column: str, k: int, bad) -> int:
    label = _whole(value, column, bad)
    if not 0 <= label < k:
        raise bad(f"{column} {label} is out of range 0..{k - 1}")
    return label


# ---------------------------------------------------------------------------
# The changes, and the ensemble re-measured (pure numpy)
# ---------------------------------------------------------------------------
def corrected(labels: np.ndarray, split: str, decisions: list[Decision]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) labels with the split's relabels applied, and (N,) bool: kept (not excluded)."""
    fixed, kept = labels.astype(np.int64), np.ones(len(labels), dtype=bool)
    for d in decisions:
        if d.split == split and d.verdict == "relabel":
            fixed[d.index] = d.new_label
        elif d.split == split and d.verdict == "exclude":
            kept[d.index] = False
    return fixed, kept


def accuracy(member_probs: np.ndarray, labels: np.ndarray) -> dict:
    """The ensemble's accuracy (mean of (M, N, K) probabilities -> its class) on (N,) labels, higher is better;
    with the members' mean and std, the spread over seeds. None where no digit is left."""
    if not len(labels):
        return {"accuracy": None, "errors": 0, "digits": 0, "member_accuracy_mean": None, "member_accuracy_std": None}
    right = scores.predicted(member_probs.mean(axis=0)) == labels
    members = [float((scores.predicted(p) == labels).mean()) for p in member_probs]
    return {"accuracy": float(right.mean()), "errors": int((~right).sum()), "digits": len(labels),
            "member_accuracy_mean": float(np.mean(members)), "member_accuracy_std": float(np.std(members))}


def remeasure(member_probs: np.ndarray, labels: np.ndarray, decisions: list[Decision]) -> dict:
    """Accuracy of the run's ensemble (M, N, K) on the (N,) test labels as given, as corrected, and as
    corrected with the excluded digits removed."""
    fixed, kept = corrected(labels, "test", decisions)
    return {"original_labels": accuracy(member_probs, labels),
            "corrected_labels": accuracy(member_probs, fixed),
            "corrected_excluded_removed": {**accuracy(member_probs[:, kept], fixed[kept]),
                                           "removed": int((~kept).sum())},
            "warning": REMOVAL_WARNING}


def cleaned_arrays(arrays: dict[str, np.ndarray], decisions: list[Decision]) -> dict[str, np.ndarray]:
    """x_/y_train, x_/y_test with the review applied, and train_/test_index: each kept row's canonical index."""
    out = {}
    for split in SPLITS:
        fixed, kept = corrected(arrays[f"y_{split}"], split, decisions)
        out.update({f"x_{split}": arrays[f"x_{split}"][kept], f"y_{split}": fixed[kept],
                    f"{split}_index": np.flatnonzero(kept)})
    return out


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------
def run_clean(run_dir: Path, review: str, out: Path | None = None, force: bool = False,
              data_dir: Path | None = None, log: Log = print) -> dict:
    """cleaned.npz and cleaning.json in `out` (default RUN_DIR/cleaned) from the review file (or 'mturk');
    returns what cleaning.json holds. Nothing is written unless every row of the review is good."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / rundir.CLEANED_DIR
    recipe, summary = _check_run(run_dir)
    _check_out(out, force)
    source, rows = _review(review, recipe)
    arrays, ds = _load(recipe, summary, data_dir, log)
    with np.load(manifest.verified(run_dir, rundir.PROBS_FILE), allow_pickle=False) as z:
        member_probs, labels = z["probs"], z["labels"]
    if not np.array_equal(labels, arrays["y_test"]):
        raise ConfigError(f"{run_dir / rundir.PROBS_FILE}: its labels are not the run's data's; re-make the run")
    decisions = check_review(source, rows, {s: arrays[f"y_{s}"] for s in SPLITS}, ds.num_classes)
    cleaned = cleaned_arrays(arrays, decisions)
    record = _record(run_dir, summary, review, source, ds, decisions, cleaned,
                     remeasure(member_probs, labels, decisions))
    _write(run_dir, out, cleaned, record)
    return record


def _check_run(run_dir: Path) -> tuple[Recipe, dict]:
    """A finished run's recipe and summary (its probabilities listed and unchanged)."""
    manifest.require(run_dir)
    summary = manifest.listed_json(run_dir, rundir.SUMMARY_FILE)
    if summary is None or not manifest.listed(run_dir, rundir.PROBS_FILE):
        raise ConfigError(f"RUN_DIR: {run_dir} holds no finished run (no {rundir.SUMMARY_FILE} and "
                          f"{rundir.PROBS_FILE}); `run` it first")
    return rundir.load_run_config(run_dir)[0], summary


def _check_out(out: Path, force: bool) -> None:
    """A file, an unreadable or unwritable place, or a non-empty folder without --force is refused."""
    rundir.check_out_dir(out, force, any_folder=True)
    if not force and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty; pass --force to overwrite its {rundir.CLEANED_FILE} and "
                          f"{rundir.CLEANING_FILE}")


def _review(review: str, recipe: Recipe) -> tuple[str, list[tuple[str, dict]]]:
    """(the name messages give the review, its rows): the file's, or the published review's records."""
    if review != MTURK:
        return str(review), read_review(Path(review))
    if recipe.dataset not in validate.REVIEWS:
        raise ConfigError(f"--review {MTURK}: the published review is of MNIST's test labels; this is a run on "
                          f"{recipe.dataset}")
    rows = validate.review_rows(validate.load_review(recipe.dataset))
    return f"--review {MTURK}", [(f"record {n}", row) for n, row in enumerate(rows, start=1)]


def _load(recipe: Recipe, summary: dict, data_dir: Path | None,
          log: Log) -> tuple[dict[str, np.ndarray], data.Dataset]:
    """The run's own digits (its --train-limit/--test-limit kept: indices stay canonical), checked unchanged."""
    where = data_dir if data_dir is not None else summary["invocation"]["data_dir"]
    ds = data.load_dataset(recipe.dataset, where, class_names=recipe.class_names, log=log, progress=False)
    if summary["data"]["md5"] != ds.checksums:
        raise ConfigError(f"RUN_DIR: {ds.name}'s files changed since this run (their MD5s differ from its "
                          f"{rundir.SUMMARY_FILE}); clean a run made on these data")
    return dict(zip(("x_train", "y_train", "x_test", "y_test"), subset(ds, recipe))), ds


def _record(run_dir: Path, summary: dict, review: str, source: str, ds: data.Dataset, decisions: list[Decision],
            cleaned: dict[str, np.ndarray], measured: dict) -> dict:
    """cleaning.json: the run and review it came from, every reviewed digit, the counts and the accuracies."""
    new_row = {s: {int(i): r for r, i in enumerate(cleaned[f"{s}_index"])} for s in SPLITS}
    changes = [{"split": d.split, "index": d.index, "verdict": d.verdict, "old_label": d.old_label,
                "new_label": {"relabel": d.new_label, "correct": d.old_label}.get(d.verdict),
                "cleaned_index": new_row[d.split].get(d.index), "note": d.note, "reviewed_at": d.reviewed_at,
                "review_row": d.row}
               for d in sorted(decisions, key=lambda d: (SPLITS.index(d.split), d.index))]
    tally = {s: {v: sum(c["split"] == s and c["verdict"] == v for c in changes) for v in VERDICTS} for s in SPLITS}
    counts = {s: {"digits": len(cleaned[f"y_{s}"]) + t["exclude"], "kept": len(cleaned[f"y_{s}"]), **t}
              for s, t in tally.items()}
    review_file = None if review == MTURK else {"path": str(Path(review).resolve()),
                                                 "sha256": hashlib.sha256(Path(review).read_bytes()).hexdigest()}
    return {"version": __version__, "run": {"dir": str(run_dir.resolve()), "run_id": summary["run_id"],
                                            "dataset": ds.name, "class_names": list(ds.class_names)},
            "review": {"source": source, "file": review_file}, "counts": counts, "accuracy": measured,
            "changes": changes}


def _write(run_dir: Path, out: Path, cleaned: dict[str, np.ndarray], record: dict) -> None:
    """cleaned.npz and cleaning.json, both renamed into place or neither, then listed in the manifest of the run
    directory when `out` is inside it, else in out's own."""
    files.make_dirs(out)  # checked already (_check_out): here only created
    base = run_dir if out.resolve().is_relative_to(run_dir.resolve()) else out
    names = [(out / n).resolve().relative_to(base.resolve()).as_posix()
             for n in (rundir.CLEANED_FILE, rundir.CLEANING_FILE)]
    with rundir.locked(base, flag="RUN_DIR" if base == run_dir else "--out"):
        earlier = [base / n for n in names if manifest.listed(base, n)]
        manifest.forget(base, *names)  # until the new pair is listed, a kill leaves it unlisted, never misdescribed
        try:  # both or neither: an earlier cleaning (--force) is put back whole, and listed again, if either fails
            with files.atomic_paths(base / names[0], base / names[1]) as (npz_tmp, json_tmp):
                with open(npz_tmp, "wb") as f:
                    np.savez(f, **cleaned)
                json_tmp.write_text(files.json_text(record))
        except files.WriteError:
            if earlier:
                manifest.record(base, *earlier)
            raise
        manifest.record(base, base / names[0], base / names[1])

"""The report's health section (templates/health.html, health.js), for a run with health.json.

Near-duplicate pairs side by side (leaks and pairs whose labels differ first), the classes' label health and
overlaps, the most outlying images, and a map of every image drawn on a canvas: the coordinates, labels and
marks travel as base64 arrays, and each image as a 14 x 14 thumbnail of 4 grey levels, gzipped (the browser's
DecompressionStream unpacks it), which keeps 70,000 of them near 2 MB.
"""

from __future__ import annotations

import base64
import gzip
from typing import TYPE_CHECKING

import numpy as np

from . import gallery, health, manifest, outputs, rundir
from .config import ConfigError

if TYPE_CHECKING:
    from .data import Dataset
    from .report import Run

# health.json's keys the section reads (commands/health.summary writes them).
HEALTH_KEYS = {"duplicates": ("pairs", "train-train", "test-test", "leaks", "different_labels", "method"),
               "outliers": ("flagged", "train", "test", "method"), "map": ("method",), "label_health_score": (),
               "classes": (), "overlapping": ()}
# The per-image columns the map reads, in scores.csv and train_dynamics.csv.
MAP_COLUMNS = ("outlier_score", "is_outlier", "map_x", "map_y")
DUPLICATE_COLUMNS = ("split_a", "index_a", "split_b", "index_b", "distance", "same_label")
# Pairs and outliers shown as cards; every pair is in duplicates.csv.
PAIRS_SHOWN = 24
OUTLIERS_SHOWN = 16
# The map's marks, one bit each (health.js reads the same bits).
MARKS = {"test": 1, "suspect": 2, "duplicate": 4, "outlier": 8}
# Audit ranks up to this count are "suspected label error" on the map: the depth `validate` reads an audit to.
SUSPECT_TOP = 100
THUMB_SIDE = 14
THUMB_LEVELS = 4  # at most 4: two bits a pixel
# The page's size the map's images give way to (the issue's bound): Fashion-MNIST's galleries alone take 4.4 MB.
PAGE_LIMIT = 6_000_000


def section(run: Run, ds: Dataset) -> dict | None:
    """What health.html shows; None without health.json (no cross-fitted members, or an older run)."""
    if not manifest.listed(run.dir, rundir.HEALTH_FILE):
        return None
    found = manifest.listed_json(run.dir, rundir.HEALTH_FILE)
    _check_health(run.dir / rundir.HEALTH_FILE, found)
    sizes = {"train": int(run.summary["train_digits"]), "test": len(run.table["index"])}
    pairs = read_duplicates(run.dir, sizes)
    train = _train_table(run, sizes["train"])
    names = run.class_names
    return {"found": found, "pairs": _pair_cards(pairs, ds, names), "pairs_total": len(pairs["distance"]),
            "outliers": {"test": _outlier_cards(run.table, ds.x_test, names, "test"),
                         "train": _outlier_cards(train, ds.x_train, names, "train")},
            "map": map_data(run, ds, train, pairs, sizes), "suspect_top": SUSPECT_TOP}


def _check_health(path, found) -> None:
    missing = [k for k, inner in HEALTH_KEYS.items() if not isinstance(found, dict) or k not in found
               or any(not isinstance(found[k], dict) or i not in found[k] for i in inner)]
    if missing:
        raise ConfigError(f"{path}: no {', '.join(missing)} (or not all of its parts); re-run with this version")


def read_duplicates(run_dir, size: dict[str, int]) -> dict[str, np.ndarray]:
    """duplicates.csv, checked: its columns, and splits and indices within the run's images (`size`: by split)."""
    path = manifest.verified(run_dir, rundir.DUPLICATES_FILE)
    rows = outputs.read_rows(path)
    if not rows or tuple(rows[0]) != DUPLICATE_COLUMNS:
        raise ConfigError(f"{path}: expected the columns {','.join(DUPLICATE_COLUMNS)}")
    try:
        cols = {c: [r[k] for r in rows[1:]] for k, c in enumerate(DUPLICATE_COLUMNS)}
        kinds = {"split_a": object, "index_a": np.int64, "split_b": object, "index_b": np.int64,
                 "distance": np.float64, "same_label": np.int64}
        table = {c: np.array(cols[c], dtype=kind) for c, kind in kinds.items()}
    except (ValueError, IndexError) as e:
        raise ConfigError(f"{path}: a malformed row ({e})") from None
    for side in ("a", "b"):
        splits, index = table[f"split_{side}"], table[f"index_{side}"]
        bad = [i for i, (s, j) in enumerate(zip(splits, index)) if s not in size or not 0 <= j < size[s]]
        if bad:
            raise ConfigError(f"{path}: line {bad[0] + 2} names {splits[bad[0]]} image {index[bad[0]]}, not one of "
                              f"this data set's")
    return table


def _train_table(run: Run, n_train: int) -> dict[str, np.ndarray]:
    table = run.dynamics
    if table is None:  # health.json listed without the training table it was written beside
        raise ConfigError(f"{run.dir}: {rundir.HEALTH_FILE} is listed but {rundir.DYNAMICS_FILE} is not")
    n_test = len(run.table["index"])
    for name, t, n in ((rundir.DYNAMICS_FILE, table, n_train), (rundir.SCORES_FILE, run.table, n_test)):
        if len(t["index"]) != n or any(c not in t for c in MAP_COLUMNS):
            raise ConfigError(f"{run.dir / name}: not one row per image with {', '.join(MAP_COLUMNS)}")
    if run.train_issues is not None and len(run.train_issues["index"]) != n_train:
        raise ConfigError(f"{run.dir / rundir.AUDIT['train'].table}: {len(run.train_issues['index'])} rows, but the "
                          f"run trained on {n_train} images")
    return table


def _image(ds: Dataset, split: str, i: int) -> np.ndarray:
    return (ds.x_train if split == "train" else ds.x_test)[i]


def _label(ds: Dataset, split: str, i: int) -> int:
    return int((ds.y_train if split == "train" else ds.y_test)[i])


def _pair_cards(pairs: dict[str, np.ndarray], ds: Dataset, names: tuple[str, ...]) -> list[dict]:
    """The PAIRS_SHOWN pairs a person should see first: leaks, then different labels, then the closest."""
    leak = pairs["split_a"] != pairs["split_b"]
    order = np.lexsort((pairs["distance"], pairs["same_label"], ~leak))[:PAIRS_SHOWN]
    return [{"sides": [{"split": str(pairs[f"split_{s}"][r]), "i": int(pairs[f"index_{s}"][r]),
                        "label": names[_label(ds, pairs[f"split_{s}"][r], pairs[f"index_{s}"][r])],
                        "img": gallery.digit_uri(_image(ds, pairs[f"split_{s}"][r], pairs[f"index_{s}"][r]))}
                       for s in ("a", "b")],
             "distance": float(pairs["distance"][r]), "same": bool(pairs["same_label"][r]), "leak": bool(leak[r])}
            for r in order]


def _outlier_cards(table: dict[str, np.ndarray], x: np.ndarray, names: tuple[str, ...], split: str) -> list[dict]:
    rows = np.argsort(table["outlier_score"], kind="stable")[:OUTLIERS_SHOWN]  # LOWER = more outlying
    return [{"i": int(r), "split": split, "label": names[int(table["label"][r])],
             "score": float(table["outlier_score"][r]), "img": gallery.digit_uri(x[r])} for r in rows]


def map_data(run: Run, ds: Dataset, train: dict[str, np.ndarray], pairs: dict[str, np.ndarray],
             sizes: dict[str, int]) -> dict:
    """The canvas's arrays, base64: x and y as uint16 over the map's extent, labels, marks (MARKS), thumbnails."""
    n_train, n_test = sizes["train"], sizes["test"]
    xy = np.stack([health.joined(train[c], run.table[c]) for c in ("map_x", "map_y")], axis=1)
    if not np.isfinite(xy).all():
        raise ConfigError(f"{run.dir}: the map's coordinates are not all finite")
    low, span = xy.min(axis=0), np.maximum(np.ptp(xy, axis=0), 1e-9)
    scaled = np.round((xy - low) / span * 65535).astype("<u2")
    labels = health.joined(train["label"], run.table["label"]).astype(np.uint8)
    marks = np.zeros(len(labels), dtype=np.uint8)
    marks[n_train:] |= MARKS["test"]
    outlier = health.joined(train["is_outlier"], run.table["is_outlier"]) == 1
    marks[outlier] |= MARKS["outlier"]
    for side in ("a", "b"):
        rows = np.where(pairs[f"split_{side}"] == "test", n_train, 0) + pairs[f"index_{side}"]
        marks[rows.astype(np.int64)] |= MARKS["duplicate"]
    for split, offset in (("train", 0), ("test", n_train)):
        issues = run.train_issues if split == "train" else run.label_issues
        if issues is not None:
            marks[offset + np.flatnonzero(issues["rank"] <= SUSPECT_TOP)] |= MARKS["suspect"]
    found = {"n": len(labels), "n_train": n_train, "side": THUMB_SIDE, "bits": MARKS, "classes": list(run.class_names),
             "xy": _b64(scaled.tobytes()), "labels": _b64(labels.tobytes()), "marks": _b64(marks.tobytes())}
    return {**found, **_thumbs(ds, n_train, n_test, THUMB_LEVELS)}


def set_thumbnails(section: dict, run: Run, ds: Dataset, levels: int) -> None:
    """The map's images again, at `levels` grey levels (render's fallback for a large page)."""
    section["map"].update(_thumbs(ds, section["map"]["n_train"], len(run.table["index"]), levels))


def _thumbs(ds: Dataset, n_train: int, n_test: int, levels: int) -> dict:
    packed = thumbnails(health.joined(ds.x_train[:n_train], ds.x_test[:n_test]), levels)
    return {"levels": levels, "thumbs": _b64(gzip.compress(packed.tobytes(), 9, mtime=0))}


def thumbnails(images: np.ndarray, levels: int = THUMB_LEVELS) -> np.ndarray:
    """(N, 28, 28) uint8 -> (ceil(N * 196 / 4),) uint8: each image's 2 x 2 means quantised to 0..levels-1, row-major,
    image after image, four pixels to a byte, the first in the top two bits."""
    n, h, w = images.shape
    small = images.reshape(n, h // 2, 2, w // 2, 2).astype(np.float32).mean(axis=(2, 4))
    flat = np.minimum(small * levels / 256, levels - 1).astype(np.uint8).ravel()
    flat = np.concatenate([flat, np.zeros(-len(flat) % 4, np.uint8)])
    return (flat.reshape(-1, 4) << np.array([6, 4, 2, 0], np.uint8)).sum(axis=1, dtype=np.uint8)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")

"""The command line's flag values: each parsed and checked as typed, argparse's one-line error otherwise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import PUBLISHED_DATASETS, RANKING_NAMES, USER_FORMATS
from .manifest import MANIFEST_FILE


def absolute_path(text: str) -> Path:
    """A path made absolute as typed, so the run records where it is wherever `report` later runs from."""
    return Path(text).expanduser().absolute()


def int_flag(text: str, zero_ok: bool) -> int:
    kind, bound = ("0 or a positive integer", "0 or positive") if zero_ok else ("a positive integer", "positive")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if value < (0 if zero_ok else 1):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    return int_flag(text, zero_ok=False)


def non_negative_int(text: str) -> int:
    return int_flag(text, zero_ok=True)


def widths(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def dataset(text: str) -> str:
    """A --dataset value; a user file's path is made absolute, so `report` finds it from anywhere."""
    fmt, sep, path = text.partition(":")
    if text in PUBLISHED_DATASETS:
        return text
    if not (sep and fmt in USER_FORMATS and path):
        raise argparse.ArgumentTypeError(f"expected {', '.join(PUBLISHED_DATASETS)}, idx:DIR or npz:FILE, got {text!r}")
    return f"{fmt}:{Path(path).expanduser().resolve()}"


def class_names(text: str) -> tuple[str, ...]:
    """'a,b,c', or a JSON file (name ending .json) holding a list of names."""
    if not text.endswith(".json"):
        return tuple(name.strip() for name in text.split(","))
    try:
        names = json.loads(Path(text).read_text())
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {text} ({e})") from None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON list of names, e.g. [\"cat\", \"dog\"]")
    return tuple(names)


def rankings(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))  # in order, once each
    unknown = [n for n in names if n not in RANKING_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown ranking {', '.join(map(repr, unknown))}; "
                                         f"choose from {', '.join(RANKING_NAMES)}")
    return names


def run_dir(text: str) -> Path:
    """A directory written by `run` or `audit` (it has a manifest.json)."""
    path = Path(text)
    try:
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text} does not exist")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is not a directory")
        if not (path / MANIFEST_FILE).is_file():
            raise argparse.ArgumentTypeError(f"{text} is not a run directory (no {MANIFEST_FILE})")
    except OSError as e:  # a directory we may not look into
        raise argparse.ArgumentTypeError(f"cannot read {text}: {e.strerror or e}") from None
    return path

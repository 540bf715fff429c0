"""manifest.json: every output of a run directory with its sha256, so a changed file is never used.

An output counts as written once it is listed here: it is renamed into place
first (files.atomic_path) and listed second, so a run killed in between leaves
a complete file that is simply not listed, and `--resume` writes it again. A
listed file whose bytes no longer match (edited, truncated, half-copied) is
refused with a one-line error wherever it is read: resume, report, validate,
predict.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__, files
from .config import ConfigError

MANIFEST_FILE = "manifest.json"
# Held around every read-modify-write of the manifest, so two commands writing into one
# run directory at once (say `predict --run R` during `audit --out R`) never drop each
# other's entries. A hidden file; it never holds results.
LOCK_FILE = ".manifest.lock"
# The format of this file and of the files it lists; bumped whenever either changes, so an older run is refused.
MANIFEST_VERSION = 2
# The package version that wrote manifests of each earlier format, for the refusal's message.
WRITTEN_BY = {1: "0.6 or earlier"}
_CHUNK = 1 << 20  # hash large files (checkpoints, probabilities) a megabyte at a time


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load(run_dir: Path) -> dict[str, dict]:
    """Relative path (posix) -> {"sha256", "bytes"}; empty when there is no manifest yet."""
    path = Path(run_dir) / MANIFEST_FILE
    try:
        if not path.is_file():
            return {}
        body = json.loads(path.read_text())
    except OSError as e:  # e.g. a run directory another user owns
        raise ConfigError(f"{path}: unreadable manifest ({e.strerror or e})") from None
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: unreadable manifest (expected an object with a \"files\" object)")
    version = body.get("version")
    if version is None:
        raise ConfigError(f"{path}: no manifest format version (edited, or not written by ambiguous-digits): run "
                          f"again (a new --out, or --force)")
    if version != MANIFEST_VERSION:  # a format this version does not know: its files may mean something else
        writer = body.get("written_by") or WRITTEN_BY.get(version, "another version")
        if writer == __version__:  # this version writes MANIFEST_VERSION only: the file was edited
            raise ConfigError(f"{path}: manifest format {version!r}, but ambiguous-digits {writer}, named as its "
                              f"writer, writes format {MANIFEST_VERSION} (edited?): run again (a new --out, or --force)")
        raise ConfigError(f"{path}: written by ambiguous-digits {writer} (manifest format {version!r}); this is "
                          f"{__version__}, which reads format {MANIFEST_VERSION}: run again (a new --out, or --force)")
    entries = body.get("files")
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: unreadable manifest (expected an object with a \"files\" object)")
    bad = next((n for n, e in entries.items() if not (isinstance(e, dict) and isinstance(e.get("sha256"), str))), None)
    if bad is not None:
        raise ConfigError(f"{path}: unreadable manifest (its entry {bad!r} has no sha256)")
    return entries


def _save(run_dir: Path, entries: dict[str, dict]) -> None:
    body = {"version": MANIFEST_VERSION, "written_by": __version__, "files": dict(sorted(entries.items()))}
    files.write_json(Path(run_dir) / MANIFEST_FILE, body)


def _name(run_dir: Path, path: Path) -> str:
    return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()


def _locked(run_dir: Path):
    return files.locked(Path(run_dir) / LOCK_FILE, "the manifest")


def record(run_dir: Path, *paths: Path) -> None:
    """List `paths` (complete files inside run_dir) with their current sha256 and size."""
    run_dir = Path(run_dir)
    sums = {_name(run_dir, path): {"sha256": sha256(path), "bytes": Path(path).stat().st_size} for path in paths}
    with _locked(run_dir):
        entries = load(run_dir)
        entries.update(sums)
        _save(run_dir, entries)


def forget(run_dir: Path, *names: str) -> None:
    """Unlist `names` (relative paths, or folders ending in '/'); the files themselves are left alone."""
    with _locked(run_dir):
        entries = load(run_dir)
        keep = {k: v for k, v in entries.items() if not any(k == n or (n.endswith("/") and k.startswith(n))
                                                             for n in names)}
        if keep != entries:
            _save(run_dir, keep)


def listed(run_dir: Path, name: str) -> bool:
    return name in load(run_dir)


def listed_json(run_dir: Path, name: str) -> dict | None:
    """The JSON of run_dir/name when it is listed (checked unchanged, see verified); None when it is not."""
    if not listed(run_dir, name):
        return None
    return json.loads(verified(run_dir, name).read_text())


def require(run_dir: Path) -> None:
    """Refuse a directory that no command of ours wrote (it has no manifest)."""
    if not (Path(run_dir) / MANIFEST_FILE).is_file():
        raise ConfigError(f"RUN_DIR: {run_dir} has no {MANIFEST_FILE}; is it a run directory?")


def verified(run_dir: Path, name: str) -> Path:
    """run_dir/name after checking it is listed and unchanged; ConfigError (one line) otherwise."""
    run_dir = Path(run_dir)
    require(run_dir)
    path, entry = run_dir / name, load(run_dir).get(name)
    if entry is None:
        raise ConfigError(f"{path}: not listed in {MANIFEST_FILE}, so not known to be complete; refusing to use it")
    if not path.is_file():
        raise ConfigError(f"{path}: listed in {MANIFEST_FILE} but missing")
    if sha256(path) != entry["sha256"]:
        raise ConfigError(f"{path}: sha256 differs from {MANIFEST_FILE} (changed or truncated); refusing to use it")
    return path

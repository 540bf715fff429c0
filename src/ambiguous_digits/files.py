"""Safe files: every output is written whole to a temporary file, then renamed into place."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes owner-only (0600) files; outputs get the permissions any new file
# would get, so a shared results folder stays readable.
FILE_MODE = 0o666 & ~_umask()


class WriteError(Exception):
    """An output could not be written (read-only place, disk full, a folder in the way): one line naming it."""

    @classmethod
    def of(cls, path: Path, error: OSError) -> "WriteError":
        return cls(f"{path}: cannot write it ({error.strerror or error})")


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold the lock file `path` (anyone who may write beside it may take it); filelock.Timeout when another
    process holds it past `timeout` seconds (-1: wait), a WriteError naming `what` when it cannot be made."""
    try:
        lock = FileLock(path, mode=0o666, timeout=timeout)
        lock.acquire()
    except Timeout:  # an OSError too, but not one to report as unwritable
        raise
    except OSError as e:
        raise WriteError(f"{path}: cannot lock {what} ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()


def make_dirs(folder: Path) -> Path:
    """mkdir -p, or a WriteError naming the folder (a file in its place, a read-only parent)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError.of(folder, e) from None
    return folder


@contextlib.contextmanager
def _temporary(beside: Path) -> Iterator[Path]:
    """A new temporary file in `beside`'s folder, with the permissions of any new file; removed at
    the end unless it was renamed away."""
    fd, tmp = tempfile.mkstemp(dir=beside.parent, prefix=f".{beside.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it.

    A reader (or an interrupted run) sees the old file or the new one, never half of one.
    An OSError while writing or renaming becomes a WriteError naming `path`; the old
    file, if any, is left as it was.
    """
    path = Path(path)
    try:
        with _temporary(path) as tmp:
            yield tmp
            os.replace(tmp, path)
    except OSError as e:
        raise WriteError.of(path, e) from None


@contextlib.contextmanager
def atomic_paths(*paths: Path) -> Iterator[list[Path]]:
    """atomic_path for files that belong together: a temporary beside each, all renamed into place on success.
    Where one cannot be (a folder or an undeletable file in the way, an interrupt), those already renamed are put
    back from copies kept until the end: the set is left old or new, never mixed, and every path keeps a file.
    An OSError becomes a WriteError naming the file, or the set where it cannot tell which."""
    paths = [Path(p) for p in paths]
    what = f"{paths[0].parent}: cannot write {', '.join(p.name for p in paths)}"
    with contextlib.ExitStack() as stack:
        try:
            tmps = [stack.enter_context(_temporary(p)) for p in paths]
        except OSError as e:
            raise WriteError(f"{what} ({e.strerror or e})") from None
        try:
            yield tmps
        except OSError as e:
            raise WriteError(f"{what} ({e.strerror or e})") from None
        _replace_all(tmps, paths)


def _replace_all(tmps: list[Path], paths: list[Path]) -> None:
    """Keep a copy of each old file, rename the new ones in, then drop the copies; undo it all on any error."""
    for path in paths:
        if path.is_dir():
            raise WriteError(f"{path}: cannot write it (a folder is in the way)")
    kept: dict[Path, Path] = {}  # path -> its old file's copy
    placed: list[Path] = []
    path = paths[0]
    try:
        for path in paths:
            if path.exists():
                kept[path] = _keep(path)
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
            placed.append(path)
    except BaseException as e:
        for new in placed:
            with contextlib.suppress(OSError):
                if new in kept:
                    os.replace(kept[new], new)
                else:
                    os.unlink(new)
        for copy in kept.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)
        if isinstance(e, OSError):
            raise WriteError.of(path, e) from None
        raise
    for copy in kept.values():
        with contextlib.suppress(OSError):
            os.unlink(copy)


def _keep(path: Path) -> Path:
    """A copy of `path` beside it (a hard link where the file system has them): the old file, should it be
    needed back."""
    copy = path.with_name(f".{path.name}.{os.getpid()}.old")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(copy)
    try:
        os.link(path, copy)
    except OSError as e:
        if e.errno == errno.EPERM:  # an undeletable (immutable) file: it cannot be replaced either
            raise
        shutil.copy2(path, copy)  # no hard links on this file system
    return copy


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def json_text(obj: object) -> str:
    """How every JSON output is written: indented, keys in their order, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_json(path: Path, obj: object) -> None:
    write_text(path, json_text(obj))


def write_new(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write `data` whole to folder/<stem><suffix>, or <stem>-2<suffix>, -3, ...: the first name not taken.

    The name is claimed with a hard link from a complete temporary file, so an
    existing file (or one another process creates meanwhile) is never overwritten.
    Where hard links are not supported (FAT, some network shares) the name is
    claimed by creating it exclusively, and the complete file renamed onto it.
    """
    path = folder / f"{stem}{suffix}"
    try:
        with _temporary(path) as tmp:
            tmp.write_bytes(data)
            for n in itertools.count(2):
                if _claim(tmp, path):
                    return path
                path = folder / f"{stem}-{n}{suffix}"
    except OSError as e:
        raise WriteError.of(path, e) from None


def _claim(tmp: Path, path: Path) -> bool:
    """Put the complete file `tmp` at `path` unless `path` exists; False when it does."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system
        pass
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    except FileExistsError:
        return False
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the empty file that claimed the name
        raise
    return True

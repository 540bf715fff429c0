"""Safe files: every output is written whole to a temporary file, then renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes owner-only (0600) files; outputs get the permissions any new file
# would get, so a shared results folder stays readable.
FILE_MODE = 0o666 & ~_umask()


class WriteError(Exception):
    """An output could not be written (read-only place, disk full, a folder in the way): one line naming it."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"{path}: cannot write it ({error.strerror or error})")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it.

    A reader (or an interrupted run) sees the old file or the new one, never half of one.
    An OSError while writing or renaming becomes a WriteError naming `path`; the old
    file, if any, is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteError(path, e) from None
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise WriteError(path, e) from None
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

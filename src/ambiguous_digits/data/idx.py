"""The IDX format (LeCun's): parse and encode uint8 arrays, and read the four-file layout from a folder."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataError

# The canonical file names (LeCun's), shared by every data set in this layout and
# used as cache names whatever the source.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The arrays the four files hold, by the names Keras's npz and user npz files use.
NPZ_KEYS = dict(zip(FILES, ("x_train", "y_train", "x_test", "y_test")))
# IDX magic is 0x0000 08 <ndim>: 0x08 means unsigned bytes, all these data sets use.
IDX_UBYTE = 0x08


def read_idx(data: bytes, *, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse IDX bytes into a read-only uint8 array (ndim 1 or 3).

    With `shape`, the magic and shape must match it. Raises DataError naming `name` on any mismatch.
    """
    ndims = (len(shape),) if shape else (1, 3)
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in [(IDX_UBYTE << 8) | n for n in ndims]:
        want = " or ".join(f"0x{(IDX_UBYTE << 8) | n:08x}" for n in ndims)
        raise DataError(f"{name}: bad IDX magic 0x{magic:08x}, expected {want} (unsigned bytes)")
    return _idx_body(data, magic & 0xFF, name=name, expected=shape)


def _idx_body(data: bytes, ndim: int, *, name: str, expected: tuple[int, ...] | None) -> np.ndarray:
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: {len(data)} bytes, too short for {ndim} IDX dims")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if expected and shape != expected:
        raise DataError(f"{name}: expected shape {expected}, got {shape}")
    want = header + math.prod(shape)
    if len(data) != want:
        raise DataError(f"{name}: {len(data)} bytes, header {shape} needs {want}")
    try:
        return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    except ValueError:  # an empty dimension beside dimensions whose product no array can hold
        raise DataError(f"{name}: header {shape} is not a shape an array can hold") from None


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array of ndim 1 or 3 as IDX bytes (inverse of read_idx)."""
    if arr.dtype != np.uint8 or arr.ndim not in (1, 3):
        raise ValueError(f"idx_bytes needs uint8 of ndim 1 or 3, got {arr.dtype} ndim {arr.ndim}")
    header = struct.pack(f">I{arr.ndim}I", (IDX_UBYTE << 8) | arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def gunzip(data: bytes, *, name: str) -> bytes:
    """Decompressed `data`; DataError naming `name` if it is not whole gzip."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt gzip ({e})") from None


def read_four_files(folder: Path, *, label: str) -> dict[str, bytes]:
    """The four canonical files in `folder`, each as <name> or <name>.gz, decompressed.

    Raises DataError naming `label` and the files that are missing or unreadable.
    """
    found = {name: next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None) for name in FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DataError(f"{label}: missing {', '.join(f'{n}[.gz]' for n in missing)}")
    try:
        raw = {name: path.read_bytes() for name, path in found.items()}
    except OSError as e:
        raise DataError(f"{label}: cannot read ({e})") from None
    return {name: gunzip(blob, name=found[name].name) if found[name].suffix == ".gz" else blob
            for name, blob in raw.items()}

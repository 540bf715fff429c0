"""Tests for ambiguous_digits.data.user: idx:DIR and npz:FILE read, validated and refused with one-line messages,
and a user's 3-class npz end to end (run, audit, report, validate, resume) on a tiny slice of the real MNIST."""

import csv
import gzip
import hashlib
import json
import re
import shutil
import zlib

import numpy as np
import pytest

from ambiguous_digits import cli, data, manifest
from ambiguous_digits.data import FILES, DataError, idx_bytes, user
from ambiguous_digits.data.idx import NPZ_KEYS

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
    for name, key in NPZ_KEYS.items():
        blob = idx_bytes(arrs[key])
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return f"idx:{folder}"


# ---------------------------------------------------------------- what loads
def test_npz_with_three_classes_loads_with_default_names(tmp_path):
    a = arrays()
    ds = data.load_dataset(save_npz(tmp_path / "d.npz", **a), **QUIET)
    assert ds.class_names == ("0", "1", "2") and ds.num_classes == 3
    for key in user.KEYS:
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
    assert ds.checksums == {n: hashlib.md5(idx_bytes(a[k])).hexdigest() for n, k in NPZ_KEYS.items()}


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


def test_user_data_is_of_images_and_records_no_noun(tmp_path):
    ds = data.load_dataset(save_npz(tmp_path / "d.npz", **arrays()), **QUIET)
    assert ds.noun == "image"
    assert list(ds.record()) == ["dataset", "class_names", "source", "md5"]


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
    (b"not a zip", r"not an npz archive \(an npz is a zip file of .npy arrays x_train"),  # never "pickled data"
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "not an npz archive"),
    (b"", "not an npz archive"),
    (b"PKG notes, not a zip", "not an npz archive"),
    (b"PK\x03\x04 a zip cut short", "unreadable npz"),
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
    with pytest.raises(DataError, match=r"npz:.*d.npz: unreadable npz"):
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
def test_class_names_from_a_json_file(tmp_path, called):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["cat", "dog", "bird"]))
    recipe = called("run", "--dataset", "npz:d.npz", "--class-names", str(names))["recipe"]
    assert recipe.class_names == ("cat", "dog", "bird")
    assert recipe.dataset.startswith("npz:/") and recipe.dataset.endswith("/d.npz")  # made absolute


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


# ---------------------------------------------------------------- end to end on a user's npz
NAMES = ("zero", "one", "seven")
DIGITS = (0, 1, 7)  # the 3 classes: real MNIST digits, relabelled 0..2
TINY = ["--epochs", "1", "--widths", "8,16,32", "--top", "5", "--quiet", "--threads", "2"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _slice(x, y, n):
    keep = np.flatnonzero(np.isin(y, DIGITS))[:n]
    return x[keep], np.searchsorted(DIGITS, y[keep]).astype(np.int64)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory, mnist):
    """npz:FILE with 900 training and 240 test images of three classes, and its run directory after run + audit."""
    root = tmp_path_factory.mktemp("npz3")
    (x_train, y_train), (x_test, y_test) = _slice(mnist.x_train, mnist.y_train, 900), _slice(mnist.x_test, mnist.y_test, 240)
    np.savez(root / "three.npz", x_train=x_train, y_train=y_train, x_test=x_test / np.float32(255), y_test=y_test)
    spec, out = f"npz:{root / 'three.npz'}", root / "run"
    flags = ["--out", str(out), "--dataset", spec, "--class-names", ",".join(NAMES), *TINY]
    assert cli.main(["run", *flags, "--members", "2", "--epochs", "3"]) == 0  # each member trains on 450 (cross-fitted)
    assert cli.main(["audit", *flags, "--folds", "2"]) == 0
    return spec, out, y_test


def test_user_npz_run_scores_three_classes(three_classes):
    spec, out, y_test = three_classes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["dataset"] == spec and summary["data"]["class_names"] == list(NAMES)
    assert set(summary["data"]["md5"]) == {"x_train", "y_train", "x_test", "y_test"}
    assert summary["model"].endswith("parameters") and "linear(3)" in summary["model"]
    assert json.loads((out / "config.json").read_text())["recipe"]["class_names"] == list(NAMES)
    with np.load(out / "probs.npz") as z:
        assert z["probs"].shape == (2, 240, 3)
        np.testing.assert_array_equal(z["labels"], y_test)
    rows = _rows(out / "scores.csv")
    assert [int(r["index"]) for r in rows] == list(range(240))
    assert {int(r["pred"]) for r in rows} <= {0, 1, 2}
    assert summary["test_accuracy"] > 0.8  # 0, 1 and 7 are easy even for a tiny network; chance is 1/3
    assert {t["label"] for t in summary["top_ambiguous"]} <= set(NAMES)


def test_user_npz_audit_names_given_and_suggested_classes(three_classes):
    _, out, _ = three_classes
    audit = json.loads((out / "audit_test.json").read_text())
    assert audit["digits"] == 240 and len(audit["top_labels"]) == len(audit["top"])
    assert all(given in NAMES and suggested in NAMES for given, suggested in audit["top_labels"])
    rows = _rows(out / "label_issues.csv")
    assert len(rows) == 240 and {int(r["suggested_label"]) for r in rows} <= {0, 1, 2}


def test_user_npz_report_shows_class_names(three_classes, capsys):
    spec, out, _ = three_classes
    (out / "report.html").unlink()
    assert cli.main(["report", str(out)]) == 0  # re-reads the npz the run recorded, checks its MD5s
    html = (out / "report.html").read_text()
    page = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
    assert page["classes"] == list(NAMES)
    assert all(len(d["probs"]) == 3 for d in page["digits"])
    head = re.search(r'<table id="confusion".*?</thead>', html, re.S).group(0)
    assert all(f"<th>{name}</th>" in head for name in NAMES)
    assert '<option value="label_issues">' in html
    assert "original notebook" not in html  # the MNIST-only comparison is left out
    answers = re.search(r'<section id="answers">.*?</section>', html, re.S).group(0)
    assert "test images" in answers and not re.search(r"\bdigits?\b", answers, re.I)


def test_validate_says_plainly_there_is_no_review(three_classes, capsys):
    spec, out, _ = three_classes
    assert cli.main(["validate", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"no human review of {spec}'s labels exists" in err and err.count("\n") == 1
    assert not (out / "validation.json").exists()


def test_report_refuses_data_that_changed_since_the_run(three_classes, tmp_path, capsys):
    spec, out, _ = three_classes
    path = spec.partition(":")[2]
    with np.load(path) as z:
        arrays = dict(z)
    arrays["x_test"] = arrays["x_test"][::-1].copy()
    changed = tmp_path / "run"
    shutil.copytree(out, changed)
    summary = json.loads((changed / "summary.json").read_text())
    moved = tmp_path / "changed.npz"
    np.savez(moved, **arrays)
    summary["recipe"]["dataset"] = f"npz:{moved}"
    (changed / "summary.json").write_text(json.dumps(summary))
    manifest.record(changed, changed / "summary.json")  # listed as complete: the data check must catch it
    assert cli.main(["report", str(changed)]) == 2
    assert "data given are not the ones this run used (md5 differs)" in capsys.readouterr().err


def test_user_npz_report_gallery_speaks_of_images_in_a_browser(three_classes):
    """The gallery's own text (report.js) follows the data set too: images, not digits."""
    from playwright.sync_api import sync_playwright

    _, out, _ = three_classes
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out / "report.html").as_uri())
        status = page.text_content("#gallery-status")
        page.click("#gallery .digit")
        title = page.text_content("#detail-title")
        browser.close()
    assert "ranked images that match" in status and "digit" not in status
    assert title.startswith("Test image #")


def test_limits_beyond_a_user_data_set_are_one_line_errors(three_classes, tmp_path, capsys):
    spec, _, _ = three_classes
    out = tmp_path / "o"
    assert cli.main(["run", "--out", str(out), "--dataset", spec, "--test-limit", "500", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--test-limit: {spec} has 240 test images, got 500" in err and len(err.splitlines()) == 1
    assert not out.exists()  # refused before the directory is claimed


def test_resume_refuses_user_data_changed_since_the_run_started(three_classes, tmp_path, capsys):
    spec, _, _ = three_classes
    with np.load(spec[4:]) as z:
        arrays = dict(z)
    path, out = tmp_path / "mine.npz", tmp_path / "run"
    np.savez(path, **arrays)
    flags = ["--out", str(out), "--dataset", f"npz:{path}", "--members", "1", "--train-limit", "300", *TINY]
    assert cli.main(["run", *flags]) == 0
    manifest.forget(out, "summary.json")  # as if killed before it finished
    arrays["y_test"][:3] = (arrays["y_test"][:3] + 1) % 3  # labels fixed by hand meanwhile
    np.savez(path, **arrays)
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume: " in err and "y_test changed since this run started" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["run", "audit"])
@pytest.mark.parametrize("split, names, says", [
    ("test", [], "test images are all of one class (0)"),
    ("train", ["--class-names", "a,b"], "training images are all of one class (a)")])
def test_a_split_of_one_class_is_refused_before_anything_trains(tmp_path, capsys, command, split, names, says):
    """cleanlab ranks a label against the other classes: one class left it raising after the members trained."""
    a = arrays(k=2)
    a[f"y_{split}"] = np.zeros_like(a[f"y_{split}"])
    spec = save_npz(tmp_path / "d.npz", **a)
    argv = [command, "--out", str(tmp_path / "o"), "--dataset", spec, *names, "--quiet"]
    assert cli.main(argv + (["--split", "train"] if command == "audit" and split == "train" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--dataset: {spec}'s {says}; the label audit needs two or more" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command, says", [
    ("run", "--test-limit: the first 1 test images of mnist are all of one class (7); the label audit needs two or "
            "more: give a larger --test-limit"),
    ("audit", "--test-limit: 1 test image(s) to audit; K-fold cross-validation needs 2 or more")])
def test_a_test_limit_that_leaves_one_digit_names_the_limit(tmp_path, capsys, mnist_dir, command, says):
    argv = [command, "--out", str(tmp_path / "o"), "--data-dir", str(mnist_dir), "--test-limit", "1", "--top", "1",
            "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not (tmp_path / "o").exists()

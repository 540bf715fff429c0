"""End to end on other data sets than MNIST: a user's 3-class npz and the real Fashion-MNIST, on tiny slices."""

import csv
import json
import re

import numpy as np
import pytest

from ambiguous_digits import cli, data, manifest

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
    assert cli.main(["run", *flags, "--members", "2"]) == 0
    assert cli.main(["audit", *flags, "--folds", "2"]) == 0
    return spec, out, y_test


def test_user_npz_run_scores_three_classes(three_classes):
    spec, out, y_test = three_classes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["dataset"] == spec and summary["data"]["class_names"] == list(NAMES)
    assert set(summary["data"]["md5"]) == {"x_train", "y_train", "x_test", "y_test"}
    assert summary["model"].endswith("parameters") and "linear(3)" in summary["model"]
    assert json.loads((out / "config.json").read_text())["class_names"] == list(NAMES)
    with np.load(out / "probs.npz") as z:
        assert z["probs"].shape == (2, 240, 3)
        np.testing.assert_array_equal(z["labels"], y_test)
    rows = _rows(out / "scores.csv")
    assert [int(r["index"]) for r in rows] == list(range(240))
    assert {int(r["pred"]) for r in rows} <= {0, 1, 2}
    assert summary["test_accuracy"] > 0.8  # 0, 1 and 7 are easy even for one tiny epoch; chance is 1/3
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
    import shutil

    shutil.copytree(out, changed)
    summary = json.loads((changed / "summary.json").read_text())
    moved = tmp_path / "changed.npz"
    np.savez(moved, **arrays)
    summary["config"]["dataset"] = f"npz:{moved}"
    (changed / "summary.json").write_text(json.dumps(summary))
    manifest.record(changed, changed / "summary.json")  # listed as complete: the data check must catch it
    assert cli.main(["report", str(changed)]) == 2
    assert "data given are not the ones this run used (md5 differs)" in capsys.readouterr().err


# ---------------------------------------------------------------- the real Fashion-MNIST
@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("fashion") / "run"
    assert cli.main(["run", "--out", str(out), "--dataset", "fashion-mnist", "--data-dir", str(fashion_dir),
                     "--train-limit", "3000", "--test-limit", "500", "--members", "1", "--batch-size", "64", *TINY]) == 0
    return out


def test_fashion_mnist_run_end_to_end(fashion_run, capsys):
    summary = json.loads((fashion_run / "summary.json").read_text())
    assert summary["data"]["dataset"] == "fashion-mnist"
    assert summary["data"]["md5"] == data.FASHION_MNIST.content_md5
    assert summary["data"]["class_names"] == list(data.FASHION_MNIST.class_names)
    assert (summary["train_digits"], summary["test_digits"]) == (3000, 500)
    assert summary["test_accuracy"] > 0.6  # one tiny epoch on 3,000 images (73% measured); chance is 10%


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

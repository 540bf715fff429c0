"""`clean`: a review of a run's labels -> the cleaned data set, and the run's ensemble re-measured (no retraining)."""

import collections
import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from ambiguous_digits import cli, data, manifest, rundir, validate
from ambiguous_digits.commands import clean

HEADER = ",".join(clean.REVIEW_COLUMNS)
AT = "2024-05-01T10:00"


@pytest.fixture(scope="module")
def tiny_run(report_run, tmp_path_factory):
    """The session's tiny run (conftest.REPORT_RUN), copied: `clean` writes into its run directory."""
    out = tmp_path_factory.mktemp("clean") / "run"
    shutil.copytree(report_run, out)
    return out


@pytest.fixture(scope="module")
def run_labels(tiny_run):
    """The tiny run's labels by split, its (M, N, K) probabilities and the ensemble's (N,) predictions."""
    with np.load(tiny_run / rundir.PROBS_FILE) as z:
        probs, y_test = z["probs"], z["labels"]
    summary = json.loads((tiny_run / rundir.SUMMARY_FILE).read_text())
    mnist = data.load_mnist(summary["invocation"]["data_dir"], progress=False)
    assert np.array_equal(mnist.y_test[:300], y_test)
    return {"test": y_test, "train": mnist.y_train[:600]}, probs, probs.mean(axis=0).argmax(axis=1), mnist


def _row(split, index, given, verdict, new="", note="", at=AT):
    return f"{split},{index},{given},{verdict},{new},{note},{at}"


def _review(tmp_path, lines, header=HEADER):
    path = tmp_path / "review.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def _clean(run, review, *extra):
    return cli.main(["clean", str(run), "--review", str(review), *map(str, extra)])


# ---------------------------------------------------------------------------
# A bad review: one line naming the file and the row, exit 2, nothing written
# ---------------------------------------------------------------------------
def _bad_cases(y):
    """name -> (header, the lines after it (line 2 a good one), what the one line says after '{file}: ')."""
    t0, t5, tr9 = int(y["test"][0]), int(y["test"][5]), int(y["train"][9])
    other, good = (t5 + 1) % 10, _row("test", 0, t0, "correct")
    cases = {
        "missing column": (",".join(clean.REVIEW_COLUMNS[:-1]), [good.rpartition(",")[0]],
                           "line 1: no column 'reviewed_at'"),
        "extra column": (HEADER + ",extra", [good + ",x"], "line 1: unknown or repeated column 'extra'"),
        "short row": (HEADER, ["test,5,3,correct,"], "line 3: 5 fields, the header has 7"),
        "broken quote": (HEADER, ['test,5,"3,correct,,,'], "line 3: unreadable CSV"),
        "header only": (HEADER, [], "line 2: no reviewed digits"),
        "unknown split": (HEADER, [_row("val", 5, t5, "correct")], "line 3: split 'val' is not test or train"),
        "test index outside the run": (HEADER, [_row("test", 300, t5, "correct")],
                                       "line 3: test digit 300 is not in this run (its test digits are 0..299)"),
        "train index outside the run": (HEADER, [_row("train", 600, tr9, "exclude")],
                                        "line 3: train digit 600 is not in this run"),
        "negative index": (HEADER, [_row("test", -1, t5, "correct")], "line 3: test digit -1 is not in this run"),
        "index not a number": (HEADER, [_row("test", "five", t5, "correct")], "line 3: index 'five' is not a whole"),
        "given label out of range": (HEADER, [_row("test", 5, 10, "correct")],
                                     "line 3: given_label 10 is out of range 0..9"),
        "new label out of range": (HEADER, [_row("test", 5, t5, "relabel", 10)],
                                   "line 3: new_label 10 is out of range 0..9"),
        "relabel without a new label": (HEADER, [_row("test", 5, t5, "relabel")],
                                        "line 3: verdict relabel needs a new_label"),
        "new label without relabel": (HEADER, [_row("test", 5, t5, "exclude", other)],
                                      f"line 3: new_label {other} with verdict exclude; only relabel takes one"),
        "unknown verdict": (HEADER, [_row("test", 5, t5, "maybe")],
                            "line 3: verdict 'maybe' is not one of correct, relabel, exclude"),
        "two verdicts": (HEADER, [_row("test", 0, t0, "exclude")],
                         "line 3: test digit 0 is reviewed twice: correct (line 2), here exclude"),
        "two new labels": (HEADER, [_row("train", 9, tr9, "relabel", (tr9 + 1) % 10),
                                    _row("train", 9, tr9, "relabel", (tr9 + 2) % 10)],
                           (f"line 4: train digit 9 is reviewed twice: relabel to {(tr9 + 1) % 10} (line 3), "
                            f"here relabel to {(tr9 + 2) % 10}")),
        "another data set's run": (HEADER, [_row("test", 5, other, "correct")],
                                   (f"line 3: test digit 5 is labelled {t5} in this run, the file says {other} "
                                    f"(a review of another data set's run?)")),
        "relabel to its own label": (HEADER, [_row("test", 5, t5, "relabel", t5)],
                                     f"line 3: relabel of test digit 5 to {t5}, the label it has (say correct)"),
    }
    return {name: (header, [good, *lines] if header == HEADER and lines else lines, says)
            for name, (header, lines, says) in cases.items()}


BAD = list(_bad_cases({"test": np.zeros(300, int), "train": np.zeros(600, int)}))  # names only


@pytest.mark.parametrize("case", BAD)
def test_a_bad_review_is_refused_in_one_line_and_nothing_is_written(tiny_run, run_labels, tmp_path, case, capsys):
    header, lines, says = _bad_cases(run_labels[0])[case]
    review = _review(tmp_path, lines, header)
    listed = (tiny_run / manifest.MANIFEST_FILE).read_bytes()
    assert _clean(tiny_run, review) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{review}: {says}" in err[0], err
    assert not (tiny_run / rundir.CLEANED_DIR).exists()
    assert (tiny_run / manifest.MANIFEST_FILE).read_bytes() == listed


def test_a_review_that_is_not_utf8_names_its_line(tiny_run, tmp_path, capsys):
    review = tmp_path / "review.csv"
    review.write_bytes(f"{HEADER}\n".encode() + _row("test", 0, 7, "correct").encode() + b"\ntest,1,2,\xff\n")
    assert _clean(tiny_run, review, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{review}: line 3: not UTF-8 text" in err[0] and not (tmp_path / "out").exists()


def test_a_missing_review_file_is_one_line(tiny_run, tmp_path, capsys):
    assert _clean(tiny_run, tmp_path / "nope.csv") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--review: cannot read {tmp_path / 'nope.csv'}" in err[0]


# ---------------------------------------------------------------------------
# A good review: the cleaned data set, every change listed, the ensemble re-measured
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cleaned(tiny_run, run_labels, tmp_path_factory):
    """A copy of the tiny run cleaned (default --out) with a relabel, a confirmation and an exclusion per split;
    returns (run, review lines' digits, stdout)."""
    y, _, pred, _ = run_labels
    wrong, right = np.flatnonzero(pred != y["test"]), np.flatnonzero(pred == y["test"])
    assert len(wrong) >= 2 and len(right) >= 1  # one epoch on 600 digits: plenty of both
    digits = {"test": {"relabel": (int(wrong[0]), int(pred[wrong[0]])), "correct": int(right[0]),
                       "exclude": int(wrong[1])},
              "train": {"relabel": (5, (int(y["train"][5]) + 1) % 10), "correct": 6, "exclude": 7}}
    lines = []
    for split in ("train", "test"):  # not in index order: the changes come out sorted anyway
        d, labels = digits[split], y[split]
        lines += [_row(split, d["exclude"], labels[d["exclude"]], "exclude", note="smudge"),
                  _row(split, d["relabel"][0], labels[d["relabel"][0]], "relabel", d["relabel"][1], note="looks off"),
                  _row(split, d["correct"], labels[d["correct"]], "correct")]
    lines.append(lines[1])  # an identical repeat is merged
    tmp = tmp_path_factory.mktemp("cleaned")
    run, stdout = tmp / "run", io.StringIO()
    shutil.copytree(tiny_run, run)
    with contextlib.redirect_stdout(stdout):
        assert _clean(run, _review(tmp, lines)) == 0
    return run, digits, stdout.getvalue()


def test_the_cleaned_data_set_has_the_review_applied(cleaned, run_labels):
    run, digits, _ = cleaned
    y, _, _, mnist = run_labels
    with np.load(run / rundir.CLEANED_DIR / rundir.CLEANED_FILE) as z:
        got = {k: z[k] for k in z.files}
    for split, x in (("test", mnist.x_test[:300]), ("train", mnist.x_train[:600])):
        d = digits[split]
        keep = np.delete(np.arange(len(y[split])), d["exclude"])
        want = y[split].astype(np.int64).copy()
        want[d["relabel"][0]] = d["relabel"][1]
        assert np.array_equal(got[f"{split}_index"], keep)
        assert got[f"x_{split}"].dtype == np.uint8 and got[f"x_{split}"].shape == (len(keep), 28, 28)
        assert np.array_equal(got[f"x_{split}"], x[keep])  # everything else in order
        assert got[f"y_{split}"].dtype == np.int64 and np.array_equal(got[f"y_{split}"], want[keep])
        assert (got[f"y_{split}"] != y[split][keep]).sum() == 1  # the one relabelled digit


def test_cleaning_json_lists_every_reviewed_digit_by_its_original_index(cleaned, run_labels):
    run, digits, _ = cleaned
    y = run_labels[0]
    record = json.loads((run / rundir.CLEANED_DIR / rundir.CLEANING_FILE).read_text())
    changes = {(c["split"], c["index"]): c for c in record["changes"]}
    assert len(record["changes"]) == 6  # the repeated line merged
    for split, d in digits.items():
        i, new = d["relabel"]
        assert changes[split, i] == {
            "split": split, "index": i, "verdict": "relabel", "old_label": int(y[split][i]), "new_label": new,
            "cleaned_index": i - (d["exclude"] < i), "note": "looks off", "reviewed_at": AT,
            "review_row": changes[split, i]["review_row"]}
        gone = changes[split, d["exclude"]]
        assert (gone["verdict"], gone["new_label"], gone["cleaned_index"], gone["note"]) == ("exclude", None, None,
                                                                                          "smudge")
        kept = changes[split, d["correct"]]
        assert kept["verdict"] == "correct" and kept["new_label"] == kept["old_label"] == int(y[split][d["correct"]])
        assert record["counts"][split] == {"digits": len(y[split]), "kept": len(y[split]) - 1, "correct": 1,
                                           "relabel": 1, "exclude": 1}
    in_order = sorted(changes, key=lambda k: (k[0] != "test", k[1]))  # test first, then by index
    assert [(c["split"], c["index"]) for c in record["changes"]] == in_order
    assert record["run"]["run_id"] == json.loads((run / rundir.CONFIG_FILE).read_text())["run_id"]


def test_the_three_accuracies_match_a_hand_count_from_probs(cleaned, run_labels):
    run, digits, stdout = cleaned
    y, probs, pred, _ = run_labels
    acc = json.loads((run / rundir.CLEANED_DIR / rundir.CLEANING_FILE).read_text())["accuracy"]
    d = digits["test"]
    fixed = y["test"].copy()
    fixed[d["relabel"][0]] = d["relabel"][1]
    keep = np.ones(300, bool)
    keep[d["exclude"]] = False
    assert acc["original_labels"]["accuracy"] == pytest.approx((pred == y["test"]).mean())
    assert acc["corrected_labels"]["accuracy"] == pytest.approx((pred == y["test"]).mean() + 1 / 300)
    assert acc["corrected_excluded_removed"]["accuracy"] == pytest.approx((pred[keep] == fixed[keep]).mean())
    assert acc["corrected_excluded_removed"]["digits"] == 299 and acc["corrected_excluded_removed"]["removed"] == 1
    summary = json.loads((run / rundir.SUMMARY_FILE).read_text())
    assert acc["original_labels"]["accuracy"] == pytest.approx(summary["test_accuracy"])
    members = [(p.argmax(1) == fixed).mean() for p in probs]
    assert acc["corrected_labels"]["member_accuracy_mean"] == pytest.approx(np.mean(members))
    lines = stdout.strip().splitlines()
    assert len(lines) == 5 and "flatters accuracy" in lines[3] and "cleanlab" in lines[3]
    assert f"{acc['corrected_excluded_removed']['accuracy']:.2%}" in lines[2]


def test_the_cleaned_files_are_listed_in_the_run_directory_manifest(cleaned):
    run = cleaned[0]
    for name in (rundir.CLEANED_FILE, rundir.CLEANING_FILE):
        assert manifest.verified(run, f"{rundir.CLEANED_DIR}/{name}")


def test_a_non_empty_out_needs_force(tiny_run, run_labels, tmp_path, capsys):
    out = tmp_path / "out"
    first = _review(tmp_path, [_row("test", 0, int(run_labels[0]["test"][0]), "exclude")])
    assert _clean(tiny_run, first, "--out", out) == 0
    before = (out / rundir.CLEANED_FILE).read_bytes()
    again = _review(tmp_path, [_row("test", 0, int(run_labels[0]["test"][0]), "correct")])
    capsys.readouterr()
    assert _clean(tiny_run, again, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out: {out} is not empty; pass --force" in err[0]
    assert (out / rundir.CLEANED_FILE).read_bytes() == before
    assert _clean(tiny_run, again, "--out", out, "--force") == 0
    with np.load(manifest.verified(out, rundir.CLEANED_FILE)) as z:
        assert len(z["y_test"]) == 300


def test_a_failed_force_keeps_the_earlier_cleaning_whole(tiny_run, run_labels, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    first = _review(tmp_path, [_row("test", 0, int(run_labels[0]["test"][0]), "exclude")])
    assert _clean(tiny_run, first, "--out", out) == 0
    before = {n: (out / n).read_bytes() for n in (rundir.CLEANED_FILE, rundir.CLEANING_FILE)}
    real = clean.files.os.replace

    def refuse_json(src, dst):  # cleaning.json cannot be replaced (an undeletable file, say)
        if str(dst).endswith(rundir.CLEANING_FILE) and str(src).endswith(".tmp"):
            raise PermissionError(1, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(clean.files.os, "replace", refuse_json)
    again = _review(tmp_path, [_row("test", 0, int(run_labels[0]["test"][0]), "correct")])
    capsys.readouterr()
    assert _clean(tiny_run, again, "--out", out, "--force") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / rundir.CLEANING_FILE}: cannot write it" in err[0]
    for name, data_ in before.items():  # both files as they were, and still vouched for by the manifest
        assert manifest.verified(out, name).read_bytes() == data_
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".old"))]  # no temporary, no old copy


def test_run_reads_the_cleaned_data_set(cleaned, tmp_path):
    npz = cleaned[0] / rundir.CLEANED_DIR / rundir.CLEANED_FILE
    out = tmp_path / "on-cleaned"
    assert cli.main(["run", "--dataset", f"npz:{npz}", "--out", str(out), "--epochs", "1", "--widths", "8,16,32",
                     "--members", "1", "--top", "5", "--quiet", "--threads", "1"]) == 0
    summary = json.loads((out / rundir.SUMMARY_FILE).read_text())
    assert summary["test_digits"] == 299 and summary["train_digits"] == 599
    # and a run on data other than MNIST gets no MTurk review
    assert cli.main(["clean", str(out), "--review", "mturk"]) == 2


# ---------------------------------------------------------------------------
# --review mturk: the published human review of MNIST's test labels
# ---------------------------------------------------------------------------
def _majority(votes: dict) -> str:
    """The 3-of-5 rule, from the votes themselves."""
    return "correct" if votes["given"] >= 3 else "relabel" if votes["guessed"] >= 3 else "exclude"


def test_review_rows_reproduce_the_reviewers_majority_verdicts():
    records = validate.load_review()
    rows = validate.review_rows(records)
    assert [r["index"] for r in rows] == [r["index"] for r in records]
    for row, rec in zip(rows, records):
        assert row["verdict"] == _majority(rec["votes"]) and row["split"] == "test"
        assert row["given_label"] == rec["given_label"]
        assert row["new_label"] == (rec["guessed_label"] if row["verdict"] == "relabel" else None)
    json_verdicts = collections.Counter(r["verdict"] for r in records)
    assert collections.Counter(r["verdict"] for r in rows) == {
        "correct": json_verdicts["correct"], "relabel": json_verdicts["correctable"],
        "exclude": json_verdicts["neither"] + json_verdicts["no_majority"]} == {"correct": 85, "relabel": 10,
                                                                                "exclude": 5}


def test_review_rows_refuse_an_unknown_verdict():
    record = dict(validate.load_review()[0], verdict="maybe")
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        validate.review_rows([record])


def test_mturk_on_a_run_without_the_reviewed_digits_is_one_line(tiny_run, capsys):
    assert cli.main(["clean", str(tiny_run), "--review", "mturk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    first = next(n for n, r in enumerate(validate.load_review(), start=1) if r["index"] >= 300)
    assert len(err) == 1 and f"--review mturk: record {first}: test digit" in err[0] and "not in this run" in err[0]
    assert not (tiny_run / rundir.CLEANED_DIR).exists()


def test_mturk_end_to_end_on_every_test_digit(tmp_path, mnist_dir, capsys):
    run, out = tmp_path / "run", tmp_path / "mturk"
    assert cli.main(["run", "--out", str(run), "--data-dir", str(mnist_dir), "--train-limit", "600", "--epochs", "1",
                     "--widths", "8,16,32", "--members", "1", "--top", "5", "--quiet", "--threads", "1"]) == 0
    assert cli.main(["clean", str(run), "--review", "mturk", "--out", str(out)]) == 0
    record = json.loads((out / rundir.CLEANING_FILE).read_text())
    reviewed = {r["index"]: r for r in validate.load_review()}
    assert {c["index"] for c in record["changes"]} == set(reviewed)
    for c in record["changes"]:
        r = reviewed[c["index"]]
        assert c["verdict"] == _majority(r["votes"]) and c["old_label"] == r["given_label"]
        assert c["new_label"] == {"correct": r["given_label"], "relabel": r["guessed_label"]}.get(c["verdict"])
    assert record["counts"]["test"] == {"digits": 10000, "kept": 9995, "correct": 85, "relabel": 10, "exclude": 5}
    with np.load(out / rundir.CLEANED_FILE) as z:
        y, index = z["y_test"], z["test_index"]
    relabelled = {c["index"]: c["new_label"] for c in record["changes"] if c["verdict"] == "relabel"}
    at = {int(i): n for n, i in enumerate(index)}
    assert all(y[at[i]] == new for i, new in relabelled.items())
    assert len(y) == 9995 and not {c["index"] for c in record["changes"] if c["verdict"] == "exclude"} & set(at)
    assert manifest.verified(out, rundir.CLEANED_FILE)  # outside the run: --out keeps its own manifest

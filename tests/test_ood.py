"""The out-of-distribution benchmark (bench/ood.py): its bookkeeping with known answers, its inputs, one smoke run;
and the training embeddings fitted once (evidence.Familiar), which `predict` and the benchmark score against."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not part of the installed package

from ambiguous_digits import evidence, manifest, preprocess, report, unfamiliar  # noqa: E402
from bench import ood  # noqa: E402


# ---------------------------------------------------------------- AUROC and FPR at 95% recall
@pytest.mark.parametrize("inside, outside, expected", [
    (np.arange(10.0), np.arange(10.0) + 10, 1.0),  # every outsider above every insider
    (np.arange(10.0) + 10, np.arange(10.0), 0.0),  # every outsider below
    (np.ones(4), np.ones(6), 0.5),  # all tied: no better than a coin
    (np.array([0.0, 2.0]), np.array([1.0, 3.0]), 0.75),  # 3 of the 4 (inside, outside) pairs ordered right
])
def test_auroc_is_the_chance_an_outsider_scores_above_an_insider(inside, outside, expected):
    assert ood.auroc(inside, outside) == pytest.approx(expected)


def test_fpr_at_95_recall_counts_the_insiders_flagged_at_the_threshold_that_catches_95_percent():
    inside, outside = np.arange(100.0), np.arange(100.0) + 50  # insiders 0..99, outsiders 50..149
    # Catching 95 of the 100 outsiders means flagging from 55 up: 45 of the insiders (55..99) are flagged too.
    assert ood.fpr_at_recall(inside, outside) == pytest.approx(0.45)
    assert ood.fpr_at_recall(inside, outside, recall=1.0) == pytest.approx(0.50)
    assert ood.fpr_at_recall(np.zeros(5), np.ones(20)) == 0.0  # separated: nothing inside is flagged


def test_fpr_at_95_recall_of_a_score_with_ties_flags_the_whole_tie():
    """Vote disagreement of two members is 0 or 0.5: catching 95% of outsiders half at 0 flags every insider."""
    inside, outside = np.zeros(10), np.r_[np.zeros(10), np.full(10, 0.5)]
    assert ood.fpr_at_recall(inside, outside) == 1.0


def test_every_score_ranks_confident_familiar_images_below_unsure_unfamiliar_ones():
    sure = np.array([[[0.98, 0.01, 0.01]] * 3, [[0.97, 0.02, 0.01]] * 3])  # 2 members, 3 images
    unsure = np.array([[[0.4, 0.3, 0.3]] * 3, [[0.2, 0.5, 0.3]] * 3])
    familiar = ood.Seen(sure, np.full(3, 0.01), np.full(3, 50.0), np.full(3, 0.01))
    strange = ood.Seen(unsure, np.full(3, 0.5), np.full(3, 100.0), np.full(3, 0.4))
    report = ood.compare(familiar, strange)
    assert report["n"] == 3 and report["flagged_by_predict"] == 1.0
    for name in ood.SCORES:
        assert report[name]["auroc"] == 1.0 and report[name]["fpr_at_95_recall"] == 0.0, name


# ---------------------------------------------------------------- the inputs
@pytest.mark.parametrize("char", ["A", "#", "o"])
def test_a_glyph_is_made_an_mnist_style_digit(char):
    digit = ood.glyph(char)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8 and digit.max() == 255
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= preprocess.BOX + 1  # fitted in MNIST's box


def test_the_transformed_images_keep_their_shape_and_the_noise_is_seeded():
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    once, again = ood.transformed(x), ood.transformed(x)
    for name, images in once.items():
        assert images.shape == x.shape and images.dtype == np.uint8, name
        assert np.array_equal(images, again[name]), name
    assert np.array_equal(once["inverted"], 255 - x)
    assert np.array_equal(once["rotated 90°"][0], np.rot90(x[0]))


def test_the_reviews_neither_digits_are_mnist_test_indices():
    neither = ood.review_neither("mnist")
    assert len(neither) == 3 and ((0 <= neither) & (neither < 10000)).all()
    assert len(ood.review_neither("fashion-mnist")) == 0  # no review of it exists


# ---------------------------------------------------------------- the training embeddings, fitted once
def test_familiar_scores_as_unfamiliarity_does_and_gives_training_percentiles():
    rng = np.random.default_rng(0)
    train = np.concatenate([[1.0, 0.0, 0.0] + rng.normal(scale=0.01, size=(50, 3)),
                            [0.0, 1.0, 0.0] + rng.normal(scale=0.01, size=(50, 3))])
    own = evidence.unfamiliarity(train)
    queries = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    found, pct = evidence.Familiar.fit(train, own).score(queries)
    np.testing.assert_allclose(found, evidence.unfamiliarity(train, queries), rtol=1e-5, atol=1e-7)
    assert found[1] == pytest.approx(1.0, abs=0.02)  # orthogonal to every training row: cosine distance 1
    assert pct[1] == 100.0 and pct[0] < 50  # above every training row's own; on a cluster, typical of it


def test_a_query_more_familiar_turned_scores_above_one_that_is_not():
    """Two queries as unfamiliar as given; the first is on a training cluster when turned, the second is not."""
    rng = np.random.default_rng(1)
    train = np.concatenate([[1.0, 0.0, 0.0] + rng.normal(scale=0.01, size=(50, 3)),
                            [0.0, 1.0, 0.0] + rng.normal(scale=0.01, size=(50, 3))])
    familiar = evidence.Familiar.fit(train, evidence.unfamiliarity(train), turns=True)
    queries = np.array([[1.0, 1.0, 0.6], [1.0, 1.0, 0.6]])
    turns = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0],  # first turn of each query (evidence.turned's order)
                      [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # second turn
    found, pct = familiar.score(queries, turns)
    as_given = familiar.as_given(queries)
    assert as_given[0] == pytest.approx(as_given[1])
    gain = as_given[0] - familiar.as_given(turns[:1])[0]
    assert found[0] == pytest.approx(as_given[0] + gain, rel=1e-5) and found[1] == pytest.approx(as_given[1])
    assert pct[0] >= pct[1]
    with pytest.raises(ValueError, match="turned embeddings"):
        familiar.score(queries)
    assert evidence.Familiar.fit(train, evidence.unfamiliarity(train)).score(queries)[0] == pytest.approx(as_given)


# ---------------------------------------------------------------- the report's section
def _unfamiliar_section(html: str) -> str | None:
    found = re.search(r'<section id="unfamiliar">.*?</section>', html, re.DOTALL)
    return found.group(0) if found else None


def test_the_report_shows_the_least_familiar_digits_apart_and_one_plot(report_run):
    section = _unfamiliar_section((report_run / "report.html").read_text())
    assert section is not None and section.count('<img id="unfamiliar-plot" src="data:image/png;base64,') == 1
    assert section.count("data-unfamiliar-test=") == section.count("data-unfamiliar-train=") == unfamiliar.SHOWN
    shown = [float(p) for p in re.findall(r"percentile ([\d.]+)", section)[: unfamiliar.SHOWN]]
    assert shown == sorted(shown, reverse=True)  # least familiar test digit first
    with np.load(report_run / "embeddings.npz") as z:  # says whether the turns counted, and why
        share, turns = float(z["turned_more_familiar"]), "unfamiliarity_turns" in z.files
    assert f"{100 * share:.1f}% of them are more familiar turned" in section
    assert ("also looked at turned" in section) == turns and ("scored as given" in section) == (not turns)


def test_a_run_made_before_0_11_is_reported_without_the_turns(report_run, mnist, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    with np.load(run / "embeddings.npz") as z:
        kept = {k: z[k] for k in z.files if k not in ("turned_more_familiar", "unfamiliarity_turns")}
    np.savez(run / "embeddings.npz", **kept)
    manifest.record(run, run / "embeddings.npz")
    report.write_report(run, dataset=mnist)
    section = _unfamiliar_section((run / "report.html").read_text())
    assert section is not None and "turned" not in section


def test_a_run_without_embeddings_has_no_unfamiliar_section(report_run, mnist, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    manifest.forget(run, "embeddings.npz")
    report.write_report(run, dataset=mnist)
    assert _unfamiliar_section((run / "report.html").read_text()) is None


# ---------------------------------------------------------------- one smoke run
@pytest.mark.slow
def test_the_benchmark_runs_on_a_tiny_run_and_writes_its_report(report_run, mnist_dir, fashion_dir, tmp_path, capsys):
    out = tmp_path / "ood.json"
    ood.main([str(report_run), "--out", str(out), "--data-dir", str(mnist_dir), "--other-data-dir", str(fashion_dir),
              "--limit", "200", "--device", "cpu"])
    report = json.loads(out.read_text())
    kinds = {"fashion-mnist test", "inverted", "rotated 90°", "review: neither label", "glyphs (not digit-like)"}
    assert kinds <= set(report["kinds"]) and any(k.startswith("noise") for k in report["kinds"])
    for kind, r in report["kinds"].items():
        assert set(ood.SCORES) <= set(r), kind
        assert all(0 <= r[s]["auroc"] <= 1 and 0 <= r[s]["fpr_at_95_recall"] <= 1 for s in ood.SCORES), kind
    assert set(report["glyphs"]) | set(report["glyphs_refused"]) == set(ood.GLYPHS)
    assert report["glyphs"]["O"]["digit_like"] and not report["glyphs"]["A"]["digit_like"]
    assert len(report["neither"]) == 3
    assert "fashion-mnist test" in capsys.readouterr().out

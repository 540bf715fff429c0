"""The report's galleries (gallery): which digits the page holds, their pictures and neighbour strips, on data with
known answers.

The galleries in a real browser are driven in test_report.py, on the rendered page.
"""

import base64
import csv
import io

import numpy as np
import pytest
from PIL import Image

from ambiguous_digits import gallery, manifest


def test_needed_prefix_holds_the_first_k_digits_of_every_filter():
    rng = np.random.default_rng(1)
    labels, preds, k = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000), 7
    order = rng.permutation(2000)
    kept = set(gallery.needed_prefix(order, labels, preds, k, 10).tolist())
    assert set(order[:k].tolist()) <= kept
    for c in range(10):
        for mask in (labels == c, preds == c, (labels == c) & (preds == (c + 3) % 10)):
            assert set(order[mask[order]][:k].tolist()) <= kept
    assert len(kept) < len(order)


def test_filter_counts_add_up():
    labels, preds = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    counts = np.array(gallery.filter_counts(np.array([3, 1, 0]), labels, preds, 3))
    assert counts[0, 0] == 3 and counts[1, 0] == 2 and counts[0, 2] == 2 and counts[1, 2] == 1 and counts[3, 2] == 1


def test_the_page_keeps_every_digit_a_gallery_needs_even_past_its_cap(monkeypatch):
    """Many classes need ~100 digits per filter (a class, a confusion): the cap drops only errors no gallery
    shows, however many digits the galleries need. Here the cap is made smaller than that."""
    rng = np.random.default_rng(0)
    n, k = 20000, 3
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.3, rng.integers(0, k, n), labels)  # ~20% errors, thousands per confusion
    orders = {"a": rng.permutation(n), "b": rng.permutation(n)}
    needed = set()
    for o in orders.values():
        needed |= set(gallery.needed_prefix(o, labels, preds, gallery.COUNTS[-1], k).tolist())
    monkeypatch.setattr(gallery, "MAX_DIGITS", len(needed) // 2)
    chosen = gallery.chosen_digits(orders, labels, preds, k)
    assert set(chosen.tolist()) == needed and len(chosen) == len(needed)  # all of them, once, no extra errors
    monkeypatch.setattr(gallery, "MAX_DIGITS", len(needed) + 10)
    chosen = gallery.chosen_digits(orders, labels, preds, k)
    extra = set(chosen.tolist()) - needed
    assert len(chosen) == len(needed) + 10 and all(labels[i] != preds[i] for i in extra)


def _decoded(uri: str) -> Image.Image:
    head, body = uri.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(body)))


def test_a_digit_uri_holds_exactly_its_pixels():
    image = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(_decoded(gallery.digit_uri(image))), image)


def test_the_reliability_diagram_is_an_embedded_png():
    probs = np.random.default_rng(3).dirichlet(np.ones(10), size=200)
    labels = probs.argmax(axis=1)
    with _decoded(gallery.reliability_png(probs, labels)) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_a_ranking_the_page_does_not_know_is_titled_by_its_name():
    assert gallery.ranking_title("label_issues")["title"] == "Suspected label errors"
    assert gallery.ranking_title("my_own_score") == {"title": "my own score", "about": ""}


def _near(given: int, other: int, role: str, given_dist: float, other_dist: float) -> dict:
    return {"given": {"class": given, "train": [1, 2], "dist": [given_dist] * 2},
            role: {"class": other, "train": [3, 4], "dist": [other_dist] * 2}}


def test_a_strip_per_class_the_given_labels_first_and_roles_of_one_class_merged():
    near = {"predicted": {"class": 9, "train": [7, 8], "dist": [0.1, 0.3]}, **_near(4, 9, "suggested", 0.4, 0.2)}
    found = gallery.strips(near)
    assert [(s["roles"], s["c"], s["train"]) for s in found] == [(["given"], 4, [1, 2]),
                                                                  (["suggested", "predicted"], 9, [3, 4])]
    assert found[0]["mean"] == 0.4 and found[1]["mean"] == 0.2  # the first role's distances
    assert gallery.strips({"given": near["given"], "predicted": near["given"]})[0]["roles"] == ["given", "predicted"]


@pytest.mark.parametrize("given_dist, other_dist, says", [(0.4, 0.2, "this 4 sits among training 9s"),
                                                           (0.2, 0.4, "this 4 sits nearer training 4s than 9s")])
def test_the_caption_says_which_class_the_digit_sits_nearer(given_dist, other_dist, says):
    names = tuple(str(k) for k in range(10))
    caption = gallery.strip_caption(gallery.strips(_near(4, 9, "predicted", given_dist, other_dist)), names)
    assert caption.startswith(says)
    assert gallery.strip_caption(gallery.strips(_near(4, 4, "predicted", 0.2, 0.2)), names) == ""  # nothing to compare


def test_neighbours_are_read_nearest_first_and_only_when_listed(tmp_path):
    manifest.record(tmp_path)
    assert gallery.read_neighbours(tmp_path) == {}  # a run without neighbours.csv: no strips
    rows = [("test", 5, "given", 3, 2, 40, 0.2), ("test", 5, "given", 3, 1, 30, 0.1), ("train", 5, "given", 3, 1, 9, 0.0),
            ("test", 7, "predicted", 1, 1, 11, 0.3)]
    with open(tmp_path / "neighbours.csv", "w", newline="") as f:
        csv.writer(f).writerows([("split", "index", "role", "class", "rank", "train_index", "distance"), *rows])
    manifest.record(tmp_path, tmp_path / "neighbours.csv")
    assert gallery.read_neighbours(tmp_path) == {5: {"given": {"class": 3, "train": [30, 40], "dist": [0.1, 0.2]}},
                                                 7: {"predicted": {"class": 1, "train": [11], "dist": [0.3]}}}

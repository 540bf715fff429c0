"""bench/label_noise.py's bookkeeping on hand-made arrays: the flips, the rankings, the scores."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not the package

from bench import label_noise as ln  # noqa: E402


@pytest.mark.parametrize("model", ["uniform", "pairs", "instance"])
def test_flips_move_exactly_the_drawn_digits_to_another_class(model):
    labels = np.arange(1000) % 10
    second = (labels + 3) % 10
    noisy, flipped = ln.flip_labels(labels, 0.01, model, np.random.default_rng(0), second)
    assert len(flipped) == 10 and np.array_equal(flipped, np.unique(flipped))
    changed = np.flatnonzero(noisy != labels)
    assert np.array_equal(changed, flipped)  # every drawn digit moves, nothing else does
    if model == "pairs":
        partner = {a: b for p in ln.PAIRS for a, b in (p, p[::-1])}
        assert all(noisy[i] == partner[labels[i]] for i in flipped)
    if model == "instance":
        assert np.array_equal(noisy[flipped], second[flipped])


def test_flips_are_seeded_and_at_least_one():
    labels = np.arange(500) % 10
    a = ln.flip_labels(labels, 0.001, "uniform", np.random.default_rng(3))
    b = ln.flip_labels(labels, 0.001, "uniform", np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and len(a[1]) == 1


def test_instance_noise_needs_the_second_class_and_unknown_models_are_refused():
    with pytest.raises(ValueError, match="second most likely"):
        ln.flip_labels(np.zeros(10, int), 0.1, "instance", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown noise model"):
        ln.flip_labels(np.zeros(10, int), 0.1, "sideways", np.random.default_rng(0))


def test_score_of_a_perfect_a_reversed_and_a_half_right_ranking():
    flipped = np.array([0, 1])
    assert ln.score(np.array([4.0, 3, 2, 1]), flipped) == {"ap": 1.0, "recall_at_k": 1.0}
    worst = ln.score(np.array([1.0, 2, 3, 4]), flipped)
    assert worst["recall_at_k"] == 0 and worst["ap"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert ln.score(np.array([4.0, 1, 3, 2]), flipped)["recall_at_k"] == 0.5


def test_rank_average_and_the_rankings_point_the_same_way():
    a, b = np.array([0.1, 0.9, 0.5]), np.array([3.0, 2.0, 1.0])
    assert ln.rank_average(a, b) == pytest.approx([0.5, 0.75, 0.25])
    table = {"label_quality": np.array([0.9, 0.1])}
    dyn = {"aum": np.array([3.0, -1.0]), "confidence": np.array([0.95, 0.2]), "forgetting": np.array([0.0, 2.0]),
           "correctness": np.array([1.0, 0.1])}
    for name, s in ln.rankings(table, dyn).items():
        assert s[1] > s[0], name  # the digit with the low quality, margin and confidence is the suspect


def test_summary_is_the_mean_and_std_over_seeds():
    rows = [{"model": "uniform", "rate": 0.01, "scores": {"aum": {"ap": ap, "recall_at_k": 0.5}}} for ap in (0.2, 0.4)]
    s = ln.summarise(rows)[("uniform", 0.01, "aum")]
    assert s["ap"][0] == pytest.approx(0.3) and s["ap"][1] == pytest.approx(0.1 * np.sqrt(2)) and s["ap"][2] == 2
    assert "| uniform | 0.01 | aum | 0.300 ± 0.141 |" in ln.table_md(ln.summarise(rows))

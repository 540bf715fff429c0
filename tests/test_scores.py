"""Scoring measures against hand-computed values and references."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ambiguous_digits import scores

# Four digits, three classes. Row 0: confident and right; row 1: wrong with p=0.7;
# row 2: wrong with p=0.5 (and a near tie); row 3: right, uniform-ish.
PROBS = np.array([
    [0.90, 0.05, 0.05],
    [0.10, 0.70, 0.20],
    [0.50, 0.45, 0.05],
    [0.40, 0.30, 0.30],
])
LABELS = np.array([0, 0, 1, 0])


def test_basic_measures_by_hand():
    p, y = scores.validate(PROBS, LABELS)
    np.testing.assert_array_equal(scores.predicted(p), [0, 1, 0, 0])
    np.testing.assert_allclose(scores.prob_pred(p), [0.9, 0.7, 0.5, 0.4])
    np.testing.assert_allclose(scores.prob_label(p, y), [0.9, 0.1, 0.45, 0.4])
    np.testing.assert_allclose(scores.margin(p), [0.85, 0.5, 0.05, 0.1])
    row0 = -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05))
    assert scores.entropy(p)[0] == pytest.approx(row0)


def test_entropy_matches_scipy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=50)
    np.testing.assert_allclose(scores.entropy(p), scipy.stats.entropy(p, axis=1))


def test_entropy_of_one_hot_and_uniform():
    p = np.array([[1.0, 0, 0, 0], [0.25] * 4])
    np.testing.assert_allclose(scores.entropy(p), [0.0, math.log(4)])


def test_confident_wrong_ranks_only_errors_most_confident_first():
    ranks = scores.rank_by("confident_wrong", PROBS, LABELS)
    assert np.isnan(ranks[0]) and np.isnan(ranks[3])
    assert ranks[1] == 1 and ranks[2] == 2


@pytest.mark.parametrize("name, expected", [
    ("least_confident", [4, 3, 2, 1]),  # p_pred 0.9, 0.7, 0.5, 0.4
    ("margin", [4, 3, 1, 2]),  # margins 0.85, 0.5, 0.05, 0.1
    ("entropy", [4, 3, 2, 1]),  # H = 0.39, 0.80, 0.86, 1.09 nats
])
def test_rankings_by_hand(name, expected):
    np.testing.assert_array_equal(scores.rank_by(name, PROBS, LABELS), expected)


@pytest.mark.parametrize("name", list(scores.RANKINGS))
def test_ranks_are_a_permutation_and_ties_break_by_index(name):
    p = np.tile([[0.6, 0.4]], (5, 1))
    y = np.array([1, 1, 1, 1, 1])
    ranks = scores.rank_by(name, p, y)
    np.testing.assert_array_equal(ranks, [1, 2, 3, 4, 5])


def test_top_indices_follow_ranks_and_skip_unranked():
    ranks = np.array([np.nan, 2, 1, np.nan, 3])
    np.testing.assert_array_equal(scores.top_indices(ranks, 2), [2, 1])
    np.testing.assert_array_equal(scores.top_indices(ranks, 10), [2, 1, 4])


def test_score_table_columns_and_row_order():
    table = scores.score_table(PROBS[None], LABELS)
    assert list(table)[:7] == ["index", "label", "pred", "prob_pred", "prob_label", "margin", "entropy"]
    assert {f"rank_{n}" for n in scores.RANKINGS} <= set(table)
    np.testing.assert_array_equal(table["index"], np.arange(4))
    assert all(len(col) == 4 for col in table.values())


@pytest.mark.parametrize("probs, labels, match", [
    (np.array([[0.5, np.nan]]), np.array([0]), "NaN"),
    (np.array([[np.inf, 0.0]]), np.array([0]), "NaN or infinity"),
    (np.array([[1.5, -0.5]]), np.array([0]), "negative"),
    (np.array([[0.5, 0.6]]), np.array([0]), "sum to 1"),
    (np.array([0.5, 0.5]), np.array([0]), "shape"),
    (np.array([[0.5, 0.5]]), np.array([0, 1]), "labels: expected shape"),
    (np.array([[0.5, 0.5]]), np.array([2]), "labels: values"),
    (np.array([[0.5, 0.5]]), np.array([-1]), "labels: values"),
    (np.array([[0.5, 0.5]]), np.array([0.0]), "integers"),
])
def test_bad_inputs_are_refused(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        scores.validate(probs, labels)
    with pytest.raises(ValueError, match=match.replace("labels: expected shape", "labels")):
        scores.score_table(probs[None], labels)


def test_unknown_ranking_is_refused():
    with pytest.raises(ValueError, match="unknown ranking 'nope'"):
        scores.rank_by("nope", PROBS, LABELS)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=12),
                  elements=st.floats(0.0, 1.0)))
def test_invariants_hold_for_valid_probabilities(raw):
    raw = raw + 1e-9
    p = raw / raw.sum(axis=1, keepdims=True)
    y = np.zeros(len(p), dtype=int)
    t = scores.score_table(p[None], y)
    k = p.shape[1]
    assert ((t["entropy"] >= -1e-12) & (t["entropy"] <= math.log(k) + 1e-9)).all()
    assert ((t["margin"] >= 0) & (t["margin"] <= 1)).all()
    assert (t["prob_pred"] >= 1 / k - 1e-12).all()
    for name in scores.RANKINGS:
        ranked = t[f"rank_{name}"][~np.isnan(t[f"rank_{name}"])]
        np.testing.assert_array_equal(np.sort(ranked), np.arange(1, len(ranked) + 1))


def test_nll_by_hand():
    assert scores.nll(PROBS, LABELS) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.45, 0.4])))


def test_ece_by_hand():
    # Confidences 0.9, 0.7, 0.5, 0.4 land in four different bins; right, wrong, wrong, right.
    expected = (abs(1 - 0.9) + abs(0 - 0.7) + abs(0 - 0.5) + abs(1 - 0.4)) / 4
    assert scores.expected_calibration_error(PROBS, LABELS) == pytest.approx(expected)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # Ten digits all at confidence 0.8, eight of them right.
    p = np.tile([[0.8, 0.2]], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert scores.expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    r = scores.reliability(p, y)
    assert r["count"].sum() == 10 and r["count"][12] == 10


# ---------------------------------------------------------------------------
# Ensemble measures on hand-made (M, N, K) arrays
# ---------------------------------------------------------------------------
AGREE = np.array([[[0.9, 0.1]], [[0.9, 0.1]]])  # two members, same belief
DISAGREE = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # two members, opposite certainties
UNIFORM = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])  # both unsure


def test_members_that_agree_have_no_epistemic_part():
    assert scores.vote_disagreement(AGREE)[0] == 0
    assert scores.mutual_information(AGREE)[0] == pytest.approx(0, abs=1e-12)
    assert scores.expected_entropy(AGREE)[0] == pytest.approx(scipy.stats.entropy([0.9, 0.1]))


def test_members_that_disagree_completely_are_all_epistemic():
    assert scores.vote_disagreement(DISAGREE)[0] == 0.5
    assert scores.expected_entropy(DISAGREE)[0] == pytest.approx(0)
    assert scores.mutual_information(DISAGREE)[0] == pytest.approx(math.log(2))


def test_uniform_members_are_all_aleatoric():
    assert scores.expected_entropy(UNIFORM)[0] == pytest.approx(math.log(2))
    assert scores.mutual_information(UNIFORM)[0] == pytest.approx(0, abs=1e-12)


def test_members_wrong_counts_members_not_voting_for_the_label():
    np.testing.assert_array_equal(scores.members_wrong(DISAGREE, np.array([1])), [1])
    np.testing.assert_array_equal(scores.members_wrong(AGREE, np.array([1])), [2])


def test_vote_disagreement_with_three_members_and_plurality():
    probs = np.array([[[0.8, 0.1, 0.1]], [[0.1, 0.8, 0.1]], [[0.7, 0.2, 0.1]]])
    assert scores.vote_disagreement(probs)[0] == pytest.approx(1 / 3)


def test_total_entropy_is_expected_entropy_plus_mutual_information():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(10, 0.3), size=(5, 200))
    total = scores.entropy(probs.mean(axis=0))
    np.testing.assert_allclose(scores.expected_entropy(probs) + scores.mutual_information(probs), total,
                               rtol=0, atol=1e-12)
    assert (scores.mutual_information(probs) >= 0).all()


def test_ambiguity_is_one_minus_mean_label_probability_and_ranks_it():
    probs = np.stack([PROBS, PROBS[::-1]])
    t = scores.score_table(probs, LABELS)
    mean = probs.mean(axis=0)
    np.testing.assert_allclose(t["ambiguity"], 1 - mean[np.arange(4), LABELS])
    assert t["rank_ambiguity"][np.argmax(t["ambiguity"])] == 1


def test_member_shape_is_checked():
    with pytest.raises(ValueError, match=r"expected shape \(M, N, K\)"):
        scores.score_table(PROBS, LABELS)


# ---------------------------------------------------------------------------
# Properties over generated inputs: every public function refuses bad
# probabilities, and keeps its invariants for good ones
# ---------------------------------------------------------------------------
def _normalised(raw: np.ndarray) -> np.ndarray:
    raw = raw + 1e-9
    return raw / raw.sum(axis=-1, keepdims=True)


VALID = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=10),
                   elements=st.floats(0.0, 1.0)).map(_normalised)
MEMBERS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=3, max_dims=3, min_side=2, max_side=6),
                     elements=st.floats(0.0, 1.0)).map(_normalised)
PUBLIC = {  # each public scoring entry point, called on (N, K) probabilities and (N,) labels
    "validate": scores.validate,
    "score_table": lambda p, y: scores.score_table(p[None], y),
    "nll": scores.nll,
    "expected_calibration_error": scores.expected_calibration_error,
    **{f"rank_by {name}": (lambda p, y, n=name: scores.rank_by(n, p, y)) for name in scores.RANKINGS},
}
CORRUPTIONS = {  # name -> (how to spoil one cell or row of valid probabilities, the error's words)
    "nan": (lambda p, r, c: p.__setitem__((r, c), np.nan), "NaN"),
    "inf": (lambda p, r, c: p.__setitem__((r, c), np.inf), "infinity"),
    "negative": (lambda p, r, c: p.__setitem__((r, c), -0.25), "negative"),
    "row-sum": (lambda p, r, c: p.__setitem__(r, p[r] * 1.5), "sum to 1"),
}


@settings(max_examples=40, deadline=None)
@given(probs=VALID, data=st.data(), corruption=st.sampled_from(sorted(CORRUPTIONS)),
       function=st.sampled_from(sorted(PUBLIC)))
def test_spoiled_probabilities_are_refused_everywhere(probs, data, corruption, function):
    spoil, words = CORRUPTIONS[corruption]
    r = data.draw(st.integers(0, probs.shape[0] - 1))
    c = data.draw(st.integers(0, probs.shape[1] - 1))
    spoil(probs, r, c)
    with pytest.raises(ValueError, match=words):
        PUBLIC[function](probs, np.zeros(len(probs), dtype=np.int64))


@settings(max_examples=40, deadline=None)
@given(probs=VALID, extra=st.integers(1, 3), function=st.sampled_from(sorted(PUBLIC)))
def test_labels_of_another_length_are_refused_everywhere(probs, extra, function):
    with pytest.raises(ValueError, match="labels"):
        PUBLIC[function](probs, np.zeros(len(probs) + extra, dtype=np.int64))


@settings(max_examples=40, deadline=None)
@given(member_probs=MEMBERS, data=st.data())
def test_ensemble_invariants_hold_for_valid_member_probabilities(member_probs, data):
    m, n, k = member_probs.shape
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    t = scores.score_table(member_probs, labels)
    assert ((t["mutual_information"] >= 0) & (t["mutual_information"] <= math.log(k) + 1e-9)).all()
    assert ((t["expected_entropy"] >= -1e-12) & (t["expected_entropy"] <= math.log(k) + 1e-9)).all()
    np.testing.assert_allclose(t["expected_entropy"] + t["mutual_information"], t["entropy"], atol=1e-9)
    assert ((t["entropy"] >= -1e-12) & (t["entropy"] <= math.log(k) + 1e-9)).all()
    assert ((t["margin"] >= 0) & (t["margin"] <= 1)).all()
    assert ((t["vote_disagreement"] >= 0) & (t["vote_disagreement"] <= 1 - 1 / m + 1e-12)).all()
    assert ((t["members_wrong"] >= 0) & (t["members_wrong"] <= m)).all()
    assert ((t["ambiguity"] >= -1e-12) & (t["ambiguity"] <= 1 + 1e-12)).all()


@settings(max_examples=40, deadline=None)
@given(member_probs=MEMBERS, axis=st.sampled_from([0, 1]))
def test_member_probabilities_of_the_wrong_shape_are_refused(member_probs, axis):
    labels = np.zeros(member_probs.shape[1] + 1, dtype=np.int64)
    with pytest.raises(ValueError, match="labels: expected shape"):
        scores.score_table(member_probs, labels)
    with pytest.raises(ValueError, match="member_probs: expected shape"):
        scores.score_table(member_probs[0] if axis == 0 else member_probs[..., 0], labels[:-1])


# ---------------------------------------------------------------------------
# Error summaries on hand-made labels and predictions
# ---------------------------------------------------------------------------
def test_error_confusion_counts_only_errors():
    labels, preds = np.array([1, 1, 1, 7, 4, 4]), np.array([1, 7, 7, 1, 9, 4])
    conf = scores.error_confusion(labels, preds, 10)
    assert conf[1, 7] == 2 and conf[7, 1] == 1 and conf[4, 9] == 1
    assert conf.sum() == 4 and np.trace(conf) == 0
    assert scores.top_confusions(conf) == [(1, 7, 2), (4, 9, 1), (7, 1, 1)]


def test_top_confusions_leave_out_empty_cells():
    conf = scores.error_confusion(np.array([0, 1]), np.array([1, 1]), 3)
    assert scores.top_confusions(conf, n=5) == [(0, 1, 1)]
    assert scores.top_confusions(np.zeros((3, 3), np.int64)) == []


def test_class_accuracy_by_hand_and_none_for_an_absent_class():
    labels, preds = np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1])
    acc = scores.class_accuracy(labels, preds, ("a", "b", "c"))
    assert [(c["name"], c["n"], c["correct"]) for c in acc] == [("a", 3, 1), ("b", 1, 1), ("c", 0, 0)]
    assert acc[0]["accuracy"] == pytest.approx(1 / 3) and acc[1]["accuracy"] == 1 and acc[2]["accuracy"] is None


def test_errors_in_top_counts_errors_among_the_first_k_ranked():
    ranks = np.array([2.0, 1.0, np.nan, 3.0])
    wrong = np.array([True, False, True, True])
    assert [scores.errors_in_top(ranks, wrong, k) for k in (1, 2, 3, 10)] == [0, 1, 2, 2]  # index 2 is unranked


def test_uncertainty_split_means_over_the_chosen_rows():
    expected, mutual = np.array([0.2, 0.4, 1.0]), np.array([0.2, 0.0, 3.0])
    split = scores.uncertainty_split(expected, mutual, np.array([True, True, False]))
    assert split["aleatoric"] == pytest.approx(0.3) and split["epistemic"] == pytest.approx(0.1)
    assert split["total"] == pytest.approx(0.4) and split["epistemic_share"] == pytest.approx(0.25)
    assert scores.uncertainty_split(expected, mutual, np.zeros(3, bool)) == {
        "total": 0.0, "aleatoric": 0.0, "epistemic": 0.0, "epistemic_share": 0.0}

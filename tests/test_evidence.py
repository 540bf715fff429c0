"""Evidence from the embeddings: pooling, unfamiliarity with a known answer, percentiles, reasons' facts."""

import numpy as np
import pytest

from ambiguous_digits import evidence


def test_pooling_normalises_each_member_then_averages():
    a = np.array([[3.0, 4.0], [0.0, 2.0]])
    b = np.array([[0.0, 10.0], [5.0, 0.0]])
    np.testing.assert_allclose(evidence.pool([a, b]), [[0.3, 0.9], [0.5, 0.5]])


def test_unfamiliarity_is_the_mean_distance_to_the_k_nearest_training_rows():
    # training rows on two tight clusters; a query on a cluster is familiar, one between them is not
    rng = np.random.default_rng(0)
    train = np.concatenate([np.array([1.0, 0.0, 0.0]) + rng.normal(scale=0.01, size=(50, 3)),
                            np.array([0.0, 1.0, 0.0]) + rng.normal(scale=0.01, size=(50, 3))])
    queries = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    score = evidence.unfamiliarity(train, queries, k=10)
    assert score[0] < 1e-3 and score[1] == pytest.approx(1.0, abs=0.02)  # orthogonal to every row: distance 1
    own = evidence.unfamiliarity(train, k=10)
    assert own.shape == (100,) and own.max() < 1e-3  # each left out of its own neighbours, still among its cluster


def test_the_layout_keeps_the_training_rows_strongest_directions_and_drops_the_rest():
    """Training rows spread over the first two axes of 6 (the first most; mirrored on the second, so the axes are
    the Gram matrix's eigenvectors): projected on 2 directions they keep their geometry, and what lies off them
    does not count."""
    rng = np.random.default_rng(1)
    half = np.stack([1 + rng.normal(scale=0.3, size=100), rng.normal(scale=0.2, size=100)], axis=1)
    train = np.zeros((200, 6))
    train[:, :2] = np.concatenate([half, half * [1, -1]])
    layout = evidence.Layout.fit(train, dims=2)
    assert layout.basis.shape == (6, 2) and layout.basis.dtype == np.float32
    np.testing.assert_allclose(np.abs(layout.basis[:, 0]), [1, 0, 0, 0, 0, 0], atol=1e-6)  # the strongest first
    np.testing.assert_allclose(np.abs(layout.basis[:, 1]), [0, 1, 0, 0, 0, 0], atol=1e-6)
    embedded = layout(train)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1, rtol=1e-6)
    # like the rows; at right angles to their main direction; like the rows once the off-axis part is dropped
    queries = layout(np.array([[2.0, 0.1, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0], [1.0, 0, 0, 3.0, 3.0, 0]]))
    score = evidence.unfamiliarity(embedded, queries, k=5)
    assert score[0] < 0.001 and score[2] < 0.001 and score[1] > 0.2


def test_percentiles_count_the_reference_strictly_below():
    reference = np.arange(1000.0)
    assert evidence.percentile_of(np.array([-1.0, 0.0, 500.0, 999.5, 2000.0]), reference).tolist() == \
        [0.0, 0.0, 50.0, 100.0, 100.0]


def test_reasons_state_the_votes_the_neighbours_and_the_unfamiliar():
    member_probs = np.array([[[0.95, 0.05], [0.2, 0.8]],
                             [[0.92, 0.08], [0.7, 0.3]],
                             [[0.6, 0.4], [0.9, 0.1]]])  # 3 members, 2 digits
    near = np.array([[0, 0, 0, 1], [1, 1, 1, 0]])
    text = evidence.reasons(member_probs, np.array([0, 1]), near, np.array([50.0, 99.95]), ("zero", "one"))
    assert text[0].startswith("3 of 3 networks read zero (2 with p ≥ 0.9)")
    assert "3 of its 4 nearest training digits are zeros" in text[0] and "unlike" not in text[0]
    assert text[1].startswith("2 of 3 networks read zero") and "3 of its 4 nearest training digits are ones" in text[1]
    assert "unlike any training digit (unfamiliarity at the 100.0th percentile)" in text[1]  # 99.95 rounds up


def test_neighbour_rows_give_one_row_per_digit_role_and_rank():
    rng = np.random.default_rng(3)
    train, labels = rng.normal(size=(40, 4)), np.arange(40) % 2
    queries = train[[5, 6]] + 1e-6
    rows = evidence.neighbour_rows("test", np.array([10, 20]), {"given": np.array([1, 0]), "predicted": np.array([0, 0])},
                                   train, labels, queries, k=3)
    assert len(rows["index"]) == 2 * 2 * 3
    assert set(rows["role"]) == {"given", "predicted"} and (labels[rows["train_index"]] == rows["class"]).all()
    first = (rows["index"] == 10) & (rows["role"] == "given") & (rows["rank"] == 1)
    assert rows["train_index"][first].tolist() == [5]  # digit 10's embedding copies training digit 5


def test_the_training_digits_own_unfamiliarity_is_taken_on_a_seeded_sample():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(300, 8))
    rows, again = evidence.calibration_rows(300, sample=50), evidence.calibration_rows(300, sample=50)
    own = evidence.own_unfamiliarity(train, rows)
    assert len(rows) == 50 and (np.diff(rows) > 0).all() and (rows == again).all()
    np.testing.assert_allclose(own, evidence.unfamiliarity(train)[rows])  # as scored over every training digit
    assert evidence.calibration_rows(300, sample=1000).tolist() == list(range(300))


def test_a_training_digit_turned_is_scored_without_itself():
    rng = np.random.default_rng(6)
    train = np.abs(rng.normal(size=(200, 8)))  # all in one orthant: a digit's negative is far from every one
    rows = np.array([3, 40])
    as_given = evidence.own_unfamiliarity(train, rows)
    itself = np.tile(train[rows], (len(evidence.TURNS), 1))  # turned, each is itself: left out, so no gain
    np.testing.assert_allclose(evidence.own_turned(train, rows, itself), np.tile(as_given, 2), rtol=1e-5)
    near = np.tile(train[[7, 8]], (len(evidence.TURNS), 1))  # turned, each is another training digit
    np.testing.assert_allclose(evidence.own_turned(train, rows, near)[:2],
                               evidence.unfamiliarity(train, train[[7, 8]]), rtol=1e-5)  # 7, 8 kept: not their own
    far = np.tile(-train[rows], (len(evidence.TURNS), 1))
    assert evidence.more_familiar_turned(as_given, evidence.own_turned(train, rows, far)) == 0.0
    assert evidence.more_familiar_turned(as_given, evidence.own_turned(train, rows, near)) == 1.0


def test_the_upright_check_turns_an_evenly_spaced_share_of_the_sample():
    rows = evidence.check_rows(10000)
    assert len(rows) == evidence.CHECK_DIGITS and (np.diff(rows) == 10000 // evidence.CHECK_DIGITS).all()
    spread = evidence.check_rows(3000)
    assert len(spread) == evidence.CHECK_DIGITS and (np.diff(spread) >= 1).all() and spread[-1] >= 2998
    assert evidence.check_rows(1500).tolist() == list(range(1500))  # a small sample is checked whole


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leaving_out_the_turns_of_digits_out_of_reach_keeps_every_percentile_at_the_line_exact(seed):
    rng = np.random.default_rng(seed)
    own = rng.gamma(3.0, 0.01, size=2000)  # as given, skewed as the real scores are
    gain = np.where(rng.random(2000) < 0.3, rng.random(2000) * own, 0)  # a turn adds at most the score itself
    pct = evidence.PREDICT_UNFAMILIAR_PCT
    reach = evidence.within_reach(own, pct)
    assert 0 < reach.mean() < 0.5  # most of the sample is left as given
    exact, left = own + gain, np.where(reach, own + gain, own)
    scores = np.sort(np.concatenate([rng.gamma(3.0, 0.012, size=5000), exact, left]))
    at_line = evidence.percentile_of(scores, exact) >= pct
    np.testing.assert_array_equal(evidence.percentile_of(scores, left) >= pct, at_line)  # the same flags
    line = scores[at_line][0]
    np.testing.assert_array_equal(evidence.percentile_of(scores[scores >= line], left),
                                  evidence.percentile_of(scores[scores >= line], exact))
    assert (evidence.percentile_of(scores, left) >= evidence.percentile_of(scores, exact)).all()  # below: high


def test_digits_at_the_edge_of_reach_are_turned_and_those_just_under_it_cannot_reach_the_line():
    rng = np.random.default_rng(3)
    edge = 0.0251  # the line: 10 digits at it fill the sample's 99.5th percentile (the lower one) of 2,000
    own = np.concatenate([rng.uniform(0.010, 0.020, 1960), np.full(10, edge / 2), np.full(10, edge / 2 - 1e-6),
                          np.full(10, edge), rng.uniform(0.03, 0.05, 10)])
    assert np.percentile(own, evidence.PREDICT_UNFAMILIAR_PCT, method="lower") == edge
    reach = evidence.within_reach(own)
    assert reach[1960:1970].all() and not reach[1970:1980].any()  # twice the score at the line: in reach
    exact = 2 * own  # the most a turn adds: the score itself
    left = np.where(reach, exact, own)
    scores = np.unique(np.concatenate([exact, own, np.linspace(0.02, 0.06, 400)]))
    high = scores[scores >= edge]
    np.testing.assert_array_equal(evidence.percentile_of(high, left), evidence.percentile_of(high, exact))
    flagged = evidence.percentile_of(scores, exact) >= evidence.PREDICT_UNFAMILIAR_PCT
    np.testing.assert_array_equal(evidence.percentile_of(scores, left) >= evidence.PREDICT_UNFAMILIAR_PCT, flagged)


def test_turns_count_only_where_few_training_digits_are_more_familiar_turned():
    own = np.full(100, 0.1)
    turns = np.full(200, 0.2)  # every digit less familiar turned: an upright
    assert evidence.has_upright(evidence.more_familiar_turned(own, turns))
    turns[:round(100 * evidence.UPRIGHT_SHARE)] = 0.05  # the share at the line still counts
    share = evidence.more_familiar_turned(own, turns)
    assert share == evidence.UPRIGHT_SHARE and evidence.has_upright(share)
    turns[150:] = 0.05  # half the digits are more familiar in their second turn: nothing upright to check
    assert evidence.more_familiar_turned(own, turns) == pytest.approx(0.5 + evidence.UPRIGHT_SHARE)
    assert not evidence.has_upright(evidence.more_familiar_turned(own, turns))


def test_upright_adds_the_best_turns_gain_and_turned_keeps_each_turns_block():
    np.testing.assert_allclose(evidence.upright(np.array([0.5, 0.2]), np.array([0.3, 0.4, 0.6, 0.1])),
                               [0.7, 0.3])  # digit 0: best turn 0.3 (gain 0.2); digit 1: best 0.1 (gain 0.1)
    np.testing.assert_allclose(evidence.upright(np.array([0.1]), np.array([0.3, 0.4])), [0.1])  # no turn helps
    images = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    turned = evidence.turned(images)
    assert turned.shape == (len(evidence.TURNS) * 2, 3, 3)
    assert np.array_equal(turned[1], np.rot90(images[1], evidence.TURNS[0]))
    assert np.array_equal(turned[3], np.rot90(images[1], evidence.TURNS[1]))


def test_label_issue_reasons_leave_out_neighbours_not_searched_or_padded():
    table = {"index": np.arange(3), "given_label": np.array([1, 2, 0]), "suggested_label": np.array([7, 2, 0]),
             "label_quality": np.array([0.1, 0.9, 0.8]), "is_label_issue": np.array([1, 0, 0]),
             "rank": np.array([1, 3, 2])}
    near = np.array([[7, 7, -1], [-1, -1, -1], [0, 2, 0]])  # fewer than k training digits; one row not searched
    out = evidence.label_issue_reasons(table, near, tuple("0123456789"))
    assert out[0].endswith("2 of its 2 nearest training digits are 7s") and "given 1" in out[0]
    assert out[0].startswith("rank 1 of 3; flagged by cleanlab (quality 0.1)")
    assert "nearest" not in out[1] and out[1].startswith("rank 3 of 3; not flagged at cleanlab's thresholds")
    assert out[2].endswith("2 of its 3 nearest training digits are 0s")

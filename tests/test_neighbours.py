"""Nearest training digits (cosine), on hand-made embeddings with known answers and on a real copy."""

import numpy as np
import pytest

from ambiguous_digits import neighbours


def _unit(rng, n, d=16):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_nearest_are_found_nearest_first_with_cosine_distances():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    idx, dist = neighbours.nearest(reference, np.array([[2.0, 0.1]]), k=3)
    assert idx.tolist() == [[0, 2, 1]]
    expected = [1 - 2 / np.hypot(2, 0.1), 1 - 2.1 / (np.hypot(2, 0.1) * np.sqrt(2)), 1 - 0.1 / np.hypot(2, 0.1)]
    np.testing.assert_allclose(dist[0], expected, atol=1e-6)  # searched in float32, as the embeddings are


def test_a_copy_in_the_reference_is_found_first_at_distance_zero():
    rng = np.random.default_rng(0)
    reference = _unit(rng, 500)
    queries = _unit(rng, 20)
    reference[123] = queries[7] * 3.0  # a scaled copy: cosine ignores the scale
    idx, dist = neighbours.nearest(reference, queries, k=8)
    assert idx[7, 0] == 123 and dist[7, 0] == pytest.approx(0, abs=1e-9)


def test_own_rows_are_left_out_of_their_neighbours():
    rng = np.random.default_rng(1)
    x = _unit(rng, 50)
    idx, dist = neighbours.nearest(x, x, k=5, own=np.arange(50))
    assert idx.shape == (50, 5) and not (idx == np.arange(50)[:, None]).any()
    assert (np.diff(dist, axis=1) >= -1e-12).all()
    plain, _ = neighbours.nearest(x, x, k=6)
    assert (plain[:, 1:] == idx).all()  # the same neighbours, less the row itself


def test_neighbours_of_a_class_are_of_that_class_only():
    rng = np.random.default_rng(2)
    reference, labels = _unit(rng, 300), np.arange(300) % 3
    queries = _unit(rng, 10)
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    idx, dist = neighbours.nearest_of_class(reference, labels, queries, classes, k=4)
    assert (labels[idx] == classes[:, None]).all()
    for q in range(10):  # the nearest of the class, as a search over that class alone finds them
        own = np.flatnonzero(labels == classes[q])
        alone, _ = neighbours.nearest(reference[own], queries[q : q + 1], k=4)
        assert own[alone[0]].tolist() == idx[q].tolist()


def test_a_class_with_fewer_rows_than_k_is_padded():
    reference = np.eye(4)
    labels = np.array([0, 0, 0, 1])
    idx, dist = neighbours.nearest_of_class(reference, labels, np.eye(4)[:1], np.array([1]), k=3)
    assert idx.tolist() == [[3, -1, -1]] and np.isinf(dist[0, 1:]).all()


def test_a_sample_of_rows_leaves_each_its_own_row_out():
    rng = np.random.default_rng(4)
    x = _unit(rng, 60)
    rows = np.array([3, 17, 42])
    idx, _ = neighbours.nearest(x, x[rows], k=4, own=rows)
    every, _ = neighbours.nearest(x, x, k=4, own=np.arange(60))
    assert (idx == every[rows]).all()


def test_a_large_reference_gives_the_same_neighbours_as_sorting_every_distance():
    rng = np.random.default_rng(5)
    reference = _unit(rng, 4 * 10 * neighbours.BLOCK + 123)  # the blocks' path, with a tail past the last block
    queries = _unit(rng, 40)
    reference[-5:] = queries[0] + rng.normal(0, 0.01, size=(5, 16))  # the nearest of one query in the tail
    reference[700:705] = queries[1] + rng.normal(0, 0.01, size=(5, 16))  # and of another, all in one block
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    idx, dist = neighbours.nearest(reference, queries, k=8)
    every = 1 - queries @ reference.T
    expected = np.argsort(every, axis=1, kind="stable")[:, :8]
    assert (np.sort(idx, axis=1) == np.sort(expected, axis=1)).all()
    np.testing.assert_allclose(dist, np.take_along_axis(every, expected, axis=1), atol=1e-6)
    assert set(idx[0, :5]) == set(range(len(reference) - 5, len(reference))) and set(idx[1, :5]) == set(range(700, 705))


def test_own_rows_are_left_out_on_the_blocks_path_over_several_chunks_of_float32_queries():
    rng = np.random.default_rng(6)
    k = 10
    x = _unit(rng, 4 * (k + 1) * neighbours.BLOCK + neighbours.BLOCK + 77).astype(np.float32)
    assert len(x) // neighbours.BLOCK > 4 * (k + 1)  # k + 1 asked for: still the blocks' path
    rows = rng.choice(len(x), 3 * neighbours.QUERY_CHUNK + 5, replace=False)
    idx, dist = neighbours.nearest(x, x[rows], k=k, own=rows)
    every = 1 - x[rows].astype(np.float64) @ x.T.astype(np.float64)
    every[np.arange(len(rows)), rows] = np.inf  # its own row left out
    expected = np.argsort(every, axis=1, kind="stable")[:, :k]
    assert dist.dtype == np.float32 and not (idx == rows[:, None]).any()
    assert (np.sort(idx, axis=1) == np.sort(expected, axis=1)).all()
    np.testing.assert_allclose(dist, np.take_along_axis(every, expected, axis=1), atol=1e-6)

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

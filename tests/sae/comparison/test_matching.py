"""Cross-SAE similarity: blockwise search equals a dense one, and the matching is optimal."""

import itertools
import math

import numpy as np
import pytest

from sae.comparison.matching import best_matches, candidate_edges, matching_agreement, optimal_matching, summarize


def dense_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.mark.parametrize("n, m, k, block", [(23, 37, 1, 5), (23, 37, 4, 7), (50, 9, 3, 4), (10, 10, 10, 3),
                                            (7, 30, 5, 64)])
def test_blockwise_best_matches_equal_a_dense_search(n, m, k, block):
    rng = np.random.default_rng(n * 100 + m)
    a, b = rng.normal(size=(n, 16)) * rng.uniform(0.1, 5, (n, 1)), rng.normal(size=(m, 16))  # unnormalised
    indices, sims = best_matches(a, b, k=k, block=block)
    dense = dense_cosine(a, b)
    expected = np.argsort(-dense, axis=1)[:, :k]
    assert indices.shape == (n, k) and sims.shape == (n, k) and sims.dtype == np.float32
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(dense, expected, axis=1), atol=1e-5)


def test_rows_without_direction_get_no_match_and_are_never_returned():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 8)), rng.normal(size=(5, 8))
    a[2] = 0
    b[[1, 3]] = 0
    b[4] = np.nan
    indices, sims = best_matches(a, b, k=3, block=2)
    assert (indices[2] == -1).all() and np.isnan(sims[2]).all()
    valid_rows = [0, 1, 3, 4, 5]
    # Only b[0] and b[2] have a direction: the third slot is empty for everyone.
    assert set(indices[valid_rows, :2].ravel()) <= {0, 2}
    assert (indices[:, 2] == -1).all() and np.isnan(sims[:, 2]).all()
    dense = dense_cosine(a[valid_rows], b[[0, 2]])
    np.testing.assert_allclose(sims[valid_rows, 0], dense.max(axis=1), atol=1e-6)


def brute_force_best_total(sim: np.ndarray) -> float:
    n, m = sim.shape
    if n <= m:
        return max(sim[np.arange(n), list(p)].sum() for p in itertools.permutations(range(m), n))
    return brute_force_best_total(sim.T)


def check_one_to_one(rows, cols, n, m):
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert ((0 <= rows) & (rows < n)).all() and ((0 <= cols) & (cols < m)).all()


@pytest.mark.parametrize("n, m", [(5, 5), (4, 6), (6, 4), (1, 3)])
def test_with_every_candidate_the_matching_is_the_brute_force_optimum(n, m):
    for seed in range(8):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(n, 6)), rng.normal(size=(m, 6))
        rows, cols, sims = optimal_matching(a, b, k=max(n, m), block=2)
        check_one_to_one(rows, cols, n, m)
        assert len(rows) == min(n, m)  # a full matching, negative cosines included
        dense = dense_cosine(a, b)
        np.testing.assert_allclose(sims, dense[rows, cols], atol=1e-6)
        assert sims.sum() == pytest.approx(brute_force_best_total(dense), abs=1e-5)


def test_with_restricted_candidates_the_matching_uses_only_candidate_edges():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(30, 8))
    edge_rows, edge_cols, _ = candidate_edges(a, b, k=2)
    candidates = set(zip(edge_rows.tolist(), edge_cols.tolist()))
    rows, cols, sims = optimal_matching(a, b, k=2)
    check_one_to_one(rows, cols, 40, 30)
    assert set(zip(rows.tolist(), cols.tolist())) <= candidates
    assert len(rows) > 0
    np.testing.assert_allclose(sims, dense_cosine(a, b)[rows, cols], atol=1e-6)


def test_without_a_full_matching_the_largest_matching_is_found_and_the_rest_unmatched():
    # Candidates: a0-b0, a1-b0, a2-b0 (0.9, 0.8, 0.7) and a2-b1 (0.1): at most two pairs, a0 or a1 unmatched.
    edges = (np.array([0, 1, 2, 2]), np.array([0, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1]))
    rows, cols, sims = optimal_matching(3, 3, edges=edges)
    assert rows.tolist() == [0, 2] and cols.tolist() == [0, 1]
    np.testing.assert_allclose(sims, [0.9, 0.1])
    # When leaving a latent unmatched is worth 0.2 (a cost of -0.2), pairing a2-b1 (0.1) loses two such latents.
    rows, cols, _ = optimal_matching(3, 3, edges=edges, unmatched_cost=-0.2)
    assert rows.tolist() == [0] and cols.tolist() == [0]
    rows, _, _ = optimal_matching(3, 3, edges=(np.zeros(0), np.zeros(0), np.zeros(0)))
    assert rows.size == 0


def test_zero_rows_are_left_unmatched():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    a[1] = 0
    b[3] = 0
    rows, cols, _ = optimal_matching(a, b, k=5)
    assert 1 not in rows and 3 not in cols and len(rows) == 4


def test_matching_agreement_accepts_every_form():
    assert matching_agreement({0: 1, 1: 2, 2: 0}, {0: 1, 1: 0, 2: 0}) == pytest.approx(2 / 3)
    tuple_form = (np.array([0, 1, 2]), np.array([1, 2, 0]), np.ones(3))
    assert matching_agreement(tuple_form, np.array([1, 2, 0])) == 1.0
    # best_matches indices [n, k]: the first column; a latent matched in only one counts as a disagreement.
    assert matching_agreement(np.array([[1, 0], [-1, -1], [0, 2]]), {0: 1, 1: 2, 2: 0}) == pytest.approx(2 / 3)
    assert math.isnan(matching_agreement({}, np.array([-1, -1])))


def test_summarize():
    summary = summarize(np.array([0.2, 0.9, np.nan, 0.6, 0.8]), threshold=0.7)
    assert summary == pytest.approx({"mean_best": 0.625, "median_best": 0.7, "frac_above": 0.5, "n": 4})
    assert summarize(np.array([[0.5, 0.1], [0.7, 0.2]]), 0.6)["mean_best"] == pytest.approx(0.6)
    empty = summarize(np.array([np.nan]), 0.5)
    assert math.isnan(empty["mean_best"]) and empty["n"] == 0

"""full_ranking_topk against a dense numpy reference with the same tie rule (score desc, lower index)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairbench.errors import UserError
from fairbench.metrics import full_ranking_topk


def reference_topk(scores: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Per row: non-excluded items scored above -inf, sorted by (-score, item index); first k, -1 pads."""
    result = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for row in range(scores.shape[0]):
        candidates = np.flatnonzero(~excluded[row] & (scores[row] > -np.inf))
        ordered = candidates[np.lexsort((candidates, -scores[row, candidates]))][:k]
        result[row, : ordered.size] = ordered
    return result


def lookup(scores: np.ndarray):
    """score_fn that reads each user's row of a fixed score matrix (the same row in any batch)."""
    table = torch.from_numpy(scores)

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        assert users.dtype == torch.long and users.ndim == 1
        return table[users]

    return score_fn


def tied_problem(seed: int, n_users: int = 50, n_items: int = 30):
    """Integer scores in 0..4 (many ties), some -inf, about 30% of items excluded per user."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (n_users, n_items)).astype(np.float32)
    scores[rng.random((n_users, n_items)) < 0.05] = -np.inf
    excluded = rng.random((n_users, n_items)) < 0.3
    return scores, excluded


@pytest.mark.parametrize("batch_size", [1, 4, 13, 1024])
def test_matches_dense_reference_with_ties_for_any_batch_size(batch_size):
    scores, excluded = tied_problem(seed=0)
    users = np.random.default_rng(1).choice(50, size=40, replace=True)  # any order, repeats allowed
    topk = full_ranking_topk(lookup(scores), users, sp.csr_matrix(excluded), k=7, batch_size=batch_size)
    assert topk.dtype == np.int64 and topk.shape == (40, 7)
    np.testing.assert_array_equal(topk, reference_topk(scores[users], excluded[users], k=7))


def test_masked_items_never_returned():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((100, 200)).astype(np.float32)
    excluded = rng.random((100, 200)) < 0.5
    scores[excluded] += 100.0  # masked items would otherwise top every list
    topk = full_ranking_topk(lookup(scores), np.arange(100), sp.csr_matrix(excluded), k=50, batch_size=32)
    rows = np.repeat(np.arange(100), 50)
    assert not excluded[rows, topk.ravel()].any()
    np.testing.assert_array_equal(topk, reference_topk(scores, excluded, k=50))


def test_pads_with_minus_one_when_too_few_rankable_items():
    scores = np.array([[0.5, 0.9, 0.1, 0.7, 0.3], [1.0, 1.0, 1.0, -np.inf, 1.0]], dtype=np.float32)
    excluded = sp.csr_matrix(np.array([[1, 0, 0, 1, 1], [0, 1, 0, 0, 0]], dtype=np.float32))
    topk = full_ranking_topk(lookup(scores), np.array([0, 1]), excluded, k=4)
    np.testing.assert_array_equal(topk, [[1, 2, -1, -1], [0, 2, 4, -1]])
    wider = full_ranking_topk(lookup(scores), np.array([0, 1]), sp.csr_matrix((2, 5)), k=7)
    np.testing.assert_array_equal(wider, [[1, 3, 0, 4, 2, -1, -1], [0, 1, 2, 4, -1, -1, -1]])


def test_explicit_zeros_in_exclude_do_not_mask():
    excluded = sp.csr_matrix((np.array([0.0, 1.0]), (np.array([0, 0]), np.array([0, 1]))), shape=(1, 3))
    scores = np.array([[3.0, 2.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        full_ranking_topk(lookup(scores), np.array([0]), excluded, k=3), [[0, 2, -1]]
    )


def test_half_precision_scores_rank_like_their_float32_values():
    rng = np.random.default_rng(3)
    scores = (rng.standard_normal((20, 64)) * 0.01).astype(np.float16)  # coarse: many exact ties
    excluded = rng.random((20, 64)) < 0.2
    topk = full_ranking_topk(lookup(scores), np.arange(20), sp.csr_matrix(excluded), k=10, batch_size=3)
    np.testing.assert_array_equal(topk, reference_topk(scores.astype(np.float32), excluded, k=10))


def test_inputs_are_checked_and_scores_are_not_modified():
    scores = np.zeros((2, 3), dtype=np.float32)
    original = scores.copy()
    excluded = sp.csr_matrix(np.eye(2, 3, dtype=np.float32))
    full_ranking_topk(lookup(scores), np.array([0, 1]), excluded, k=2)
    np.testing.assert_array_equal(scores, original)  # masking works on a copy
    assert full_ranking_topk(lookup(scores), np.array([], dtype=np.int64), excluded, k=2).shape == (0, 2)
    with pytest.raises(UserError, match="k=0"):
        full_ranking_topk(lookup(scores), np.array([0]), excluded, k=0)
    with pytest.raises(UserError, match="batch_size"):
        full_ranking_topk(lookup(scores), np.array([0]), excluded, k=1, batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        full_ranking_topk(lookup(scores), np.array([0]), sp.csr_matrix((2, 4)), k=1)
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_topk(lookup(np.full((2, 3), np.nan, np.float32)), np.array([0]), excluded, k=1)


@settings(max_examples=50, deadline=None)
@given(
    n_users=st.integers(1, 8),
    n_items=st.integers(1, 12),
    k=st.integers(1, 14),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_equals_reference_and_ignores_batch_size(n_users, n_items, k, batch_size, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-2, 3, (n_users, n_items)).astype(np.float64)
    scores[rng.random((n_users, n_items)) < 0.1] = -np.inf
    excluded = rng.random((n_users, n_items)) < 0.3
    users = rng.integers(0, n_users, size=int(rng.integers(0, 10)))
    exclude = sp.csr_matrix(excluded)
    topk = full_ranking_topk(lookup(scores), users, exclude, k=k, batch_size=batch_size)
    np.testing.assert_array_equal(topk, reference_topk(scores[users], excluded[users], k))
    np.testing.assert_array_equal(
        topk, full_ranking_topk(lookup(scores), users, exclude, k=k, batch_size=1000)
    )

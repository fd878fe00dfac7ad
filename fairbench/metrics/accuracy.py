"""Ranking accuracy with binary relevance: hits, Recall@K, NDCG@K, HR@K for all K in one pass.

Definitions (METHODS 2.1; identical to ranx, RecBole and AlphaRec's evaluator):
    HR@K(u)     = 1[L_K(u) ∩ R(u) ≠ ∅]
    Recall@K(u) = |L_K(u) ∩ R(u)| / |R(u)|
    NDCG@K(u)   = Σ_{r=1..K} 1[L_K(u)_r ∈ R(u)] / log2(r+1)  /  Σ_{r=1..min(K,|R(u)|)} 1/log2(r+1)
Per-user values are computed for every K from cumulative sums over ranks of one hit matrix [U, Kmax].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp

from fairbench.errors import UserError
from fairbench.metrics._inputs import binary_csr, prepare_topk

UtilityName = Literal["recall", "ndcg", "hr"]
UTILITIES: tuple[str, ...] = ("recall", "ndcg", "hr")


def hit_matrix(topk: np.ndarray, truth: sp.spmatrix) -> np.ndarray:
    """Bool [U, K]: ``hits[u, r] = topk[u, r] ∈ R(u)``; padding (-1) is never a hit.

    ``topk`` int [U, K] with values in [-1, I); ``truth`` sparse [U, I], any stored non-zero is relevant.
    Vectorised lookup: every (user, item) pair is encoded as the int64 key ``u * I + i`` and searched
    (np.searchsorted) in the sorted keys of the CSR truth, so no dense [U, I] matrix is built.
    """
    truth = binary_csr(truth, "truth")
    return sorted_hit_matrix(prepare_topk(topk, truth.shape[0], truth.shape[1], np.shape(topk)[1]), truth)


def sorted_hit_matrix(topk: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """``hit_matrix`` for validated inputs: int64 ``topk`` and ``truth`` from ``_inputs.binary_csr`` (CSR
    with sorted, duplicate-free indices and no stored zeros)."""
    n_users, n_items = truth.shape
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(truth.indptr))
    truth_keys = rows * n_items + truth.indices.astype(np.int64)
    if truth_keys.size == 0:
        return np.zeros(topk.shape, dtype=bool)
    is_item = topk >= 0
    list_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + np.where(is_item, topk, 0)
    position = np.minimum(np.searchsorted(truth_keys, list_keys), truth_keys.size - 1)
    return (truth_keys[position] == list_keys) & is_item


def rank_discounts(max_k: int) -> np.ndarray:
    """float64 [max_k]: 1 / log2(r + 1) for ranks r = 1..max_k (Järvelin & Kekäläinen 2002)."""
    return 1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64))


def per_user_utility(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int], utility: UtilityName = "recall"
) -> np.ndarray:
    """float64 [U, len(ks)]: each user's recall / NDCG / HR at every K, from cumulative sums over ranks.

    ``hits`` [U, Kmax] (Kmax >= max(ks)) marks relevant list positions, ``n_relevant`` [U] = |R(u)|.
    NDCG divides by IDCG over min(K, |R(u)|) positions. Users with |R(u)| = 0 get 0 (callers skip them).
    """
    if utility not in UTILITIES:
        raise UserError(f"metric utility={utility!r} is not one of {list(UTILITIES)}")
    cut = np.asarray(ks, dtype=np.int64)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if utility == "ndcg":
        discounts = rank_discounts(hits.shape[1])
        dcg = np.cumsum(hits * discounts, axis=1)[:, cut - 1]
        ideal_by_length = np.concatenate([[0.0], np.cumsum(discounts)])
        idcg = ideal_by_length[np.minimum(cut[None, :], n_relevant[:, None])]
        return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    n_hits = np.cumsum(hits, axis=1, dtype=np.int64)[:, cut - 1]
    if utility == "hr":
        return (n_hits > 0).astype(np.float64)
    return n_hits / np.maximum(n_relevant, 1)[:, None]

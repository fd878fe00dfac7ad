"""Validation and normalisation of the arrays that every metric takes (top-K lists, CSR truth, groups)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from fairbench.errors import UserError

PADDING = -1
"""Item index that marks an empty position in a top-K list (a user with fewer than K rankable items)."""


def binary_csr(matrix: sp.spmatrix | sp.sparray | np.ndarray, name: str) -> sp.csr_matrix:
    """A sorted, duplicate-free copy of ``matrix`` as CSR with data 1.0 at every non-zero entry.

    Any stored non-zero counts as an interaction (relevance is binary); explicit zeros are dropped.
    """
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        raise TypeError(f"{name} must be a scipy.sparse matrix [U, I], got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    if csr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [U, I], got shape {csr.shape}")
    csr.sum_duplicates()  # also sorts the column indices of every row
    csr.eliminate_zeros()
    csr.data[:] = 1.0
    return csr


def check_ks(ks: int | Iterable[int]) -> tuple[int, ...]:
    """The cut-offs as a tuple of distinct positive ints in the order given (duplicates dropped)."""
    values = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not values:
        raise UserError("metric cut-offs `ks` are empty: give at least one K, e.g. ks: [20]")
    checked: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"metric cut-off K={value!r} in ks={list(values)} is not a positive integer")
        if int(value) not in checked:
            checked.append(int(value))
    return tuple(checked)


def prepare_topk(topk: np.ndarray, n_users: int, n_items: int, max_k: int) -> np.ndarray:
    """``topk`` as int64 [n_users, max_k]: truncated to ``max_k`` columns or right-padded with ``PADDING``.

    Raises ValueError for a wrong row count, item indices outside [0, n_items), values below -1, or an item
    listed twice in the same row (it would be counted twice by every metric).
    """
    lists = np.asarray(topk)
    if lists.ndim != 2:
        raise ValueError(f"topk must be 2-D [U, K], got shape {lists.shape}")
    if lists.shape[0] != n_users:
        raise ValueError(f"topk has {lists.shape[0]} rows but truth has {n_users} users; they must match")
    if lists.size and not np.issubdtype(lists.dtype, np.integer):
        raise ValueError(f"topk must hold integer item indices, got dtype {lists.dtype}")
    lists = lists.astype(np.int64, copy=False)[:, :max_k]
    if lists.shape[1] < max_k:
        padding = np.full((n_users, max_k - lists.shape[1]), PADDING, dtype=np.int64)
        lists = np.concatenate([lists, padding], axis=1)
    if lists.size:
        if lists.min() < PADDING or lists.max() >= n_items:
            raise ValueError(f"topk holds values outside [-1, {n_items}): -1 pads, others are item indices")
        ordered = np.sort(lists, axis=1)
        if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PADDING)):
            raise ValueError("topk lists an item more than once in the same row")
    return np.ascontiguousarray(lists)


def check_item_groups(item_groups: np.ndarray, n_items: int) -> np.ndarray:
    """``item_groups`` as a bool membership matrix [I, G] (an item may be in several groups or none)."""
    membership = np.asarray(item_groups)
    if membership.ndim != 2 or membership.shape[0] != n_items or membership.shape[1] < 1:
        raise ValueError(
            f"item_groups must be a [I={n_items}, G>=1] membership matrix, got shape {membership.shape}"
        )
    if membership.dtype != np.bool_:
        if not np.isin(membership, (0, 1)).all():
            raise ValueError("item_groups must be binary (0/1 or bool)")
        membership = membership.astype(bool)
    return membership

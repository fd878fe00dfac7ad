"""Popularity bias and catalogue coverage of top-K lists (METHODS 2.4).

    ItemCoverage@K = |∪_u L_K(u)| / I
    Gini@K         = Σ_{j=1..I} (2j − I − 1) c_(j) / (I Σ_j c_j), c = recommendation counts of all I items
                     (zeros included) sorted ascending (RecBole ``GiniIndex``)
    ARP@K          = mean_u mean_{i ∈ L_K(u)} pop(i), pop = training interactions per item (Elliot ``ARP``)
    APLT@K         = mean_u |L_K(u) ∩ LongTail| / K (Elliot ``APLT``, Abdollahpouri et al. RecSys 2017)
Padding (-1) is never an item: it is not covered, not counted in c, and contributes no popularity. ARP divides
by the number of real items in the user's first K positions (users whose first K positions are all padding
are left out of the ARP mean); APLT divides by K, so padding lowers it like a non-long-tail item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def item_popularity(history: sp.spmatrix) -> np.ndarray:
    """float64 [I]: training interactions per item (column sums of the binary history matrix)."""
    return np.asarray(sp.csr_matrix(history).sum(axis=0), dtype=np.float64).ravel()


def long_tail_mask(popularity: np.ndarray, head_share: float = 0.8) -> np.ndarray:
    """Bool [I]: items outside the short head (Elliot ``Popularity.get_short_head``/``get_long_tail``).

    Short head = the smallest prefix of items sorted by popularity (descending; ties by lower item index, as
    Elliot's stable sort) whose cumulative popularity reaches ``head_share`` of all training interactions.
    Every other item, including items never seen in training, is in the long tail.
    """
    popularity = np.asarray(popularity, dtype=np.float64)
    order = np.argsort(-popularity, kind="stable")
    cumulative = np.cumsum(popularity[order])
    n_head = (
        int(np.searchsorted(cumulative, head_share * cumulative[-1], side="left")) + 1 if order.size else 0
    )
    mask = np.ones(popularity.size, dtype=bool)
    mask[order[:n_head]] = False
    return mask


def recommendation_counts(topk: np.ndarray, n_items: int, ks: Sequence[int]) -> np.ndarray:
    """int64 [len(ks), I]: occurrences of each item in the first K positions of all lists (padding skipped).

    One pass over the ranks: the counts for a larger K add the positions between the previous K and K.
    """
    counts = np.zeros((len(ks), n_items), dtype=np.int64)
    running = np.zeros(n_items, dtype=np.int64)
    previous_k = 0
    for k_index in np.argsort(ks, kind="stable"):
        block = topk[:, previous_k : ks[k_index]]
        running = running + np.bincount(block[block >= 0], minlength=n_items)
        counts[k_index] = running
        previous_k = max(previous_k, ks[k_index])
    return counts


def item_coverage(counts: np.ndarray) -> float:
    """ItemCoverage = |{i : c_i > 0}| / I for recommendation counts c [I]."""
    counts = np.asarray(counts)
    return float(np.count_nonzero(counts) / counts.size) if counts.size else float("nan")


def gini_index(counts: np.ndarray) -> float:
    """Gini = Σ_j (2j − I − 1) c_(j) / (I Σ c) over all I items, zeros included, c sorted ascending (RecBole).

    0 = every item recommended equally often; (I − 1) / I = one item takes every slot. NaN if Σ c = 0.
    """
    ordered = np.sort(np.asarray(counts, dtype=np.float64))
    n_items, total = ordered.size, ordered.sum()
    if n_items == 0 or total == 0:
        return float("nan")
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    return float(np.sum((2 * ranks - n_items - 1) * ordered) / (n_items * total))


def average_recommendation_popularity(
    topk: np.ndarray, popularity: np.ndarray, ks: Sequence[int]
) -> np.ndarray:
    """ARP@K for every K: float64 [len(ks)] = mean_u (Σ_{i ∈ L_K(u)} pop(i)) / |L_K(u)| over real items.

    Users with no real item in their first K positions are left out of the mean (NaN if no user remains).
    """
    is_item = topk >= 0
    cut = np.asarray(ks, dtype=np.int64) - 1
    item_pop = np.where(is_item, popularity[np.where(is_item, topk, 0)], 0.0)
    pop_sum = np.cumsum(item_pop, axis=1)[:, cut]
    n_real = np.cumsum(is_item, axis=1, dtype=np.int64)[:, cut]
    per_user = np.divide(pop_sum, n_real, out=np.full_like(pop_sum, np.nan), where=n_real > 0)
    counted = (n_real > 0).sum(axis=0)
    total = np.nansum(per_user, axis=0)
    return np.divide(total, counted, out=np.full(len(ks), np.nan), where=counted > 0)


def average_percentage_long_tail(topk: np.ndarray, long_tail: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """APLT@K for every K: float64 [len(ks)] = mean_u |L_K(u) ∩ LongTail| / K (padding is not long tail)."""
    cut = np.asarray(ks, dtype=np.int64)
    if topk.shape[0] == 0:
        return np.full(len(ks), np.nan)
    in_tail = (topk >= 0) & long_tail[np.where(topk >= 0, topk, 0)]
    n_tail = np.cumsum(in_tail, axis=1, dtype=np.int64)[:, cut - 1]
    return (n_tail / cut).mean(axis=0)

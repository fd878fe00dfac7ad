"""Item-group fairness: group utility with CV@K / MIN@K (BiFair, ITFR) and GU / MGU / DGU@K (IFairLRS).

Group utility (METHODS 2.2; ITFR ``intersection_evaluator.py``, BiFair Sec. 2.2 and Eq. 1):
    utility(u, g)@K  = recall of u restricted to R_g(u), the user's held-out items in group g:
                       |L_K(u) ∩ R_g(u)| / |R_g(u)|; or NDCG (DCG of group-g hits / IDCG over
                       min(K, |R_g(u)|)) or HR (1[any group-g hit]).
    G_Utility(g)@K   = mean of utility(u, g) over users with |R_g(u)| > 0     (normalization "relevant", ITFR)
                     = Σ_u utility(u, g) / |{u : |R(u)| > 0}|   (normalization "all", BiFair Eq. 1)
    CV@K             = std_g G_Utility(g) / mean_g G_Utility(g)   (population std)
    MIN@K            = mean of the lowest max(1, floor(G/4)) values of G_Utility(g)
Group popularity (METHODS 2.3; IFairLRS ``code/evaluate_all.py``):
    GP(g)  = Σ_i c_i m_ig / Σ_g' Σ_i c_i m_ig'  (c_i: how often item i occurs, m_ig: membership; an item in
             several groups counts once per group, normalised by the total number of memberships)
    GU(g)@K = GP_rec(g)@K − GP_ref(g);  MGU@K = mean_g |GU(g)@K|;  DGU@K = max_g GU(g)@K − min_g GU(g)@K.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp

from fairbench.errors import UserError
from fairbench.metrics._inputs import binary_csr, check_item_groups, check_ks, prepare_topk
from fairbench.metrics.accuracy import UtilityName, per_user_utility, sorted_hit_matrix

GroupNormalization = Literal["relevant", "all"]
GROUP_NORMALIZATIONS: tuple[str, ...] = ("relevant", "all")


def coefficient_of_variation(values: np.ndarray) -> float:
    """CV = std(values) / mean(values) with the population std (ddof=0), as BiFair / ITFR report CV@K.

    NaN entries (groups without held-out items) are ignored. Returns NaN when no finite value remains or
    the mean is 0 (all groups have zero utility: the ratio is undefined).
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan")
    mean = finite.mean()
    return float(finite.std() / mean) if mean != 0 else float("nan")


def bottom_quartile_mean(values: np.ndarray) -> float:
    """MIN = mean of the lowest max(1, floor(n/4)) values (BiFair MIN@K, METHODS 2.2).

    ITFR computes ``mean(sorted(l)[:len(l)//4])``, which is empty for fewer than 4 groups, while BiFair
    reports MIN for 2 popularity groups, hence the max(1, ·). NaN entries are ignored and n counts the
    finite values; all-NaN gives NaN.
    """
    finite = np.sort(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan")
    return float(finite[: max(1, finite.size // 4)].mean())


def group_proportions(item_counts: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """GP(g) = Σ_i c_i m_ig / Σ_{g', i} c_i m_ig' (IFairLRS): share of group memberships, float64 [G].

    ``item_counts`` [I] (or [..., I]) counts occurrences of every item; ``membership`` is bool [I, G].
    Items in no group contribute nothing. NaN where no counted item belongs to any group.
    """
    group_counts = np.asarray(item_counts, dtype=np.float64) @ membership.astype(np.float64)
    total = group_counts.sum(axis=-1, keepdims=True)
    return np.divide(group_counts, total, out=np.full_like(group_counts, np.nan), where=total > 0)


def group_unfairness(gu: np.ndarray) -> tuple[float, float]:
    """(MGU, DGU) from the per-group gaps GU(g) = GP_rec(g) − GP_ref(g) (IFairLRS; GDRT uses MGU@5).

    MGU = mean_g |GU(g)|, DGU = max_g GU(g) − min_g GU(g).
    """
    gu = np.asarray(gu, dtype=np.float64)
    return float(np.abs(gu).mean()), float(gu.max() - gu.min())


def group_utility_table(
    topk: np.ndarray,
    hits: np.ndarray,
    truth: sp.csr_matrix,
    membership: np.ndarray,
    ks: Sequence[int],
    utility: UtilityName,
    normalization: GroupNormalization,
) -> np.ndarray:
    """G_Utility [len(ks), G] for users that all have |R(u)| > 0 (validated inputs; see ``group_utilities``).

    ``hits`` = ``hit_matrix(topk, truth)``. One [U, Kmax] pass per group: the loop runs over the G groups,
    never over users or items. Groups where no user has a held-out item get NaN.
    """
    if normalization not in GROUP_NORMALIZATIONS:
        raise UserError(
            f"metric group_normalization={normalization!r} is not one of {list(GROUP_NORMALIZATIONS)}"
        )
    n_groups = membership.shape[1]
    n_users = truth.shape[0]
    table = np.full((len(ks), n_groups), np.nan)
    if n_users == 0:
        return table
    n_relevant_in_group = np.rint(truth @ membership.astype(np.float64)).astype(np.int64)  # [U, G]
    listed_items = np.where(topk >= 0, topk, 0)
    for group in range(n_groups):
        has_relevant = n_relevant_in_group[:, group] > 0
        n_counted = int(has_relevant.sum()) if normalization == "relevant" else n_users
        if not has_relevant.any():
            continue
        group_hits = hits & membership[listed_items, group]
        utilities = per_user_utility(group_hits, n_relevant_in_group[:, group], ks, utility)
        table[:, group] = utilities[has_relevant].sum(axis=0) / n_counted
    return table


def group_utilities(
    topk: np.ndarray,
    truth: sp.spmatrix,
    item_groups: np.ndarray,
    ks: Sequence[int] = (20,),
    utility: UtilityName = "recall",
    normalization: GroupNormalization = "relevant",
) -> np.ndarray:
    """G_Utility(g)@K for every K in ``ks`` and group g: float64 [len(ks), G] (formulas in module doc).

    Users with no held-out items (|R(u)| = 0) are skipped. A group that no evaluated user has a held-out
    item of gets NaN (it is excluded from CV / MIN and a RuntimeWarning names it) under both normalisations:
    neither ITFR nor BiFair defines the utility of a group that cannot be hit.
    """
    ks = check_ks(ks)
    truth = binary_csr(truth, "truth")
    membership = check_item_groups(item_groups, truth.shape[1])
    lists = prepare_topk(topk, truth.shape[0], truth.shape[1], max(ks))
    evaluated = np.diff(truth.indptr) > 0
    truth, lists = truth[evaluated], lists[evaluated]
    table = group_utility_table(
        lists, sorted_hit_matrix(lists, truth), truth, membership, ks, utility, normalization
    )
    warn_empty_groups(table)
    return table


def warn_empty_groups(table: np.ndarray, kind: str = "") -> None:
    """RuntimeWarning naming the groups (of grouping ``kind``, if given) whose utility is NaN because no
    evaluated user has items in them."""
    empty = np.flatnonzero(np.isnan(table).all(axis=0))
    if empty.size:
        which = f"{kind} item groups" if kind else "item groups"
        warnings.warn(
            f"{which} {empty.tolist()} have no held-out items among the evaluated users: their utility "
            "is NaN and they are left out of CV and MIN",
            RuntimeWarning,
            stacklevel=3,
        )

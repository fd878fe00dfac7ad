"""The evaluator: top-K lists + held-out truth (+ item groups, + training history) -> flat dict of metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from fairbench.errors import UserError
from fairbench.metrics._inputs import binary_csr, check_item_groups, check_ks, prepare_topk
from fairbench.metrics.accuracy import UTILITIES, UtilityName, per_user_utility, sorted_hit_matrix
from fairbench.metrics.fairness import (
    GROUP_NORMALIZATIONS,
    GroupNormalization,
    bottom_quartile_mean,
    coefficient_of_variation,
    group_proportions,
    group_unfairness,
    group_utility_table,
    warn_empty_groups,
)
from fairbench.metrics.popularity import (
    average_percentage_long_tail,
    average_recommendation_popularity,
    gini_index,
    item_coverage,
    item_popularity,
    long_tail_mask,
    recommendation_counts,
)


def evaluate_topk(
    topk: np.ndarray,
    truth: sp.spmatrix,
    item_groups: np.ndarray | Mapping[str, np.ndarray] | None = None,
    history: sp.spmatrix | None = None,
    ks: Sequence[int] = (20,),
    utility: UtilityName = "recall",
    group_normalization: GroupNormalization = "relevant",
) -> dict[str, float]:
    """All metrics for every K in ``ks`` as a flat dict of floats (formulas: METHODS 2.1-2.4 and the modules
    ``accuracy``, ``fairness``, ``popularity``).

    Args:
        topk: int [U, Kmax] item indices ranked best first; -1 pads short lists. Only the first max(ks)
            columns are read; a narrower array is treated as padded with -1.
        truth: CSR [U, I] held-out items (any stored non-zero is relevant); row u belongs to ``topk[u]``
            (pass ``truth[users]`` for lists ranked by ``full_ranking_topk(..., users, ...)``).
        item_groups: bool/0-1 [I, G] membership (an item may be in several groups, or none), or a mapping
            ``{kind: membership}`` of several groupings (e.g. popularity and genre groups) that are all
            evaluated from the same hit matrix; their keys are then prefixed ``<kind>/`` (see below).
        history: CSR [U', I] training interactions. Only column sums and interaction totals are used, so
            its rows need not align with ``topk`` (pass the full training matrix).
        ks: cut-offs. utility: "recall" | "ndcg" | "hr", the per-user utility behind CV / MIN.
        group_normalization: "relevant" (ITFR: mean over users with |R_g(u)| > 0) or "all" (BiFair Eq. 1:
            divide by the number of users with |R(u)| > 0).

    Which users count: only users with |R(u)| > 0 ("evaluated users"), for every metric, including the
    list-level ones (coverage, gini, GP_rec). Rows of users without truth are ignored entirely.

    Keys, for every K:
        always: ``recall@K``, ``ndcg@K``, ``hr@K`` (means over evaluated users), ``coverage@K``, ``gini@K``
            (over the evaluated users' lists; they need only topk and I = truth.shape[1], so they are
            always emitted).
        with item_groups: ``cv@K``, ``min@K``, ``utility@K/<g>`` (g = 0-based group index). A group where
            no evaluated user has a held-out item gets utility NaN, is left out of CV and MIN (MIN takes
            max(1, floor(G'/4)) of the G' remaining groups) and triggers a RuntimeWarning.
        with item_groups and history: ``mgu@K``, ``dgu@K``, ``gu@K/<g>`` where GP_rec counts the items of
            the evaluated users' top-K lists and GP_ref the interactions of all rows of ``history``
            (IFairLRS takes the histories of the evaluated samples: pass those rows to reproduce that).
        with history: ``arp@K``, ``aplt@K``.
        With a mapping ``{kind: membership}`` the group keys above become ``<kind>/cv@K``, ``<kind>/min@K``,
        ``<kind>/utility@K/<g>``, ``<kind>/mgu@K``, ``<kind>/dgu@K``, ``<kind>/gu@K/<g>`` for every kind, with
        exactly the values that a separate call with ``item_groups=membership`` returns; the other keys are
        computed once.
    Padding (-1) is never an item: never a hit, not covered, not counted by gini or GP_rec; ARP averages
    over the real items of a list (users with none are left out), APLT divides by K (Elliot).
    Undefined values are NaN: user means when no user has truth, gini / GU when no list holds an item, ARP
    when no list holds a real item, CV when the group utilities average 0. Nothing depends on a batch size:
    every metric is computed at once over all users, vectorised, from one hit matrix [U, Kmax].
    """
    ks = check_ks(ks)
    if utility not in UTILITIES:
        raise UserError(f"metric utility={utility!r} is not one of {list(UTILITIES)}")
    if group_normalization not in GROUP_NORMALIZATIONS:
        raise UserError(
            f"metric group_normalization={group_normalization!r} is not one of {list(GROUP_NORMALIZATIONS)}"
        )
    truth = binary_csr(truth, "truth")
    n_users, n_items = truth.shape
    lists = prepare_topk(topk, n_users, n_items, max(ks))
    evaluated = np.diff(truth.indptr) > 0
    truth, lists = truth[evaluated], lists[evaluated]
    n_evaluated = truth.shape[0]
    hits = sorted_hit_matrix(lists, truth)
    results: dict[str, float] = {}

    for name in UTILITIES:
        per_user = per_user_utility(hits, np.diff(truth.indptr), ks, name)
        means = per_user.mean(axis=0) if n_evaluated else np.full(len(ks), np.nan)
        results.update({f"{name}@{k}": float(value) for k, value in zip(ks, means, strict=True)})

    counts = recommendation_counts(lists, n_items, ks)
    for k_index, k in enumerate(ks):
        results[f"coverage@{k}"] = item_coverage(counts[k_index])
        results[f"gini@{k}"] = gini_index(counts[k_index])

    training = None
    if history is not None:
        training = binary_csr(history, "history")
        if training.shape[1] != n_items:
            raise ValueError(
                f"history has {training.shape[1]} items but truth has {n_items}; they must match"
            )

    popularity = item_popularity(training) if training is not None else None
    for prefix, groups in group_kinds(item_groups).items():
        membership = check_item_groups(groups, n_items)
        table = group_utility_table(lists, hits, truth, membership, ks, utility, group_normalization)
        warn_empty_groups(table, prefix.rstrip("/"))
        for k_index, k in enumerate(ks):
            results[f"{prefix}cv@{k}"] = coefficient_of_variation(table[k_index])
            results[f"{prefix}min@{k}"] = bottom_quartile_mean(table[k_index])
            results.update({f"{prefix}utility@{k}/{g}": float(v) for g, v in enumerate(table[k_index])})
        if popularity is not None:
            reference = group_proportions(popularity, membership)
            gaps = group_proportions(counts, membership) - reference  # [len(ks), G]
            for k_index, k in enumerate(ks):
                results[f"{prefix}mgu@{k}"], results[f"{prefix}dgu@{k}"] = group_unfairness(gaps[k_index])
                results.update({f"{prefix}gu@{k}/{g}": float(v) for g, v in enumerate(gaps[k_index])})

    if popularity is not None:
        arp = average_recommendation_popularity(lists, popularity, ks)
        aplt = average_percentage_long_tail(lists, long_tail_mask(popularity), ks)
        for k_index, k in enumerate(ks):
            results[f"arp@{k}"] = float(arp[k_index])
            results[f"aplt@{k}"] = float(aplt[k_index])
    return results


def group_kinds(item_groups: np.ndarray | Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """``{key prefix: membership}``: ``{"": item_groups}`` for one membership matrix, ``{"<kind>/": m}`` for
    every entry of a mapping, ``{}`` for None."""
    if item_groups is None:
        return {}
    if not isinstance(item_groups, Mapping):
        return {"": item_groups}
    for kind in item_groups:
        if not isinstance(kind, str) or not kind or "/" in kind:
            raise ValueError(f"item group kind {kind!r} must be a non-empty string without '/'")
    return {f"{kind}/": groups for kind, groups in item_groups.items()}

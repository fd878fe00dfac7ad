"""Metrics: ranking accuracy, item-group fairness, popularity bias, and the full-ranking helper.

Entry points: :func:`evaluate_topk` (top-K lists -> flat dict of metrics) and :func:`full_ranking_topk`
(scores -> top-K lists with seen items masked). Formulas and sources: METHODS 2.1-2.4 and each module.
"""

from fairbench.metrics.accuracy import hit_matrix, per_user_utility, rank_discounts
from fairbench.metrics.evaluate import evaluate_topk
from fairbench.metrics.fairness import (
    bottom_quartile_mean,
    coefficient_of_variation,
    group_proportions,
    group_unfairness,
    group_utilities,
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
from fairbench.metrics.ranking import full_ranking_topk, select_topk

__all__ = [
    "average_percentage_long_tail",
    "average_recommendation_popularity",
    "bottom_quartile_mean",
    "coefficient_of_variation",
    "evaluate_topk",
    "full_ranking_topk",
    "gini_index",
    "group_proportions",
    "group_unfairness",
    "group_utilities",
    "hit_matrix",
    "item_coverage",
    "item_popularity",
    "long_tail_mask",
    "per_user_utility",
    "rank_discounts",
    "recommendation_counts",
    "select_topk",
]

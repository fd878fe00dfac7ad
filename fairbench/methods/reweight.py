"""Reweight: inverse group frequency sample weights (BiFair's "RW"; Jiang et al. 2024 / IFairLRS family).

Group sizes are counted over the training interactions, n_g = sum_i count_i m_ig (an interaction with a
multi-genre item counts once in each of its groups), and

    w_g = M / (G' n_g),   M = sum_g n_g,   G' = number of groups with n_g > 0,

so sum_g n_g w_g = M (= N, the number of interactions, when every item is in exactly one group). A sample's
weight is the mean of w_g over its item's groups (IFairLRS's rule for multi-genre targets); a sample whose
item is in no group keeps weight 1. Loss = 1/B sum_s w_s l_s (BiFair App. B.4: "the inverse frequency of each
item's group, normalized to serve as the weight").
"""

from __future__ import annotations

import torch

from fairbench.methods.base import LossWeightingMethod, TrainContext
from fairbench.methods.grouping import GroupKind, batch_membership
from fairbench.models.base import Batch, Recommender


def inverse_frequency_weights(item_counts: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """w_g = M / (G' n_g) with n_g = sum_i count_i m_ig (0 for groups without training interactions)."""
    group_counts = item_counts.to(membership.dtype) @ membership
    nonempty = group_counts > 0
    total, n_nonempty = group_counts.sum(), nonempty.sum()
    safe = torch.where(nonempty, group_counts, torch.ones_like(group_counts))
    return torch.where(nonempty, total / (n_nonempty * safe), torch.zeros_like(group_counts))


class Reweight(LossWeightingMethod):
    """Per-sample weight = inverse frequency of the item's group (see the module docstring)."""

    needs_groups = True

    def __init__(self, groups: GroupKind = "popularity") -> None:
        self.groups = groups

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        assert context.item_groups is not None
        self.group_weights = inverse_frequency_weights(context.item_train_counts, context.item_groups)

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        membership = batch_membership(batch, "reweight").to(self.group_weights.dtype)
        n_groups = membership.sum(1)
        mean_weight = (membership @ self.group_weights) / n_groups.clamp(min=1)
        return torch.where(n_groups > 0, mean_weight, torch.ones_like(mean_weight)).to(losses.dtype)

"""GroupDRO (Sagawa et al., ICLR 2020; kohpangwei/group_DRO ``loss.py``, ``compute_robust_loss``).

Every step, from the batch's group losses L_g (membership-weighted means, see ``grouping``):

    q_g <- q_g exp(eta (L_g + C / sqrt(n_g))),  q <- q / sum q,      loss = sum_g q_g L_g  (q constant),

with q_0 uniform, eta = ``step_size`` (source default 0.01) and the optional generalisation adjustment C
(``adjustment``; n_g = training interactions of group g). A group absent from the batch has L_g = 0 as in the
source, so its q_g is only renormalised (the adjustment is added for present groups only).
"""

from __future__ import annotations

import torch

from fairbench.errors import UserError
from fairbench.methods.base import LossWeightingMethod, TrainContext
from fairbench.methods.grouping import (
    GroupKind,
    batch_membership,
    group_losses,
    group_weighted_sample_weights,
)
from fairbench.models.base import Batch, Recommender


class GroupDRO(LossWeightingMethod):
    """Exponentiated-gradient group weights q on the group losses (see the module docstring)."""

    needs_groups = True

    def __init__(
        self, groups: GroupKind = "popularity", step_size: float = 0.01, adjustment: float = 0.0
    ) -> None:
        if step_size < 0 or adjustment < 0:
            raise UserError(f"groupdro: step_size and adjustment must be >= 0, got {step_size}, {adjustment}")
        self.groups, self.step_size, self.adjustment = groups, step_size, adjustment

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        assert context.item_groups is not None
        n_groups = context.item_groups.shape[1]
        self.q = torch.full((n_groups,), 1.0 / n_groups, device=context.item_groups.device)
        self.group_counts = context.item_train_counts.to(context.item_groups.dtype) @ context.item_groups

    def update_weights(self, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """One exponentiated-gradient step on q from group losses ``values`` [G]; returns the new q."""
        adjusted = values.detach().to(self.q.dtype)
        if self.adjustment > 0:
            bonus = self.adjustment / self.group_counts.clamp(min=1).sqrt()
            adjusted = adjusted + torch.where(present, bonus, torch.zeros_like(bonus))
        self.q = self.q * torch.exp(self.step_size * adjusted)
        self.q = self.q / self.q.sum()
        return self.q

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        membership = batch_membership(batch, "groupdro")
        grouped = group_losses(losses, membership)
        q = self.update_weights(grouped.values, grouped.present)
        return group_weighted_sample_weights(q, membership, grouped.counts).to(losses.dtype)

    def state_dict(self) -> dict:
        return {"q": self.q.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].to(self.q.device)

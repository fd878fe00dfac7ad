"""DRORec / streaming-loss DRO (Wen et al., WWW 2022; google-research ``robust_retrieval/tasks.py``).

Streaming group losses and multiplicative weights, every step:

    Lbar_g <- (1 - beta 1[g in batch]) Lbar_g + beta L_g        (streaming_group_loss, beta = ``stream_rate``)
    w <- softmax(log w + eta Lbar)                              (_update_group_weights, eta = ``step_size``)
    loss = sum_g w_g L_g  (w constant)

w_0 is uniform. BiFair App. B.4 sets the weight step size to 0.01; the source's streaming rate default is
0.01.
A group absent from the batch keeps its streaming loss (the source's group_exist_in_batch rule) but its weight
still moves with that kept loss, as in the source. The source starts Lbar from ``group_loss_init``; here
``loss_init: null`` starts each group from its first observed batch loss (GroupDRO's exp_avg_loss rule), a
number starts every group from that value. The source also multiplies the loss by the batch size, a constant
that only rescales the learning rate; it is left out.
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


class DRORec(LossWeightingMethod):
    """Group DRO on streaming estimates of the group losses (see the module docstring)."""

    needs_groups = True

    def __init__(
        self,
        groups: GroupKind = "popularity",
        step_size: float = 0.01,
        stream_rate: float = 0.01,
        loss_init: float | None = None,
    ) -> None:
        if step_size < 0 or not 0 < stream_rate <= 1:
            raise UserError(
                f"drorec: need step_size >= 0 and 0 < stream_rate <= 1, got {step_size}, {stream_rate}"
            )
        self.groups, self.step_size, self.stream_rate, self.loss_init = (
            groups,
            step_size,
            stream_rate,
            loss_init,
        )

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        assert context.item_groups is not None
        n_groups, device = context.item_groups.shape[1], context.item_groups.device
        self.weights = torch.full((n_groups,), 1.0 / n_groups, device=device)
        self.stream_loss = torch.full((n_groups,), float(self.loss_init or 0.0), device=device)
        self.observed = torch.full((n_groups,), self.loss_init is not None, dtype=torch.bool, device=device)

    def update_weights(self, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Streaming-loss and weight update from the batch's group losses; returns the new weights."""
        values = values.detach().to(self.stream_loss.dtype)
        first = present & ~self.observed
        streamed = (1 - self.stream_rate) * self.stream_loss + self.stream_rate * values
        self.stream_loss = torch.where(first, values, torch.where(present, streamed, self.stream_loss))
        self.observed = self.observed | present
        self.weights = torch.softmax(torch.log(self.weights) + self.step_size * self.stream_loss, dim=0)
        return self.weights

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        membership = batch_membership(batch, "drorec")
        grouped = group_losses(losses, membership)
        weights = self.update_weights(grouped.values, grouped.present)
        return group_weighted_sample_weights(weights, membership, grouped.counts).to(losses.dtype)

    def state_dict(self) -> dict:
        return {
            "weights": self.weights.detach().cpu().clone(),
            "stream_loss": self.stream_loss.detach().cpu().clone(),
            "observed": self.observed.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        device = self.weights.device
        self.weights = state["weights"].to(device)
        self.stream_loss = state["stream_loss"].to(device)
        self.observed = state["observed"].to(device)

"""The fairness-method seam: a method owns the optimisation step.

The trainer builds batches and calls :meth:`FairnessMethod.training_step`; everything about how per-sample
losses become an update lives in the method:
- ERM and loss-weighting methods (Reweight, GroupDRO, DRORec, PopDRO, IFairLRS weights) only combine the
  per-sample losses (:class:`LossWeightingMethod`);
- gradient-combining methods (MultiFR, ITFR, BiFair's Frank-Wolfe weighting) compute per-group gradients in
  their own ``training_step``;
- bi-level methods (BiFair) build one optimiser per named parameter set and step them as they need.
State that must survive a resume (e.g. GroupDRO's q) goes through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fairbench.models.base import Batch, Recommender


@dataclass
class TrainContext:
    """What a method may know about the training data when it is set up."""

    n_users: int
    n_items: int
    item_groups: torch.Tensor | None  # [I, G] float membership of the groups the method balances, or None
    group_names: list[str] | None
    item_train_counts: torch.Tensor  # [I] training interactions per item
    steps_per_epoch: int
    max_epochs: int
    lr: float
    weight_decay: float
    #: [P] item of every training pair, in the trainer's pair order (that of ``train.indices``); None for
    #: models trained on whole users
    train_items: torch.Tensor | None = None
    #: [P] float64 timestamp of every training pair (same order), or None when the dataset has none
    train_timestamps: torch.Tensor | None = None


class FairnessMethod:
    """Base class: one Adam optimiser over all trainable parameters, mean loss (ERM)."""

    #: whether batches must carry ``groups`` (membership of each positive item) [B, G]
    needs_groups: bool = False
    #: whether batches must carry ``timestamps`` [B] (float64 time of each training pair)
    needs_timestamps: bool = False

    def setup(self, model: Recommender, context: TrainContext) -> None:
        self.context = context

    def configure_optimizers(self, model: Recommender) -> dict[str, torch.optim.Optimizer]:
        params = [p for group in model.parameter_sets().values() for p in group]
        return {"model": torch.optim.Adam(params, lr=self.context.lr, weight_decay=self.context.weight_decay)}

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        """One update from one batch; returns scalars to log (at least ``loss``)."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called after every training epoch (0-based)."""

    def start_next_phase(self, epoch: int) -> bool:
        """Called when early stopping would end training after ``epoch``; True = the method starts its next
        training phase instead (e.g. BiFair's "Separate" ablation: Z after theta). The trainer then restores
        the best parameters so far and gives the new phase a fresh patience."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - stateless by default
        """Restore what :meth:`state_dict` returned."""


class LossWeightingMethod(FairnessMethod):
    """Methods whose update is the gradient of a weighted mean of per-sample losses."""

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Weights [B] (treated as constants) for the per-sample losses [B]."""
        raise NotImplementedError

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        losses = model.sample_losses(batch)
        weights = self.sample_weights(losses.detach(), batch).detach()
        loss = (weights * losses).mean()
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
        return {"loss": float(losses.detach().mean()), "weighted_loss": float(loss.detach())}

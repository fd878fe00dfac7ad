"""The fairness-method seam: a method decides how per-sample losses become an update.

Two kinds, and the trainer needs no special case for either:
- loss-combining methods (ERM, Reweight, GroupDRO, DRORec, IFairLRS weights) return an *objective* from
  :meth:`FairnessMethod.objective` (:class:`LossWeightingMethod`: a weighted mean of per-sample losses); the
  trainer differentiates it, so gradient accumulation, mixed precision and clipping
  (``trainer.accumulate_grad_batches``, ``trainer.precision``, ``trainer.gradient_clip``) hold for all;
- gradient-combining and bi-level methods (MultiFR, ITFR, PopDRO's trend gradients, BiFair) own the whole
  step in :meth:`FairnessMethod.training_step`: per-group gradients, one optimiser per parameter set.
What a method needs from a model is declared (:meth:`FairnessMethod.required_capabilities`) and checked
against the model's class before any data is loaded (:mod:`fairbench.capabilities`).
State that must survive a resume (e.g. GroupDRO's q) goes through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fairbench.data.groups import group_kind
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
    #: [N, L] history of every next-item training sample (-1 left-padded, in the order of ``train_items``);
    #: None for models trained on pairs or whole users
    train_histories: torch.Tensor | None = None


@dataclass
class Objective:
    """What a loss-combining method returns for one batch: the scalar to differentiate and values to log
    (at least ``loss``, the plain mean of the per-sample losses)."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


class FairnessMethod:
    """Base class: one Adam optimiser over all trainable parameters."""

    #: whether batches must carry ``groups`` (membership of each positive item) [B, G]
    needs_groups: bool = False
    #: whether batches must carry ``timestamps`` [B] (float64 time of each training pair)
    needs_timestamps: bool = False
    #: the item-group kind the method balances, as configured (``method.groups``); None = none
    groups: str | None = None

    @property
    def group_kind(self) -> str | None:
        """The key of the item groups this method balances ("pop" or "genre"), or None."""
        return group_kind(self.groups)

    @property
    def combines_gradients(self) -> bool:
        """True when the method owns the whole step (:meth:`training_step`) instead of an objective."""
        return type(self).objective is FairnessMethod.objective

    def required_capabilities(self) -> dict[str, str]:
        """Model capabilities (:func:`fairbench.models.base.model_capabilities`) this method needs with its
        current options, each with the reason shown when a model lacks it."""
        needs = {}
        if self.needs_groups:
            needs["pair_samples"] = "needs the item group of every training sample"
        if self.needs_timestamps:
            needs["timestamps"] = "needs the time of every training interaction"
        return needs

    def objective(self, model: Recommender, batch: Batch) -> Objective:
        """The objective of one batch (loss-combining methods); the trainer does backward and step."""
        raise NotImplementedError

    def setup(self, model: Recommender, context: TrainContext) -> None:
        self.context = context

    def configure_optimizers(self, model: Recommender) -> dict[str, torch.optim.Optimizer]:
        params = [p for group in model.parameter_sets().values() for p in group]
        return {"model": torch.optim.Adam(params, lr=self.context.lr, weight_decay=self.context.weight_decay)}

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        """One whole update from one batch (gradient-combining methods); returns scalars to log (at least
        ``loss``)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither objective nor training_step")

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

    def objective(self, model: Recommender, batch: Batch) -> Objective:
        """mean_s w_s l_s with the weights w_s = :meth:`sample_weights` held constant."""
        losses = model.sample_losses(batch)
        weights = self.sample_weights(losses.detach().float(), batch).detach()
        loss = (weights * losses).mean()
        return Objective(
            loss, {"loss": float(losses.detach().float().mean()), "weighted_loss": float(loss.detach())}
        )

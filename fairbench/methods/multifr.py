"""MultiFR (Wu et al., TOIS 2022): recommendation and group fairness as objectives of one MGDA problem.

Objectives (BiFair App. B.4 uses group-based losses as the fairness objective): the recommendation loss
L_rec = mean_s l_s and the group losses L_g of the groups present in the batch (``fairness_objective:
per_group``), or their mean (``group_mean``: two tasks, as BiFair's description of MultiFR). Every step
(Sener & Koltun, isl-org/MultiObjectiveOptimization ``train_multi_task.py``):

1. per-objective gradients g_t w.r.t. all trainable parameters (one forward, one backward per objective);
2. normalised gradients g_t / n_t with n_t = L_t ||g_t|| (``loss+``, the repository's sample.json), L_t,
   ||g_t|| or 1;
3. alpha = MGDA min-norm weights of the normalised gradients (:func:`solvers.min_norm_weights`);
4. update with the gradient of sum_t alpha_t L_t (the raw losses), i.e. sum_t alpha_t g_t.

When every sample is in exactly one group (popularity groups), grad L_rec = sum_g (n_g / B) grad L_g is
formed from the group gradients instead of one more backward pass (the same vector, up to rounding).
"""

from __future__ import annotations

from typing import Literal

import torch

from fairbench.methods.base import FairnessMethod
from fairbench.methods.grouping import (
    GroupKind,
    assign_gradient,
    batch_membership,
    flat_gradients,
    group_losses,
    trainable_parameters,
)
from fairbench.methods.solvers import min_norm_weights
from fairbench.models.base import Batch, Recommender

Normalization = Literal["loss+", "loss", "l2", "none"]


def gradient_normalizers(grads: torch.Tensor, losses: torch.Tensor, kind: Normalization) -> torch.Tensor:
    """n_t of ``gradient_normalizers``: loss+ = L_t ||g_t||, loss = L_t, l2 = ||g_t||, none = 1."""
    norms = grads.norm(dim=1)
    if kind == "loss+":
        return losses * norms
    if kind == "loss":
        return losses.clone()
    if kind == "l2":
        return norms
    return torch.ones_like(losses)


class MultiFR(FairnessMethod):
    """MGDA over the recommendation loss and the group losses (see the module docstring)."""

    needs_groups = True

    def __init__(
        self,
        groups: GroupKind = "popularity",
        normalization: Normalization = "loss+",
        fairness_objective: Literal["per_group", "group_mean"] = "per_group",
    ) -> None:
        self.groups, self.normalization, self.fairness_objective = groups, normalization, fairness_objective

    def objective_gradients(
        self, losses: torch.Tensor, membership: torch.Tensor, params: list[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective values [T], raw gradients [T, P]); objective 0 is the recommendation loss."""
        grouped = group_losses(losses, membership)
        present = torch.nonzero(grouped.present).flatten().tolist()
        group_values = [grouped.values[g] for g in present]
        rec = losses.mean()
        if not group_values:
            return rec.detach()[None], flat_gradients([rec], params, retain_graph=False)
        if self.fairness_objective == "group_mean":
            fair = torch.stack(group_values).mean()
            values = torch.stack([rec, fair])
            return values.detach(), flat_gradients([rec, fair], params, retain_graph=False)
        partition = bool((membership.sum(1) == 1).all())
        if partition:
            group_grads = flat_gradients(group_values, params, retain_graph=False)
            shares = (grouped.counts[present] / membership.shape[0]).to(group_grads.dtype)
            grads = torch.cat([(shares @ group_grads)[None], group_grads])
        else:
            grads = flat_gradients([rec, *group_values], params, retain_graph=False)
        return torch.stack([rec, *group_values]).detach(), grads

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        params = trainable_parameters(model)
        losses = model.sample_losses(batch)
        values, grads = self.objective_gradients(losses, batch_membership(batch, "multifr"), params)
        normalizers = gradient_normalizers(grads, values, self.normalization)
        normalized = grads / normalizers.clamp(min=1e-12)[:, None]
        alpha = torch.as_tensor(
            min_norm_weights(normalized @ normalized.T), dtype=grads.dtype, device=grads.device
        )
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        assign_gradient(params, alpha @ grads)
        for optimizer in optimizers.values():
            optimizer.step()
        return {"loss": float(losses.detach().mean()), "rec_weight": float(alpha[0])}

"""ITFR (Wang et al., WWW 2024, "Intersectional Two-sided Fairness in Recommendation"; yfwang2021/ITFR
``src/ITFR.py``), on item groups as in BiFair's comparison.

Every step, from one forward pass:

1. sharpness-aware disadvantaged-group discovery: for every group g in the batch, its gradient grad L_g(w),
   the perturbation e_g = rho grad L_g / ||grad L_g||, and the gradient grad L_g(w + e_g) with its loss
   l_g = L_g(w + e_g) from a forward pass on the group's samples at the perturbed weights (then the weights
   are restored from a saved copy; the source restores from a copy taken only when group 0 is present, a
   stale-copy bug);
2. collaborative loss balance, only when every group is in the batch (else the previous weights are kept):
   RTG_ij = cos(grad L_i(w + e_i), Gbar_j) for i != j, 1 on the diagonal, where Gbar_j is the previous epoch's
   count-weighted sum of the unperturbed gradients of group j; M_ij = sqrt(l_i) sqrt(Lbar_j), M_ii = l_i, with
   Lbar_j the previous epoch's count-weighted mean of l_j. In the first epoch RTG = I (so M * RTG = diag(l)).
   wts = l^gamma / sum l^gamma; x = eta (M * RTG) wts; x -= max x; rwt <- rwt exp(x); rwt <- rwt / sum rwt;
   rwt <- max(rwt, 1e-5);
3. update with sum_g rwt_g grad L_g(w + e_g) over the groups in the batch.

Defaults: rho = 0.05 (BiFair App. B.4), eta = 0.05 and gamma = 0.5 (the source's run.sh for ML-1M). Cost per
step: one forward, then per present group one backward, one forward (on its samples) and one backward.
"""

from __future__ import annotations

import logging

import torch

from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod, TrainContext
from fairbench.methods.grouping import (
    GroupKind,
    assign_gradient,
    batch_membership,
    flat_gradient,
    flat_gradients,
    group_losses,
    load_parameter_vector,
    parameter_vector,
    trainable_parameters,
)
from fairbench.models.base import Batch, Recommender

log = logging.getLogger(__name__)


def collaborative_update(
    weights: torch.Tensor,
    losses: torch.Tensor,
    relation: torch.Tensor,
    previous_losses: torch.Tensor | None,
    eta: float,
    gamma: float,
) -> torch.Tensor:
    """One ITFR weight update (step 2 of the module docstring) from perturbed group losses ``losses`` [G] and
    the cosine matrix ``relation`` [G, G] (identity in the first epoch, ``previous_losses`` None)."""
    root = losses.sqrt()
    if previous_losses is None:
        scaled = torch.outer(root, root) * relation
    else:
        scaled = torch.outer(root, previous_losses.sqrt())
        scaled.diagonal().copy_(losses)
        scaled = scaled * relation
    wts = losses**gamma
    wts = wts / wts.sum()
    exponent = eta * (scaled @ wts)
    exponent = exponent - exponent.max()
    weights = weights * torch.exp(exponent)
    return (weights / weights.sum()).clamp(min=1e-5)


def cosine_relation(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """RTG_ij = cos(current_i, previous_j) for i != j (0 when either is zero), 1 on the diagonal."""
    dots = current @ previous.T
    norms = torch.outer(current.norm(dim=1), previous.norm(dim=1))
    relation = dots / norms.clamp(min=1e-12)
    relation.diagonal().fill_(1.0)
    return relation


class ITFR(FairnessMethod):
    """Sharpness-aware group gradients with collaborative loss balance (see the module docstring)."""

    needs_groups = True

    def __init__(
        self, groups: GroupKind = "popularity", rho: float = 0.05, eta: float = 0.05, gamma: float = 0.5
    ) -> None:
        if rho < 0 or eta < 0:
            raise UserError(f"itfr: rho and eta must be >= 0, got {rho}, {eta}")
        self.groups, self.rho, self.eta, self.gamma = groups, rho, eta, gamma

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        assert context.item_groups is not None
        n_groups, device = context.item_groups.shape[1], context.item_groups.device
        n_params = sum(p.numel() for p in trainable_parameters(model))
        self.weights = torch.full((n_groups,), 1.0 / n_groups, device=device)
        self.grad_sum = torch.zeros(
            n_groups, n_params, device=device
        )  # this epoch's sum_batches n_g grad L_g
        self.loss_sum = torch.zeros(n_groups, device=device)  # this epoch's sum_batches n_g l_g
        self.count_sum = torch.zeros(n_groups, device=device)
        self.previous_grads: torch.Tensor | None = None  # last epoch's grad_sum
        self.previous_losses: torch.Tensor | None = None  # last epoch's count-weighted mean of l_g

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        params = trainable_parameters(model)
        membership = batch_membership(batch, "itfr")
        losses = model.sample_losses(batch)
        grouped = group_losses(losses, membership)
        present = torch.nonzero(grouped.present).flatten().tolist()
        if not present:  # only items in no group: no group objective, no update
            return {"loss": float(losses.detach().mean())}
        grads = flat_gradients([grouped.values[g] for g in present], params, retain_graph=False)
        original = parameter_vector(params)
        perturbed_grads = torch.zeros_like(grads)
        perturbed_losses = torch.zeros(len(present), device=original.device)
        for row, g in enumerate(present):
            grad = grads[row]
            count = grouped.counts[g].to(grad.dtype)
            self.grad_sum[g] += count * grad
            scale = self.rho / (grad.norm() + 1e-12)
            load_parameter_vector(params, original + scale * grad)
            mask = membership[:, g] > 0
            sub_batch = {key: value[mask] for key, value in batch.items()}
            sub_losses = model.sample_losses(sub_batch)
            weights = membership[mask, g].to(sub_losses.dtype)
            perturbed = (weights * sub_losses).sum() / weights.sum()
            perturbed_grads[row] = flat_gradient(perturbed, params, retain_graph=False)
            perturbed_losses[row] = perturbed.detach()
            load_parameter_vector(params, original)
            self.loss_sum[g] += count * perturbed.detach()
            self.count_sum[g] += count
        if len(present) == len(self.weights):
            if self.previous_grads is None:
                relation = torch.eye(len(present), device=original.device)
                previous_losses = None
            else:
                relation = cosine_relation(perturbed_grads, self.previous_grads)
                previous_losses = self.previous_losses
            self.weights = collaborative_update(
                self.weights, perturbed_losses, relation, previous_losses, self.eta, self.gamma
            )
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        assign_gradient(params, self.weights[present] @ perturbed_grads)
        for optimizer in optimizers.values():
            optimizer.step()
        return {"loss": float(losses.detach().mean())}

    def on_epoch_end(self, epoch: int) -> None:
        seen = self.count_sum > 0
        averages = self.loss_sum / self.count_sum.clamp(min=1)
        log.info(
            "itfr epoch %d: group weights %s, mean perturbed group losses %s",
            epoch,
            [round(w, 3) for w in self.weights.tolist()],
            [round(x, 3) if s else None for x, s in zip(averages.tolist(), seen.tolist(), strict=True)],
        )
        if self.previous_losses is None:
            self.previous_losses = averages
        else:  # a group unseen this epoch keeps its previous average
            self.previous_losses = torch.where(seen, averages, self.previous_losses)
        self.previous_grads = self.grad_sum.clone()
        self.grad_sum.zero_()
        self.loss_sum.zero_()
        self.count_sum.zero_()

    def state_dict(self) -> dict:
        state = {
            "weights": self.weights,
            "grad_sum": self.grad_sum,
            "loss_sum": self.loss_sum,
            "count_sum": self.count_sum,
            "previous_grads": self.previous_grads,
            "previous_losses": self.previous_losses,
        }
        return {k: (v.detach().cpu().clone() if v is not None else None) for k, v in state.items()}

    def load_state_dict(self, state: dict) -> None:
        device = self.weights.device
        for key, value in state.items():
            setattr(self, key, value.to(device) if value is not None else None)

"""Per-group losses and gradients shared by the group-fairness methods.

Group loss. ``batch["groups"]`` is the [B, G] membership m_sg of each sample's positive item in group g (0/1;
an item with several genres is in each of them). From one forward pass, the loss of group g is the
membership-weighted mean of the per-sample losses,

    L_g = sum_s m_sg l_s / sum_s m_sg,

so a multi-genre sample counts fully in each of its groups. A group with no sample in the batch is *absent*:
L_g = 0 and ``present[g]`` is False; every method documents what it does then (in short: an absent group is
left out of that step's objective and keeps its previous statistics). Samples whose item is in no group (e.g.
items without a genre under ``missing: exclude``) enter no group loss.

Gradients. Methods that combine per-group gradients take them from the same forward pass, one backward per
group that needs one (``retain_graph``), flattened into rows of a [T, P] matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.models.base import Batch

GroupKind = Literal["popularity", "pop", "genre"]
"""Which item groups a method balances (``method.groups``); the same groups as evaluation builds."""


@dataclass
class GroupLosses:
    """Per-group losses of one batch: ``values`` [G] (0 where absent), ``counts`` [G], ``present`` [G]."""

    values: torch.Tensor
    counts: torch.Tensor
    present: torch.Tensor


def batch_membership(batch: Batch, method: str) -> torch.Tensor:
    """The [B, G] group membership of the batch's positive items (a :class:`UserError` when missing)."""
    if "groups" not in batch:
        raise UserError(f"method {method} needs item groups in every batch; set method.groups")
    return batch["groups"]


def group_losses(losses: torch.Tensor, membership: torch.Tensor) -> GroupLosses:
    """L_g = sum_s m_sg l_s / sum_s m_sg for every group; 0 for groups absent from the batch."""
    counts = membership.sum(0)
    present = counts > 0
    sums = membership.T.to(losses.dtype) @ losses
    values = sums / torch.where(present, counts, torch.ones_like(counts)).to(losses.dtype)
    return GroupLosses(values=values, counts=counts, present=present)


def group_weighted_sample_weights(
    group_weights: torch.Tensor, membership: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Per-sample weights c_s with mean_s(c_s l_s) = sum_g q_g L_g (L_g the membership-weighted means).

    c_s = B * sum_g q_g m_sg / n_g with n_g = sum_s m_sg; absent groups contribute nothing.
    """
    safe = torch.where(counts > 0, counts, torch.ones_like(counts))
    per_group = torch.where(counts > 0, group_weights / safe, torch.zeros_like(group_weights))
    return membership.shape[0] * (membership @ per_group.to(membership.dtype))


def trainable_parameters(model: nn.Module, exclude: Sequence[str] = ()) -> list[nn.Parameter]:
    """The model's trainable parameters, all parameter sets but those named in ``exclude``."""
    sets = model.parameter_sets()  # type: ignore[operator]
    return [p for name, group in sets.items() if name not in exclude for p in group if p.requires_grad]


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one vector (None = zeros shaped as the matching ``like`` tensor)."""
    return torch.cat(
        [
            (t if t is not None else torch.zeros_like(p)).reshape(-1)
            for t, p in zip(tensors, like, strict=True)
        ]
    )


def flat_gradient(
    objective: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool = True
) -> torch.Tensor:
    """grad of a scalar objective w.r.t. ``params``, flattened into one vector [P]."""
    grads = torch.autograd.grad(objective, list(params), retain_graph=retain_graph, allow_unused=True)
    return flatten(grads, params)


def flat_gradients(
    objectives: Sequence[torch.Tensor], params: Sequence[torch.Tensor], retain_graph: bool = True
) -> torch.Tensor:
    """Gradients of several scalar objectives from one graph: a [T, P] matrix, one backward per objective.

    The last backward frees the graph unless ``retain_graph``.
    """
    rows = []
    for index, objective in enumerate(objectives):
        keep = retain_graph or index < len(objectives) - 1
        rows.append(flat_gradient(objective, params, retain_graph=keep))
    if not rows:
        return torch.zeros(0, sum(p.numel() for p in params))
    return torch.stack(rows)


def assign_gradient(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Set ``p.grad`` of every parameter from a flat vector laid out as :func:`flatten` does."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    if offset != flat.numel():
        raise ValueError(f"gradient has {flat.numel()} entries for {offset} parameters")


def parameter_vector(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A detached flat copy of the parameters' values."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@torch.no_grad()
def load_parameter_vector(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Overwrite the parameters' values in place from a flat vector."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def entropy_coefficients(losses: torch.Tensor) -> torch.Tensor:
    """c with -grad H_s(l) = sum_n c_n grad l_n, H_s the entropy of p = softmax(l) (BiFair Eq. 10, App. A).

    c_n = p_n log p_n - p_n sum_i p_i log p_i.
    """
    log_p = torch.log_softmax(losses, dim=0)
    p = log_p.exp()
    return p * log_p - p * (p * log_p).sum()

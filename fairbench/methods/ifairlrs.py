"""IFairLRS reweighting (Jiang et al., "Item-side Fairness of Large Language Model-based Recommendation
System", WWW 2024; public code JiangM-C/IFairLRS ``code/finetune_gen_weight_popularity.py`` and
``code/finetune_gen_weight_loss.py``; METHODS.md 4).

Group weights, counted once before training over the next-item training samples (history items vs target
items; ``get_history_bias`` in the public code):

    h_g = sum_s sum_{j in hist(s)} m_jg,   t_g = sum_s m_{target(s), g},
    w_g = (h_g / sum_g' h_g') / (t_g / sum_g' t_g'),

with m the item-group membership (popularity quintiles: one group per item; genres: multi-hot, an item counts
once in each of its genres). A sample's weight is the mean of w_g over its target's groups (the public
code's ``get_train_weight`` for genres); a target in no group keeps weight 1 (the public code divides by
zero there). A group without target items gets w_g = 0 (no sample uses it); a group with target items but no
history items gets w_g = 0, as the formula gives.

Loss (``reduction``):

- ``per_sample`` (the paper's intent, default): L = 1/B sum_s w_s l_s, l_s = the token-mean cross-entropy of
  sample s's response (the model's per-sample losses);
- ``public_code``: the public ``compute_loss``, ``mean(weights * mean(ce))``, whose inner mean runs over every
  shifted position of the right-padded micro-batch (prompt and padding positions have label -100 and
  contribute 0). With n_s the response tokens of sample s and W the padded width (Hugging Face's
  ``DataCollatorForSeq2Seq(pad_to_multiple_of=8)``: the longest sample rounded up to a multiple of 8), that
  is exactly

      L = mean_s(w_s) * sum_s n_s l_s / (B (W - 1)),

  computed here from the model's per-sample losses and its tokenised training samples (n_s, lengths), i.e.
  per-sample weighting collapses to the batch's mean weight times a padding-diluted token mean.

Works with every model that trains on next-item samples (``bigrec``; ``sasrec`` with ``per_sample``, where
l_s is its per-sample loss); ``public_code`` needs an instruction-tuned LM's tokens (``bigrec``).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from fairbench.errors import UserError
from fairbench.methods.base import LossWeightingMethod, Objective, TrainContext
from fairbench.methods.grouping import GroupKind, batch_membership
from fairbench.models.base import Batch, Recommender

log = logging.getLogger(__name__)

Reduction = Literal["per_sample", "public_code"]
REDUCTIONS = ("per_sample", "public_code")
#: the public code's collator pads every micro-batch to a multiple of 8 tokens
PUBLIC_PAD_MULTIPLE = 8


def history_target_weights(
    histories: torch.Tensor, targets: torch.Tensor, membership: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w [G], h [G], t [G]): w_g = (h_g / sum h) / (t_g / sum t), 0 where t_g = 0.

    ``histories`` [N, L] item indices (-1 = padding), ``targets`` [N], ``membership`` [I, G] (0/1, float).
    """
    n_items = membership.shape[0]
    items = histories[histories >= 0].long()
    item_hist = torch.bincount(items.cpu(), minlength=n_items).to(membership)
    item_target = torch.bincount(targets.long().cpu(), minlength=n_items).to(membership)
    hist, target = item_hist @ membership, item_target @ membership
    if hist.sum() <= 0:
        raise UserError(
            "method=ifairlrs: the training samples' histories hold no item of any group, so the history "
            "shares are undefined; use more training samples or another method.groups"
        )
    has_target = target > 0
    share_target = target / target.sum().clamp(min=1)
    safe = torch.where(has_target, share_target, torch.ones_like(share_target))
    weights = torch.where(has_target, (hist / hist.sum()) / safe, torch.zeros_like(hist))
    return weights, hist, target


def mean_group_weight(membership: torch.Tensor, group_weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weight [B]: mean of w_g over the groups of each sample's target; 1 for no group."""
    membership = membership.to(group_weights.dtype)
    n_groups = membership.sum(1)
    mean = (membership @ group_weights) / n_groups.clamp(min=1)
    return torch.where(n_groups > 0, mean, torch.ones_like(mean))


def response_token_counts(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """n_s [N]: positions of sample s whose (shifted) label counts, i.e. labels != -100 after the first
    token (the first token is never predicted)."""
    counted = (labels != -100).astype(np.int64)
    counted[offsets[:-1][np.diff(offsets) > 0]] = 0
    cumulative = np.concatenate([[0], np.cumsum(counted)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def public_code_loss(
    losses: torch.Tensor, weights: torch.Tensor, response_tokens: torch.Tensor, width: int
) -> torch.Tensor:
    """mean(w) * sum_s n_s l_s / (B (W - 1)): the public code's ``mean(weights * mean(ce))`` with the inner
    mean over all B x (W - 1) shifted positions of a micro-batch padded to width W."""
    batch = losses.shape[0]
    token_sum = (response_tokens.to(losses.dtype) * losses).sum()
    return weights.mean() * token_sum / (batch * max(width - 1, 1))


def padded_width(lengths: np.ndarray, multiple: int = PUBLIC_PAD_MULTIPLE) -> int:
    """The longest length rounded up to a multiple of ``multiple`` (the public code's collator)."""
    longest = int(lengths.max()) if len(lengths) else 0
    return -(-longest // multiple) * multiple


class IFairLRS(LossWeightingMethod):
    """IFairLRS sample reweighting (see the module docstring)."""

    needs_groups = True

    def __init__(self, groups: GroupKind = "popularity", reduction: Reduction = "per_sample") -> None:
        if groups is None:
            raise UserError("method.groups: ifairlrs reweights by item groups; choose popularity or genre")
        if reduction not in REDUCTIONS:
            raise UserError(f"method.reduction={reduction!r}: choose per_sample or public_code")
        self.groups, self.reduction = groups, reduction
        self.group_kind  # noqa: B018 - validates groups now (one message, exit 2)

    def required_capabilities(self) -> dict[str, str]:
        needs = super().required_capabilities()
        needs["sequential"] = "counts history vs target items of next-item training samples"
        return needs

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        assert context.item_groups is not None and context.train_items is not None
        if context.train_histories is None:
            raise UserError(
                "method=ifairlrs needs next-item training samples with histories "
                "(dataset/protocol=sequential and a model that trains on them, e.g. model=bigrec or sasrec)"
            )
        weights, hist, target = history_target_weights(
            context.train_histories, context.train_items, context.item_groups.float()
        )
        self.group_weights = weights.to(context.item_groups.device)
        names = context.group_names or [str(g) for g in range(len(weights))]
        log.info(
            "ifairlrs (%s groups, %s): group weights %s (history shares %s, target shares %s)",
            self.groups,
            self.reduction,
            dict(zip(names, [round(w, 4) for w in weights.tolist()], strict=True)),
            [round(x, 4) for x in (hist / hist.sum()).tolist()],
            [round(x, 4) for x in (target / target.sum().clamp(min=1)).tolist()],
        )
        if self.reduction == "public_code":
            tokens = getattr(model, "train_tokens", None)
            if tokens is None or not hasattr(tokens, "labels"):
                raise UserError(
                    f"method.reduction=public_code reproduces a token-level LM loss, but model "
                    f"{type(model).__name__} has no tokenised instruction samples; use "
                    "method.reduction=per_sample (or model=bigrec)"
                )
            self.response_tokens = torch.from_numpy(response_token_counts(tokens.labels, tokens.offsets))
            self.lengths = tokens.lengths

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        membership = batch_membership(batch, "ifairlrs")
        return mean_group_weight(membership, self.group_weights).to(losses.dtype)

    def objective(self, model: Recommender, batch: Batch) -> Objective:
        if self.reduction == "per_sample":
            return super().objective(model, batch)
        losses = model.sample_losses(batch)
        weights = self.sample_weights(losses.detach().float(), batch).detach()
        index = batch["sample_index"].cpu().numpy()
        counts = self.response_tokens[index].to(losses.device)
        loss = public_code_loss(losses, weights, counts, padded_width(self.lengths[index]))
        return Objective(
            loss, {"loss": float(losses.detach().float().mean()), "weighted_loss": float(loss.detach())}
        )

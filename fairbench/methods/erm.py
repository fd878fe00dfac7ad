"""Empirical risk minimisation: the plain mean of per-sample losses (no fairness intervention)."""

from __future__ import annotations

import torch

from fairbench.methods.base import LossWeightingMethod
from fairbench.methods.grouping import GroupKind
from fairbench.models.base import Batch


class ERM(LossWeightingMethod):
    """L = 1/B sum_s l_s.

    ``groups`` is accepted so that a sweep can set ``method.groups`` for every method; ERM ignores the groups
    (with ``groups: null`` none are built for it).
    """

    def __init__(self, groups: GroupKind | None = None) -> None:
        self.groups = groups

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return torch.ones_like(losses)

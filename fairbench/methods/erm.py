"""Empirical risk minimisation: the plain mean of per-sample losses (no fairness intervention)."""

from __future__ import annotations

import torch

from fairbench.methods.base import LossWeightingMethod
from fairbench.models.base import Batch


class ERM(LossWeightingMethod):
    """L = 1/B sum_s l_s."""

    def sample_weights(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        return torch.ones_like(losses)

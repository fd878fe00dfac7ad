"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
SIGIR 2020).

Free ID embeddings E^0 of users and items are smoothed over the normalised user-item graph,
E^(k+1) = D^-1/2 A D^-1/2 E^(k), and the final representation is the layer mean (1 / (L+1)) sum_k E^(k)
(Eq. 8 with alpha_k = 1 / (L+1)). Scores, losses and the L2 penalty on E^0 are MF's
(:mod:`fairbench.models.mf`), BPR by default as in the paper (Eq. 15). Propagation is a sparse-dense
product, no dense U x I matrix.
"""

from __future__ import annotations

from typing import Literal

import scipy.sparse as sp
import torch

from fairbench.errors import UserError
from fairbench.models.base import normalized_adjacency, propagate
from fairbench.models.mf import MF


class LightGCN(MF):
    """MF with LightGCN propagation of the embeddings (see the module docstring)."""

    def __init__(
        self,
        train: sp.csr_matrix,
        embed_dim: int = 64,
        n_layers: int = 2,
        loss: Literal["bpr", "infonce"] = "bpr",
        num_negatives: int | None = None,
        tau: float = 0.1,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__(train, embed_dim, loss, num_negatives, tau, reg_weight)
        if n_layers < 0:
            raise UserError(f"model.n_layers must be >= 0, got {n_layers}")
        self.n_layers = n_layers
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)

    def ego_embeddings(self) -> torch.Tensor:
        """E^0: user rows then item rows, [U + I, d]."""
        return torch.cat([self.user_embedding, self.item_embedding])

    def split(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Node rows [U + I, d] -> (users [U, d], items [I, d])."""
        return nodes[: self.n_users], nodes[self.n_users :]

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(propagate(self.adjacency, self.ego_embeddings(), self.n_layers))

"""XSimGCL (Yu et al., "XSimGCL: Towards Extremely Simple Graph Contrastive Learning for Recommendation",
TKDE 2023).

LightGCN without graph augmentation: during training every propagation layer adds a small random
perturbation, E^(k) = A E^(k-1) + eps * sign(E^(k)) * normalize(Delta), Delta ~ U[0, 1) (Eq. 14), and the
final representation is the mean of layers 1..L (the input layer E^0 is skipped, as SimGCL/XSimGCL do).
The contrastive views are the final representation and the layer l* one (cross-layer contrast, Eq. 15):
L = L_rec + cl_weight * (InfoNCE over the batch's distinct users + over its distinct items), in-batch
negatives, temperature cl_tau (:func:`fairbench.models.sgl.contrastive_shares`, which also explains the
per-sample shares). Ranking uses the unperturbed propagation. Defaults follow the authors' SELFRec
setting (lambda 0.2, eps 0.2, tau 0.15, l* = 1; SELFRec ``conf/XSimGCL.yaml``). The noise comes from a
generator seeded by the trainer for every epoch, so training and resuming are deterministic.
"""

from __future__ import annotations

from typing import Literal

import scipy.sparse as sp
import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.models.base import Batch, seeded_generator, sparse_mm
from fairbench.models.lightgcn import LightGCN
from fairbench.models.sgl import contrastive_shares


class XSimGCL(LightGCN):
    """LightGCN with noise-perturbed layers and cross-layer contrast (see the module docstring)."""

    def __init__(
        self,
        train: sp.csr_matrix,
        embed_dim: int = 64,
        n_layers: int = 2,
        eps: float = 0.2,
        cl_weight: float = 0.2,
        cl_tau: float = 0.15,
        cl_layer: int = 1,
        loss: Literal["bpr", "infonce"] = "bpr",
        num_negatives: int | None = None,
        tau: float = 0.1,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__(train, embed_dim, n_layers, loss, num_negatives, tau, reg_weight)
        if n_layers < 1:
            raise UserError(f"model.n_layers must be >= 1 for XSimGCL, got {n_layers}")
        if not 1 <= cl_layer <= n_layers:
            raise UserError(f"model.cl_layer must be in [1, n_layers={n_layers}], got {cl_layer}")
        if eps < 0 or cl_tau <= 0 or cl_weight < 0:
            raise UserError(
                "model.eps and model.cl_weight must be >= 0 and model.cl_tau > 0, "
                f"got {eps}, {cl_weight}, {cl_tau}"
            )
        self.eps, self.cl_weight, self.cl_tau, self.cl_layer = eps, cl_weight, cl_tau, cl_layer
        self.generator: torch.Generator | None = None

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        self.generator = seeded_generator(seed, self.user_embedding.device)

    def perturbed_propagation(self, perturb: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of layers 1..L, layer cl_layer), both [U + I, d]; noise is added only when ``perturb``."""
        layer = self.ego_embeddings()
        layers = []
        for _ in range(self.n_layers):
            layer = sparse_mm(self.adjacency, layer)
            if perturb:
                noise = torch.rand(layer.shape, generator=self.generator, device=layer.device)
                layer = layer + torch.sign(layer) * nn.functional.normalize(noise, dim=-1) * self.eps
            layers.append(layer)
        return torch.stack(layers).mean(dim=0), layers[self.cl_layer - 1]

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.perturbed_propagation(perturb=False)[0])

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        if self.generator is None:  # called outside the trainer: seed from the global torch RNG
            self.on_epoch_start(0, int(torch.randint(0, 2**31 - 1, (1,))))
        final, contrast_layer = self.perturbed_propagation(perturb=True)
        users, items = self.split(final)
        losses = self.recommendation_losses(users, items, batch)
        if self.cl_weight == 0:
            return losses
        layer_users, layer_items = self.split(contrast_layer)
        contrast = contrastive_shares(users, layer_users, batch["users"], self.cl_tau)
        contrast = contrast + contrastive_shares(items, layer_items, batch["pos_items"], self.cl_tau)
        return losses + self.cl_weight * contrast

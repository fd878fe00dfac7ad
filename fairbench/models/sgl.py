"""SGL (Wu et al., "Self-supervised Graph Learning for Recommendation", SIGIR 2021), edge-dropout variant.

LightGCN plus a contrastive task between two augmented views of the graph. At the start of every epoch two
subgraphs are drawn, each keeping a random (1 - drop_ratio) share of the training edges (SGL-ED, Eq. 4), and
renormalised as D^-1/2 A D^-1/2; both views propagate the same embeddings E^0 with LightGCN. For the distinct
users of a batch (and, separately, its distinct positive items) the InfoNCE between the views is

    l_n = -log( exp(cos(z'_n, z''_n) / tau) / sum_m exp(cos(z'_n, z''_m) / tau) ),  m over the batch's nodes

(SGL Eq. 9-10 with in-batch negatives, as SELFRec's and AlphaRec's SGL), and the objective is
L = L_rec + cl_weight * (mean_users l + mean_items l). Defaults are SGL's published setting (drop ratio
0.1, cl_weight 0.1, tau 0.2; SELFRec README). Views are built once per epoch with sparse operations from a
generator seeded by the trainer for that epoch, so training and resuming are deterministic.

Per-sample losses: sample s = (u, i) carries its rec loss plus its *share* of the two contrastive means:
l_u * B / (c_u * |U_b|) with c_u the count of u in the batch (same for items), so that the batch mean of the
per-sample losses equals the published objective exactly (ERM is SGL), while a method that reweights
samples also reweights the contrastive terms of their users and items.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.models.base import Batch, normalized_adjacency, propagate, seeded_generator
from fairbench.models.lightgcn import LightGCN


def contrastive_shares(
    view1: torch.Tensor, view2: torch.Tensor, nodes: torch.Tensor, tau: float
) -> torch.Tensor:
    """Per-sample shares of the cross-view InfoNCE over the distinct ``nodes`` of a batch, shape [B].

    view1, view2: [N, d] representations of all nodes in two views; nodes: [B] node index of each sample.
    With D the distinct nodes and l_n = -log softmax_m(cos(view1_n, view2_m) / tau)[n] over m in D, sample s
    gets l_{n_s} * B / (c_{n_s} * |D|), c_n = occurrences of n, so that mean_s(share_s) = mean_{n in D} l_n.
    """
    distinct, inverse, counts = torch.unique(nodes, return_inverse=True, return_counts=True)
    anchors = nn.functional.normalize(view1[distinct], dim=-1)
    targets = nn.functional.normalize(view2[distinct], dim=-1)
    logits = anchors @ targets.T / tau
    per_node = torch.logsumexp(logits, dim=1) - logits.diagonal()
    return per_node[inverse] * (len(nodes) / (counts[inverse] * len(distinct)))


def edge_dropout_adjacency(
    train: sp.coo_matrix, drop_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Normalised adjacency of a subgraph keeping int(nnz * (1 - drop_ratio)) training edges drawn uniformly
    without replacement (SGL-ED; SELFRec ``edge_dropout``), as a sparse [U + I, U + I] tensor."""
    n_keep = int(train.nnz * (1 - drop_ratio))
    keep = torch.randperm(train.nnz, generator=generator)[:n_keep].numpy()
    kept = sp.csr_matrix(
        (np.ones(n_keep, dtype=np.float32), (train.row[keep], train.col[keep])), shape=train.shape
    )
    return normalized_adjacency(kept)


class SGL(LightGCN):
    """LightGCN + InfoNCE between two edge-dropout views rebuilt every epoch (see the module docstring)."""

    def __init__(
        self,
        train: sp.csr_matrix,
        embed_dim: int = 64,
        n_layers: int = 2,
        drop_ratio: float = 0.1,
        cl_weight: float = 0.1,
        cl_tau: float = 0.2,
        loss: Literal["bpr", "infonce"] = "bpr",
        num_negatives: int | None = None,
        tau: float = 0.1,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__(train, embed_dim, n_layers, loss, num_negatives, tau, reg_weight)
        if not 0 <= drop_ratio < 1:
            raise UserError(f"model.drop_ratio must be in [0, 1), got {drop_ratio}")
        if cl_tau <= 0 or cl_weight < 0:
            raise UserError(f"model.cl_tau must be > 0 and model.cl_weight >= 0, got {cl_tau}, {cl_weight}")
        self.drop_ratio, self.cl_weight, self.cl_tau = drop_ratio, cl_weight, cl_tau
        self.train_coo = sp.coo_matrix(train)
        self.views: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        generator = seeded_generator(seed)  # on CPU: the subgraphs are assembled with scipy
        device = self.user_embedding.device
        self.views = tuple(  # type: ignore[assignment]
            edge_dropout_adjacency(self.train_coo, self.drop_ratio, generator).to(device) for _ in range(2)
        )

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        if self.views is None:  # called outside the trainer: draw views from the global torch RNG
            self.on_epoch_start(0, int(torch.randint(0, 2**31 - 1, (1,))))
        users, items = self.embeddings()
        losses = self.recommendation_losses(users, items, batch)
        if self.cl_weight == 0:
            return losses
        ego = self.ego_embeddings()
        view1_users, view1_items = self.split(propagate(self.views[0], ego, self.n_layers))
        view2_users, view2_items = self.split(propagate(self.views[1], ego, self.n_layers))
        contrast = contrastive_shares(view1_users, view2_users, batch["users"], self.cl_tau)
        contrast = contrast + contrastive_shares(view1_items, view2_items, batch["pos_items"], self.cl_tau)
        return losses + self.cl_weight * contrast

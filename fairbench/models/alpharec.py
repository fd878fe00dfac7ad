"""AlphaRec (Sheng et al., "Language Representations Can be What Recommenders Need", 2024).

Item vectors z_i come from a frozen LM; a user's vector is the mean of its training items' vectors. One MLP
(d -> h -> embed_dim, LeakyReLU) maps users and items into the recommendation space, LightGCN propagation
over the normalised user-item graph follows, and scores are cosine similarities. Training: InfoNCE with
uniformly sampled negatives. Source: LehengTHU/AlphaRec ``models/General/AlphaRec.py``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.models.base import normalized_adjacency, propagate
from fairbench.models.text_vectors import TextVectorRecommender


def alpharec_hidden_multiplier(lm_dim: int) -> float:
    """AlphaRec's hidden-width multiplier, chosen to keep the projector's size similar across LMs.

    AlphaRec uses 8 for 768-d encoders (BERT/RoBERTa), 2 for 1536-d, 1/2 for 3072-d and 9/32 for 4096-d.
    Encoders of at most 1024 dimensions (e.g. 384-d MiniLM) take 8, the rule of the smallest published case.
    """
    if lm_dim <= 1024:
        return 8.0
    if lm_dim <= 1536:
        return 2.0
    if lm_dim <= 3072:
        return 0.5
    return 9 / 32


class AlphaRec(TextVectorRecommender):
    """MLP projector + LightGCN over frozen LM vectors, cosine scores, InfoNCE (see module docstring)."""

    def __init__(
        self,
        train: sp.csr_matrix,
        item_vectors: np.ndarray,
        embed_dim: int = 64,
        hidden_dim: int | None = None,
        hidden_multiplier: float | None = None,
        n_layers: int = 2,
        tau: float = 0.15,
        num_negatives: int = 256,
        trainable_text_vectors: bool = False,
    ) -> None:
        super().__init__()
        n_users, n_items = train.shape
        if item_vectors.shape[0] != n_items:
            raise ValueError(f"item_vectors has {item_vectors.shape[0]} rows for {n_items} items")
        self.n_users, self.n_items = n_users, n_items
        self.n_layers, self.tau, self.num_negatives = n_layers, tau, num_negatives
        lm_dim = int(item_vectors.shape[1])
        if hidden_dim is None:
            multiplier = (
                hidden_multiplier if hidden_multiplier is not None else alpharec_hidden_multiplier(lm_dim)
            )
            hidden_dim = int(multiplier * lm_dim)
        self.hidden_dim = hidden_dim
        self.projector = nn.Sequential(
            nn.Linear(lm_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, embed_dim)
        )
        self.register_buffer("adjacency", normalized_adjacency(train), persistent=False)
        self.init_text_vectors(train, item_vectors, trainable_text_vectors)

    def propagate_encoding(self, encoding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LightGCN over the normalised graph, mean of layers 0..n_layers (AlphaRec ``compute``)."""
        out = propagate(self.adjacency, encoding, self.n_layers)
        return out[: self.n_users], out[self.n_users :]

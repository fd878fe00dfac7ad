"""Linear mapping of language representations (Sheng et al., "Language Representations Can be What
Recommenders Need", 2024, Sec. 2; BiFair's "Linear").

e_i = W z_i and e_u = W z_u with one bias-free matrix W [embed_dim, d]: z_i are frozen LM vectors of the item
texts and z_u is the mean of the user's training items' vectors. Scores are cosine similarities, the loss is
InfoNCE with uniformly sampled negatives; i.e. AlphaRec with a linear projector and no graph propagation
(LehengTHU/AlphaRec ``AlphaRec.py``, ``model_version='homo'``: ``nn.Linear(d, 64, bias=False)``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from torch import nn

from fairbench.errors import UserError
from fairbench.models.text_vectors import TextVectorRecommender


class Linear(TextVectorRecommender):
    """A bias-free linear map from LM space to the recommendation space (see the module docstring).

    As a :class:`TextVectorRecommender` it supports trainable LM item vectors (BiFair) and PopDRO's score
    adjustment like AlphaRec; its encoding is already the final embedding (no propagation).
    """

    def __init__(
        self,
        train: sp.csr_matrix,
        item_vectors: np.ndarray,
        embed_dim: int = 64,
        tau: float = 0.15,
        num_negatives: int = 256,
        trainable_text_vectors: bool = False,
    ) -> None:
        super().__init__()
        n_items = train.shape[1]
        if item_vectors.shape[0] != n_items:
            raise ValueError(f"item_vectors has {item_vectors.shape[0]} rows for {n_items} items")
        if embed_dim < 1 or tau <= 0 or num_negatives < 1:
            raise UserError(
                f"model.embed_dim and model.num_negatives must be >= 1 and model.tau > 0, "
                f"got {embed_dim}, {num_negatives}, {tau}"
            )
        self.tau, self.num_negatives = tau, num_negatives
        self.projector = nn.Linear(int(item_vectors.shape[1]), embed_dim, bias=False)
        self.init_text_vectors(train, item_vectors, trainable_text_vectors)

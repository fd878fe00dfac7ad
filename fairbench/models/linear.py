"""Linear mapping of language representations (Sheng et al., "Language Representations Can be What
Recommenders Need", 2024, Sec. 2; BiFair's "Linear").

e_i = W z_i and e_u = W z_u with one bias-free matrix W [embed_dim, d]: z_i are frozen LM vectors of the item
texts and z_u is the mean of the user's training items' vectors. Scores are cosine similarities, the loss is
InfoNCE with uniformly sampled negatives; i.e. AlphaRec with a linear projector and no graph propagation
(LehengTHU/AlphaRec ``AlphaRec.py``, ``model_version='homo'``: ``nn.Linear(d, 64, bias=False)``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.models.alpharec import user_mean_vectors
from fairbench.models.base import Batch, Recommender, sampled_info_nce


class Linear(Recommender):
    """A bias-free linear map from LM space to the recommendation space (see the module docstring)."""

    uses_text_vectors = True

    def __init__(
        self,
        train: sp.csr_matrix,
        item_vectors: np.ndarray,
        embed_dim: int = 64,
        tau: float = 0.15,
        num_negatives: int = 256,
    ) -> None:
        super().__init__()
        n_users, n_items = train.shape
        if item_vectors.shape[0] != n_items:
            raise ValueError(f"item_vectors has {item_vectors.shape[0]} rows for {n_items} items")
        if embed_dim < 1 or tau <= 0 or num_negatives < 1:
            raise UserError(
                f"model.embed_dim and model.num_negatives must be >= 1 and model.tau > 0, "
                f"got {embed_dim}, {num_negatives}, {tau}"
            )
        self.n_users, self.n_items = n_users, n_items
        self.tau, self.num_negatives = tau, num_negatives
        self.projector = nn.Linear(int(item_vectors.shape[1]), embed_dim, bias=False)
        item_z = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
        self.register_buffer("item_text_vectors", item_z, persistent=False)
        self.register_buffer("user_text_vectors", user_mean_vectors(train, item_z), persistent=False)

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        return {"projector": list(self.projector.parameters())}

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected user [U, e] and item [I, e] representations."""
        return self.projector(self.user_text_vectors), self.projector(self.item_text_vectors)

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        users, items = self.embeddings()
        return sampled_info_nce(
            users, items, batch["users"], batch["pos_items"], batch["neg_items"], self.tau
        )

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            users, items = self.embeddings()
            users = nn.functional.normalize(users, dim=-1)
            items_t = nn.functional.normalize(items, dim=-1).T.contiguous()
        return lambda user_index: users[user_index] @ items_t

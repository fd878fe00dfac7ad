"""Small random interaction data for unit tests of models, training and methods."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from fairbench.models.alpharec import AlphaRec


def random_train(n_users: int = 30, n_items: int = 40, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    """A binary CSR [n_users, n_items] with each cell set with probability ``density`` and at least one
    item per user."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1
    return sp.csr_matrix(dense)


def tiny_alpharec() -> tuple[AlphaRec, dict[str, torch.Tensor]]:
    """A float64 AlphaRec (6 users, 8 items, trainable LM vectors) and one batch with two item groups."""
    rng = np.random.default_rng(0)
    dense = (rng.random((6, 8)) < 0.4).astype(np.float32)
    dense[np.arange(6), np.arange(6)] = 1
    torch.manual_seed(0)
    model = AlphaRec(
        sp.csr_matrix(dense),
        rng.normal(size=(8, 4)).astype(np.float32),
        hidden_dim=5,
        embed_dim=3,
        num_negatives=3,
        trainable_text_vectors=True,
    ).double()
    batch = {
        "users": torch.tensor([0, 1, 2, 3, 4, 5]),
        "pos_items": torch.tensor([0, 1, 2, 3, 4, 5]),
        "neg_items": torch.tensor([[6, 7, 1]] * 6),
        "groups": torch.tensor([[1, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]], dtype=torch.float64),
    }
    return model, batch

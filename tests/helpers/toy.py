"""Small random interaction data for unit tests of models, training and methods."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def random_train(n_users: int = 30, n_items: int = 40, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    """A binary CSR [n_users, n_items] with each cell set with probability ``density`` and at least one
    item per user."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1
    return sp.csr_matrix(dense)

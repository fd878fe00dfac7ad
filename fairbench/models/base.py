"""The recommender seam every fairness method and the trainer rely on.

A recommender
- names its trainable parameter sets (:meth:`parameter_sets`), e.g. ``projector`` and ``item_text_vectors``;
- returns one loss per training sample (:meth:`sample_losses`), so methods can weight or group them;
- scores all items for a batch of users (:meth:`scorer`) for full ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

Batch = dict[str, torch.Tensor]
"""A training batch: ``users`` [B], ``pos_items`` [B], optional ``neg_items`` [B, N] and ``groups`` [B, G].

Models with ``batch_unit = "user"`` (MultVAE) get ``users`` [B] only: one sample is one user's whole row.
"""


class Recommender(nn.Module):
    """Base class of fairbench recommenders."""

    #: whether the pipeline must compute LM item vectors and pass them as ``item_vectors``
    uses_text_vectors: bool = False
    #: sampled negatives per (user, positive) the trainer attaches to each batch as ``neg_items``
    num_negatives: int = 0
    #: what one training sample is: a (user, positive item) pair, or a user with all its training items
    batch_unit: Literal["pair", "user"] = "pair"
    #: users per step for ``batch_unit == "user"``; None = ``trainer.batch_size`` users
    users_per_batch: int | None = None

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        """Called by the trainer before every training epoch (0-based).

        ``seed`` is a function of (run seed, epoch) only. Models with their own randomness (graph views,
        noise, dropout) draw it from a generator seeded with it (:func:`seeded_generator`), so a run resumed
        from a checkpoint is identical to the uninterrupted run.
        """

    def on_train_step(self, global_step: int) -> None:
        """Called by the trainer before every optimisation step; ``global_step`` counts steps from 0."""

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by name; the default is one set with everything."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        """Per-sample training losses, shape [B]."""
        raise NotImplementedError

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function mapping user indices [B] to scores over all items [B, I] (computed in eval mode)."""
        raise NotImplementedError


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (a model's own random stream)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def normalized_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    """Symmetrically normalised bipartite adjacency D^-1/2 A D^-1/2 over (users + items) nodes.

    A = [[0, R], [R^T, 0]] with R the binary training matrix (LightGCN, He et al. 2020, Eq. 7), as a sparse
    COO tensor of shape [U + I, U + I]. Isolated nodes keep zero rows.
    """
    n_users, n_items = train.shape
    r = sp.csr_matrix(train, dtype=np.float32)
    adj = sp.bmat([[None, r], [r.T, None]], format="coo", dtype=np.float32)
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    values = inv_sqrt[adj.row] * adj.data * inv_sqrt[adj.col]
    indices = torch.from_numpy(np.vstack([adj.row, adj.col]).astype(np.int64))
    size = (n_users + n_items, n_users + n_items)
    return torch.sparse_coo_tensor(indices, torch.from_numpy(values), size, check_invariants=False).coalesce()


def propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN propagation: mean of E, AE, ..., A^L E (He et al. 2020, Eq. 8 with alpha_k = 1/(L+1))."""
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(torch.sparse.mm(adjacency, layers[-1]))
    return torch.stack(layers, dim=0).mean(dim=0)


def info_nce(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample sampled-softmax (InfoNCE) loss on cosine similarities.

    l = -log( exp(cos(u, p)/tau) / (exp(cos(u, p)/tau) + sum_n exp(cos(u, n)/tau)) ),
    as AlphaRec's ``forward`` (LehengTHU/AlphaRec models/General/AlphaRec.py), computed with logsumexp.
    Shapes: user, pos [B, d]; neg [B, N, d]; returns [B].
    """
    user = nn.functional.normalize(user, dim=-1)
    pos = nn.functional.normalize(pos, dim=-1)
    neg = nn.functional.normalize(neg, dim=-1)
    pos_logit = (user * pos).sum(-1, keepdim=True) / tau
    neg_logit = torch.einsum("bd,bnd->bn", user, neg) / tau
    return _nce_from_logits(pos_logit, neg_logit)


def sampled_info_nce(
    users: torch.Tensor,
    items: torch.Tensor,
    batch_users: torch.Tensor,
    pos_items: torch.Tensor,
    neg_items: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """:func:`info_nce` for index batches over full embedding tables users [U, d] and items [I, d].

    Same value, cheaper evaluation: item embeddings are normalised once, and when the catalogue is smaller
    than N*d the negative logits are gathered from the [B, I] score block instead of materialising the
    [B, N, d] tensor of negative embeddings (whose backward pass dominates the step otherwise).
    """
    user = nn.functional.normalize(users[batch_users], dim=-1)
    items_n = nn.functional.normalize(items, dim=-1)
    pos_logit = (user * items_n[pos_items]).sum(-1, keepdim=True) / tau
    n_negatives, dim = neg_items.shape[1], items.shape[1]
    if items.shape[0] < n_negatives * dim:
        neg_logit = (user @ items_n.T).gather(1, neg_items) / tau
    else:
        neg_logit = torch.einsum("bd,bnd->bn", user, items_n[neg_items]) / tau
    return _nce_from_logits(pos_logit, neg_logit)


def _nce_from_logits(pos_logit: torch.Tensor, neg_logit: torch.Tensor) -> torch.Tensor:
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return torch.logsumexp(logits, dim=1) - logits[:, 0]

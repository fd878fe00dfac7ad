"""Recommenders over LM text vectors (AlphaRec, Linear): item vectors Z, user vectors as means of Z, a
trainable projector, and the two options fairness methods use: trainable Z (BiFair) and a score adjustment
(PopDRO). Source of the user means: LehengTHU/AlphaRec ``models/General/AlphaRec.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.models.base import Batch, Recommender, sampled_info_nce, sparse_mm

ScoreAdjustment = Callable[[torch.Tensor, "torch.Tensor | None", "Batch | None"], torch.Tensor]
"""f(similarity, items, batch) -> adjusted similarity. ``similarity`` [B, K] are cosine similarities of the
users with ``items`` [B, K] (None = all items in index order, when ranking); ``batch`` is the training batch,
or None when ranking."""


class TextVectorRecommender(Recommender):
    """Recommenders over LM text vectors: item vectors Z [I, d] and user vectors z_u = mean of Z over u's
    training items (AlphaRec), mapped by a trainable ``projector`` whose first layer is linear.

    The forward pass has two stages that fairness methods may use separately:
    :meth:`encode` gives the projector's output R for [users; items] (the representation every group loss
    shares), and :meth:`losses_from_encoding` the per-sample losses from R (graph propagation, if any, then
    InfoNCE). Since the first layer is linear and z_u = M Z (M = D_u^-1 R the sparse mean operator), the
    users' first-layer outputs are computed as M (Z W1^T) + b1: the same values without passing the users
    through the widest matmul.

    Two options used by fairness methods:
    - trainable Z (:meth:`set_text_vectors_trainable`, BiFair): Z becomes the ``nn.Parameter`` of parameter
      set ``item_text_vectors`` (gradients reach Z through the users' means too). Off by default: Z is a
      frozen buffer, as in AlphaRec.
    - ``score_adjustment`` (PopDRO's popularity-aware score): applied to the cosine similarities before the
      InfoNCE temperature in training, and to the ranking scores.
    """

    uses_text_vectors = True
    supports_score_adjustment = True
    tau: float
    projector: nn.Module

    def init_text_vectors(self, train: sp.csr_matrix, item_vectors: np.ndarray, trainable: bool) -> None:
        item_z = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
        self.n_users, self.n_items = train.shape
        self.register_buffer("item_text_vectors", item_z, persistent=False)
        self.register_buffer("user_mean_operator", user_mean_operator(train), persistent=False)
        self.score_adjustment: ScoreAdjustment | None = None
        self._trainable_text_vectors = False
        if trainable:
            self.set_text_vectors_trainable(True)

    @property
    def text_vectors_trainable(self) -> bool:
        return self._trainable_text_vectors

    def set_text_vectors_trainable(self, trainable: bool = True) -> None:
        """Make Z a trainable parameter (keeping its current values), or freeze it again."""
        if trainable == self.text_vectors_trainable:
            return
        z = self.item_text_vectors.detach().clone()
        del self.item_text_vectors
        self._trainable_text_vectors = trainable
        if trainable:
            self.item_text_vectors = nn.Parameter(z)
        else:
            self.register_buffer("item_text_vectors", z, persistent=False)

    def text_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User [U, d] (means of their items' Z) and item [I, d] text vectors."""
        return sparse_mm(self.user_mean_operator, self.item_text_vectors), self.item_text_vectors

    def text_vector_parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        """``{"item_text_vectors": [Z]}`` when Z is trainable, else empty."""
        return {"item_text_vectors": [self.item_text_vectors]} if self.text_vectors_trainable else {}

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        return {"projector": list(self.projector.parameters())} | self.text_vector_parameter_sets()

    def encode(self) -> torch.Tensor:
        """The projector's output R [U + I, e] for [users; items], first layer applied to items only."""
        layers = list(self.projector) if isinstance(self.projector, nn.Sequential) else [self.projector]
        first = layers[0]
        if not isinstance(first, nn.Linear):
            raise TypeError(f"the projector's first layer must be nn.Linear, got {type(first).__name__}")
        item_linear = nn.functional.linear(self.item_text_vectors, first.weight)
        user_linear = sparse_mm(self.user_mean_operator, item_linear)
        out = torch.cat([user_linear, item_linear])
        if first.bias is not None:
            out = out + first.bias
        for layer in layers[1:]:
            out = layer(out)
        return out

    def propagate_encoding(self, encoding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """User [U, e] and item [I, e] embeddings from the encoding R (default: no propagation)."""
        return encoding[: self.n_users], encoding[self.n_users :]

    def losses_from_encoding(self, encoding: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample losses [B] from the encoding R (the part of the forward pass after the projector)."""
        return self.info_nce_losses(*self.propagate_encoding(encoding), batch)

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        return self.losses_from_encoding(self.encode(), batch)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [U, e] and item [I, e] embeddings."""
        return self.propagate_encoding(self.encode())

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            users, items = self.embeddings()
        return self.cosine_scorer(users, items)

    def info_nce_losses(self, users: torch.Tensor, items: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample InfoNCE on the (adjusted) cosine similarities of the batch's users and items."""
        if self.score_adjustment is None:
            return sampled_info_nce(
                users, items, batch["users"], batch["pos_items"], batch["neg_items"], self.tau
            )
        user = nn.functional.normalize(users[batch["users"]], dim=-1)
        items_n = nn.functional.normalize(items, dim=-1)
        pos_items, neg_items = batch["pos_items"][:, None], batch["neg_items"]
        pos = (user * items_n[batch["pos_items"]]).sum(-1, keepdim=True)
        if items.shape[0] < neg_items.shape[1] * items.shape[1]:
            neg = (user @ items_n.T).gather(1, neg_items)
        else:
            neg = torch.einsum("bd,bnd->bn", user, items_n[neg_items])
        pos = self.score_adjustment(pos, pos_items, batch)
        neg = self.score_adjustment(neg, neg_items, batch)
        logits = torch.cat([pos, neg], dim=1) / self.tau
        return torch.logsumexp(logits, dim=1) - logits[:, 0]

    def cosine_scorer(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Ranking scores: cosine similarities of user and item embeddings, then any score adjustment."""
        with torch.no_grad():
            users = nn.functional.normalize(users, dim=-1)
            items_t = nn.functional.normalize(items, dim=-1).T.contiguous()
        adjust = self.score_adjustment
        if adjust is None:
            return lambda user_index: users[user_index] @ items_t
        return lambda user_index: adjust(users[user_index] @ items_t, None, None)


def user_mean_operator(train: sp.csr_matrix) -> torch.Tensor:
    """Sparse [U, I] operator M = D_u^-1 R: M Z = the users' mean item vectors (zero rows for no items)."""
    r = sp.csr_matrix(train, dtype=np.float32)
    counts = np.asarray(r.sum(axis=1)).ravel()
    inv = np.divide(1.0, counts, out=np.zeros_like(counts, dtype=np.float64), where=counts > 0)
    coo = (sp.diags(inv.astype(np.float32)) @ r).tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=False).coalesce()

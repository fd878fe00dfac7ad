"""Matrix factorisation (Koren et al., "Matrix Factorization Techniques for Recommender Systems", 2009).

Scores are dot products of free user and item embeddings, s(u, i) = e_u . e_i. Two training losses:
- ``bpr`` (Rendle et al. 2009): l = mean_n -log sigmoid(s(u, p) - s(u, n)) over the sampled negatives n
  (one by default, as LightGCN's and AlphaRec's MF baselines);
- ``infonce``: the sampled softmax of AlphaRec/BiFair (BiFair Sec. 4.3.3: InfoNCE, 256 negatives) on
  cosine similarities with temperature tau; the model then also ranks by cosine similarity (AlphaRec's
  ``train_norm``/``pred_norm`` pair), so that training and ranking agree.
Both add the L2 penalty of LightGCN (He et al. 2020, Eq. 15) on the batch's input embeddings, per
sample: reg_weight / 2 * (|e_u|^2 + |e_p|^2 + mean_n |e_n|^2) (LightGCN-PyTorch ``bpr_loss``; AlphaRec
``MF.forward``).

:class:`MF` is also the base of the graph models (LightGCN, SGL, XSimGCL): they only change
:meth:`MF.embeddings`, the representations that the loss and the ranking use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import scipy.sparse as sp
import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.models.base import Batch, Recommender, sampled_info_nce

#: sampled negatives per positive when ``num_negatives`` is not given
DEFAULT_NEGATIVES = {"bpr": 1, "infonce": 256}


def bpr_losses(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Per-sample BPR loss mean_n -log sigmoid(pos - neg_n) = mean_n softplus(neg_n - pos).

    Shapes: pos_scores [B], neg_scores [B, N]; returns [B]. softplus is the overflow-free form of
    -log sigmoid (the 1e-10 that LightGCN's code adds inside the log only guards that overflow).
    """
    return nn.functional.softplus(neg_scores - pos_scores[:, None]).mean(dim=1)


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise :class:`UserError` naming ``model.<name>`` unless ``value`` > 0 (or >= 0)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"model.{name} must be {bound}, got {value}")


class MF(Recommender):
    """Free user/item embeddings, dot-product (BPR) or cosine (InfoNCE) scores; see the module docstring."""

    def __init__(
        self,
        train: sp.csr_matrix,
        embed_dim: int = 64,
        loss: Literal["bpr", "infonce"] = "bpr",
        num_negatives: int | None = None,
        tau: float = 0.1,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__()
        if loss not in DEFAULT_NEGATIVES:
            raise UserError(f"model.loss must be one of {sorted(DEFAULT_NEGATIVES)}, got {loss!r}")
        check_positive("embed_dim", embed_dim)
        check_positive("tau", tau)
        check_positive("reg_weight", reg_weight, allow_zero=True)
        if num_negatives is not None:
            check_positive("num_negatives", num_negatives)
        self.n_users, self.n_items = train.shape
        self.loss, self.tau, self.reg_weight = loss, tau, reg_weight
        self.num_negatives = num_negatives if num_negatives is not None else DEFAULT_NEGATIVES[loss]
        # Xavier initialisation (LightGCN paper Sec. 4.1.2; SELFRec and RecBole use the uniform variant)
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, embed_dim)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embed_dim)))

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        return {"user_embeddings": [self.user_embedding], "item_embeddings": [self.item_embedding]}

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [U, d] and item [I, d] representations (MF: the embeddings themselves)."""
        return self.user_embedding, self.item_embedding

    def recommendation_losses(self, users: torch.Tensor, items: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample BPR or InfoNCE loss on representations users [U, d], items [I, d], plus the L2 term."""
        batch_users, pos_items, neg_items = batch["users"], batch["pos_items"], batch["neg_items"]
        if self.loss == "infonce":
            losses = sampled_info_nce(users, items, batch_users, pos_items, neg_items, self.tau)
        else:
            user = users[batch_users]
            pos_scores = (user * items[pos_items]).sum(-1)
            neg_scores = torch.einsum("bd,bnd->bn", user, items[neg_items])
            losses = bpr_losses(pos_scores, neg_scores)
        return losses + self.l2_penalty(batch)

    def l2_penalty(self, batch: Batch) -> torch.Tensor:
        """reg_weight / 2 * (|e_u|^2 + |e_p|^2 + mean_n |e_n|^2) on the input embeddings, shape [B]."""
        if self.reg_weight == 0:
            return torch.zeros(len(batch["users"]), device=self.user_embedding.device)
        squared = self.user_embedding[batch["users"]].pow(2).sum(-1)
        squared = squared + self.item_embedding[batch["pos_items"]].pow(2).sum(-1)
        squared = squared + self.item_embedding[batch["neg_items"]].pow(2).sum(-1).mean(-1)
        return 0.5 * self.reg_weight * squared

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        users, items = self.embeddings()
        return self.recommendation_losses(users, items, batch)

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            users, items = self.embeddings()
            if self.loss == "infonce":
                users, items = nn.functional.normalize(users, dim=-1), nn.functional.normalize(items, dim=-1)
            users, items_t = users.detach(), items.detach().T.contiguous()
        return lambda user_index: users[user_index] @ items_t

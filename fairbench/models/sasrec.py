"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

A history of item indices s_1..s_T (oldest to newest, left-padded with -1) is embedded as

    E_t = sqrt(d) * M[s_t] + P[t],      M [I + 1, d] item embeddings (row 0 = padding), P [max_len, d],

then dropout, and padding positions are set to zero. ``n_blocks`` blocks follow, each (paper Sec. III-C,
g(x) = x + Dropout(g(LayerNorm(x))), the "Pre-LN" block of pmixer/SASRec.pytorch with ``norm_first``):

    x = x + Attention(LN(x) W_Q, LN(x) W_K, LN(x) W_V)    causal, scaled dot product, ``n_heads`` heads
    x = x + Dropout(ReLU(LN(x) W_1 + b_1) W_2 + b_2)      point-wise feed-forward (dropout after ReLU too)
    x = x * mask                                           padding positions back to zero

and a last LayerNorm (eps 1e-8 everywhere, as both public codes). Attention weights are dropped out after the
softmax (both codes); there is no output projection (paper Eq. 2 and kang205/SASRec ``multihead_attention``).
Position t attends to positions <= t that hold an item, and to itself, so padding never reaches an item's
position, and a history of only padding still gives finite scores (its last hidden state is the last
LayerNorm's bias). The author's TensorFlow code (kang205/SASRec ``model.py``) normalises only the queries
and adds the residual to the normalised input; the paper's form, used here, normalises the block input once.
Position embeddings count from the right end: the newest item always has position ``max_len - 1``, as with
the public codes' left-padded sequences of length ``max_len``; longer histories keep their last items.

The score of item i after a history is the last position's hidden state F_T dotted with its embedding,
r_i = F_T . M[i + 1] (shared input/output embedding, paper Sec. III-D). Training losses per sample:

- ``ce`` (default; as e.g. RecBole's ``loss_type=CE``): full-softmax cross-entropy over all items
  of the last position, l = -log softmax(r)_target;
- ``bce`` (the paper and both public codes): every item position t of the history is trained to predict the
  next item (the history's next item, or the target at the last position) against one sampled negative,
  l = mean_t [-log sigmoid(F_t . M[pos_t]) - log(1 - sigmoid(F_t . M[neg_t]))]. Negatives are uniform over
  the items outside the sample's own history and target (the codes exclude the user's whole training
  sequence; a sample here knows only its window), redrawn up to 20 times. Note that the original trains on
  one row per user, while a sequential-protocol sample is one sliding window, so with ``bce`` a transition
  is seen by up to ``max_len`` windows.

fairbench's defaults: 2 blocks, 1 head, hidden 64, dropout 0.2 (the paper: 0.2 on
MovieLens-1M, 0.5 on the sparse datasets), max length = the protocol's ``history_length`` (BIGRec's 10).
The codes' optimiser is Adam lr 1e-3 (beta2 0.98), batches of 128, and no L2 (``l2_emb`` 0; see
``trainer.weight_decay``). Weight matrices and embeddings are Xavier-normal (pmixer/SASRec.pytorch), biases
and LayerNorms PyTorch's defaults. Dropout masks and ``bce`` negatives come from a generator seeded by the
trainer for every epoch (:meth:`on_epoch_start`), so training and resuming are deterministic. Dropout acts
in training mode only (``model.train()``), never in :meth:`score_histories`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from fairbench.data.types import InteractionData
from fairbench.errors import UserError
from fairbench.models.base import Batch, Recommender, seeded_generator

LOSSES = ("ce", "bce")
Dropout = Callable[[torch.Tensor], torch.Tensor]
#: rounds of redrawing a ``bce`` negative that hit the sample's own items
NEGATIVE_REDRAWS = 20


def check_interaction_data(data: object, model: str) -> InteractionData:
    """``data`` if it is an :class:`InteractionData`; a clear error for what Hydra may hand over instead.

    :func:`fairbench.runtime.build` hands run-time objects to the constructor unchanged; a plain
    ``hydra.utils.instantiate(node, data=data)`` would turn the dataclass into a DictConfig.
    """
    if not isinstance(data, InteractionData):
        raise TypeError(
            f"{model} needs data: InteractionData, got {type(data).__name__} (build the model with "
            "fairbench.runtime.build, which passes run-time objects unchanged)"
        )
    return data


def sequential_samples_length(data: InteractionData, what: str) -> int:
    """The protocol's ``history_length``; a :class:`UserError` naming ``what`` when there are no samples."""
    if not data.samples or "train" not in data.samples:
        raise UserError(
            f"{what} needs next-item samples: use dataset/protocol=sequential (dataset {data.name} has none)"
        )
    return data.samples["train"].history_length


class SelfAttentionBlock(nn.Module):
    """One Pre-LN SASRec block: causal multi-head self-attention and a point-wise feed-forward network."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.forward_norm = nn.LayerNorm(dim, eps=1e-8)
        self.inner, self.outer = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, drop: Dropout) -> torch.Tensor:
        """x [B, T, d]; allowed [B, T, T] (query, key) bool; ``drop`` applies dropout to a tensor."""
        batch, length, dim = x.shape
        h = self.attention_norm(x)

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, heads, T, d / heads]
            return t.view(batch, length, self.n_heads, dim // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.query(h)), heads(self.key(h)), heads(self.value(h))
        logits = q @ k.transpose(-1, -2) / math.sqrt(dim // self.n_heads)
        weights = torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), dim=-1)
        attended = (drop(weights) @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + attended
        return x + drop(self.outer(drop(torch.relu(self.inner(self.forward_norm(x))))))


class SASRec(Recommender):
    """Causal self-attention over the item history, dot-product scores (see the module docstring)."""

    batch_unit = "sample"
    needs_training = True

    def __init__(
        self,
        data: InteractionData,
        hidden_dim: int = 64,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
        max_len: int | None = None,
        loss: Literal["ce", "bce"] = "ce",
    ) -> None:
        super().__init__()
        data = check_interaction_data(data, "SASRec")
        history_length = sequential_samples_length(data, "model=sasrec")
        if loss not in LOSSES:
            raise UserError(f"model.loss must be one of {list(LOSSES)}, got {loss!r}")
        for name, value in (("hidden_dim", hidden_dim), ("n_blocks", n_blocks), ("n_heads", n_heads)):
            if value < 1:
                raise UserError(f"model.{name} must be >= 1, got {value}")
        if hidden_dim % n_heads:
            raise UserError(f"model.hidden_dim={hidden_dim} must be a multiple of model.n_heads={n_heads}")
        if not 0 <= dropout < 1:
            raise UserError(f"model.dropout must be in [0, 1), got {dropout}")
        if max_len is not None and max_len < 1:
            raise UserError(f"model.max_len must be >= 1 or null (= history_length), got {max_len}")
        self.n_items = data.n_items
        self.hidden_dim, self.dropout, self.loss = hidden_dim, dropout, loss
        self.max_len = max_len if max_len is not None else history_length
        self.item_embedding = nn.Embedding(self.n_items + 1, hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len, hidden_dim)
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden_dim, n_heads) for _ in range(n_blocks))
        self.last_norm = nn.LayerNorm(hidden_dim, eps=1e-8)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_normal_(parameter)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.generator: torch.Generator | None = None

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        items = self.item_embedding.weight
        return {"item_embeddings": [items], "encoder": [p for p in self.parameters() if p is not items]}

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        self.generator = seeded_generator(seed, self.item_embedding.weight.device)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.dropout
        return x * keep / (1 - self.dropout)

    def hidden_states(self, history: torch.Tensor, drop: bool) -> torch.Tensor:
        """F [B, T, d] for item histories [B, L] (-1 = padding; the last T = min(L, max_len) positions)."""
        history = history[:, -self.max_len :].to(self.item_embedding.weight.device, torch.long)
        length = history.shape[1]
        real = history >= 0
        mask = real.unsqueeze(-1).to(self.item_embedding.weight.dtype)
        if drop and self.dropout > 0:
            if self.generator is None:  # called outside the trainer: seed from the global torch RNG
                self.on_epoch_start(0, int(torch.randint(0, 2**31 - 1, (1,))))
            dropout = self._dropout
        else:
            dropout = nn.Identity()
        positions = torch.arange(self.max_len - length, self.max_len, device=history.device)
        x = self.item_embedding(history.clamp(min=-1) + 1) * math.sqrt(self.hidden_dim)
        x = dropout(x + self.position_embedding(positions)) * mask
        eye = torch.eye(length, dtype=torch.bool, device=history.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        allowed = (causal & real[:, None, :]) | eye  # [B, query, key]: earlier items, and itself
        for block in self.blocks:
            x = block(x, allowed, dropout) * mask
        return self.last_norm(x)

    def item_weights(self) -> torch.Tensor:
        """Output item embeddings [I, d] (the input table without its padding row)."""
        return self.item_embedding.weight[1:]

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        history, target = batch["history"], batch["pos_items"]
        hidden = self.hidden_states(history, drop=self.training)
        history = history[:, -self.max_len :].to(hidden.device, torch.long)
        target = target.to(hidden.device, torch.long)
        if self.loss == "ce":
            logits = hidden[:, -1] @ self.item_weights().T
            return nn.functional.cross_entropy(logits, target, reduction="none")
        return self.bce_losses(hidden, history, target)

    def bce_losses(self, hidden: torch.Tensor, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The original objective on all positions with one sampled negative each, per sample [B]."""
        positives = torch.cat([history[:, 1:], target[:, None]], dim=1).long()
        counted = history >= 0
        counted[:, -1] = True  # the target always counts (also after a history of only padding)
        negatives = self.sample_negatives(torch.cat([history, target[:, None]], dim=1), positives.shape)
        table = self.item_weights()
        pos_logits = (hidden * table[positives.clamp(min=0)]).sum(-1)
        neg_logits = (hidden * table[negatives]).sum(-1)
        per_position = nn.functional.softplus(-pos_logits) + nn.functional.softplus(neg_logits)
        counted = counted.to(per_position.dtype)
        return (per_position * counted).sum(1) / counted.sum(1)

    def sample_negatives(self, sequence: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Uniform items [B, T] outside each row of ``sequence`` [B, T + 1] (redrawn up to 20 times)."""
        if self.generator is None:
            self.on_epoch_start(0, int(torch.randint(0, 2**31 - 1, (1,))))
        device = sequence.device
        negatives = torch.randint(0, self.n_items, shape, generator=self.generator, device=device)
        for _ in range(NEGATIVE_REDRAWS):
            hit = (negatives[:, :, None] == sequence[:, None, :]).any(-1)
            if not hit.any():
                break
            redrawn = torch.randint(0, self.n_items, shape, generator=self.generator, device=device)
            negatives = torch.where(hit, redrawn, negatives)
        return negatives

    def score_histories(self, history: torch.Tensor) -> torch.Tensor:
        """Scores [B, I] of every item after each history [B, L] (no dropout, no gradient)."""
        with torch.no_grad():
            return self.hidden_states(history, drop=False)[:, -1] @ self.item_weights().T

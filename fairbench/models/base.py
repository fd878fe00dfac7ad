"""The recommender seam every fairness method, the trainer and the ranking stage rely on.

A recommender
- names its trainable parameter sets (:meth:`parameter_sets`), e.g. ``projector`` and ``item_text_vectors``;
- returns one loss per training sample (:meth:`sample_losses`), so methods can weight or group them;
- says what one training sample is (``batch_unit``): a (user, positive item) pair, a user's whole row, or a
  next-item sample (history, target) of the sequential protocol; the trainer builds batches accordingly;
- ranks items for evaluation rows (:mod:`fairbench.evaluation`) in one of two ways: it scores all items
  (:meth:`scorer` for users, :meth:`score_histories` for sequential samples: full ranking with masking),
  or it recommends top-K lists itself (``recommend(rows, k)``, e.g. generate a title and ground it);
- declares which of its state is trained (:meth:`trainable_state_dict`): checkpoints and the best-state copy
  hold that only (a LoRA adapter, not the frozen LLM under it).
What a model can do is summarised by :func:`model_capabilities`; methods and post-processors declare what
they require, and :mod:`fairbench.capabilities` checks the two before any data is loaded.
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
    #: what one training sample is: a (user, positive item) pair, a user with all its training items, or a
    #: next-item sample of the sequential protocol (batches carry ``history`` [B, L] and the target as
    #: ``pos_items``; the model needs ``data.samples``)
    batch_unit: Literal["pair", "user", "sample"] = "pair"
    #: users per step for ``batch_unit == "user"``; None = ``trainer.batch_size`` users
    users_per_batch: int | None = None
    #: False for models without trainable parameters (MostPop): the trainer does not run
    needs_training: bool = True
    #: whether a method may set ``score_adjustment`` (PopDRO's popularity-aware scores)
    supports_score_adjustment: bool = False

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

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint and the best-state copy must hold to restore training exactly.

        Default: the whole ``state_dict`` (small recommenders). A model over a frozen LLM returns its adapter
        only; :meth:`load_trainable_state_dict` must accept exactly what this returns.
        """
        return self.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`trainable_state_dict` returned."""
        self.load_state_dict(state)


def model_capabilities(model: type[Recommender] | Recommender) -> frozenset[str]:
    """What a recommender class can do, from its declarations (no instance, no data needed):

    - ``pair_samples``: every training sample has one positive item (group labels per sample exist);
    - ``timestamps``: training samples are interactions with their own time (pair batches);
    - ``text_vectors``: consumes LM item vectors; ``trainable_text_vectors``: they can be trained (BiFair Z);
    - ``encoding_split``: ``encode`` / ``losses_from_encoding`` (representation-space gradients);
    - ``score_adjustment``: accepts a score adjustment (PopDRO);
    - ``full_ranking``: scores all items (``scorer`` or ``score_histories``); ``recommend``: returns top-K
      lists itself; ``sequential``: trains and ranks on next-item samples; ``grounding``: its rankings carry
      the generated texts' vectors for re-grounding (generate-and-ground models);
    - ``token_losses``: a language model over target tokens: ``token_losses(batch) -> ([B, T] per-token
      cross-entropy, [B, T] mask)``, ``target_log_probs(split, context)`` with or without the user's history
      in the prompt, and ``reference_model(adapter)`` (GDRT's token groups, the language-bias diagnostic).
    """
    cls = model if isinstance(model, type) else type(model)
    caps = set()
    if cls.batch_unit in ("pair", "sample"):
        caps.add("pair_samples")
    if cls.batch_unit == "pair":
        caps.add("timestamps")
    if cls.batch_unit == "sample":
        caps.add("sequential")
    if cls.uses_text_vectors:
        caps.add("text_vectors")
    if callable(getattr(cls, "set_text_vectors_trainable", None)):
        caps.add("trainable_text_vectors")
    if callable(getattr(cls, "encode", None)) and callable(getattr(cls, "losses_from_encoding", None)):
        caps.add("encoding_split")
    if cls.supports_score_adjustment:
        caps.add("score_adjustment")
    overrides_scorer = cls.scorer is not Recommender.scorer
    if overrides_scorer or callable(getattr(cls, "score_histories", None)):
        caps.add("full_ranking")
    if callable(getattr(cls, "recommend", None)):
        caps.add("recommend")
    if getattr(cls, "grounds_generations", False):
        caps.add("grounding")
    if all(
        callable(getattr(cls, name, None)) for name in ("token_losses", "target_log_probs", "reference_model")
    ):
        caps.add("token_losses")
    return frozenset(caps)


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


def sparse_mm(sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``sparse @ dense`` in the sparse matrix's dtype (float32), outside autocast: autocast would run the
    product in bf16, and torch's sparse-dense product has no mixed-dtype backward; the cast's backward
    returns the gradient in the dense input's dtype (e.g. a projector's bf16 output)."""
    with torch.autocast(device_type=dense.device.type, enabled=False):
        return torch.sparse.mm(sparse, dense.to(sparse.dtype))


def propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN propagation: mean of E, AE, ..., A^L E (He et al. 2020, Eq. 8 with alpha_k = 1/(L+1))."""
    layers = [embeddings.to(adjacency.dtype)]
    for _ in range(n_layers):
        layers.append(sparse_mm(adjacency, layers[-1]))
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

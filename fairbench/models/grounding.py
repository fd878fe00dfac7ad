"""Grounding generated text to catalogue items (BIGRec, METHODS.md 3): embed, rank all items by L2 distance.

BIGRec (``data/embedding.ipynb``, ``data/movie/evaluate.py``): the generated title (first beam, quotes
stripped) and every item title (quotes stripped) are embedded with the *base* LLM as the last layer's hidden
state at the last token, left padding, and items are ranked by ``torch.cdist(p=2)``. Popularity-adjusted
grounding follows ``data/movie/adjust_pda.py`` (see :func:`ground_topk`).

Difference from BIGRec, on purpose: position ids are ``cumsum(mask) - 1`` (what ``generate`` uses), so a
left-padded text gets the same positions as unpadded and its vector does not depend on its batch; BIGRec's
forward call passed none, so padded rows saw shifted positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from fairbench.errors import UserError

if TYPE_CHECKING:
    import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists -> (ids [B, T] int64, mask [B, T] int64), padded on the left to the longest row."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[mask] = flat  # row-major order of the mask matches the concatenation order
    return ids, mask.astype(np.int64)


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def last_token_embeddings(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """z(x) = h_L(x)[last token]: the last layer's hidden state at each text's last token, float32 [N, d].

    Texts are tokenised once with the tokenizer's own special tokens (a BOS where the model uses one), sorted
    by length (longest first), left-padded per batch, run in eval mode under inference mode, and put back in
    input order; the result is on CPU. A text with no tokens (an empty generation on a model without BOS) is
    embedded as the EOS token. Wrap the call in :func:`fairbench.backbones.causal_lm.adapters_disabled` to
    embed with the base model of a LoRA model, as BIGRec grounds.
    """
    import torch

    from fairbench.backbones.causal_lm import accepts_logits_to_keep, eval_mode

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"grounding batch_size must be an integer >= 1, got {batch_size!r}.")
    texts = list(texts)
    if not texts:
        return torch.empty((0, int(model.config.hidden_size)), dtype=torch.float32)
    encoded = tokenizer(texts, truncation=max_length is not None, max_length=max_length, padding=False)[
        "input_ids"
    ]
    eos = int(tokenizer.eos_token_id)
    encoded = [row if len(row) else [eos] for row in encoded]
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    order = np.argsort(
        -np.fromiter((len(r) for r in encoded), dtype=np.int64, count=len(encoded)), kind="stable"
    )
    device = model_device(model)
    output = torch.empty((len(texts), int(model.config.hidden_size)), dtype=torch.float32)
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}  # skip the unused LM head
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = left_pad([encoded[r] for r in rows], pad)
            ids_t = torch.from_numpy(ids).to(device)
            mask_t = torch.from_numpy(mask).to(device)
            positions = (mask_t.cumsum(dim=1) - 1).clamp(min=0)
            out = model(
                input_ids=ids_t,
                attention_mask=mask_t,
                position_ids=positions,
                output_hidden_states=True,
                use_cache=False,
                **extra,
            )
            output[torch.from_numpy(rows)] = out.hidden_states[-1][:, -1].float().cpu()
    return output


def normalised_popularity(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """p_i = (c_i - min c) / (max c - min c) over all items, float32 [I] (all 0 if all counts are equal).

    BIGRec ``adjust_pda.py`` first divides the counts by their sum; min-max normalisation cancels that.
    """
    import torch

    c = torch.as_tensor(np.asarray(counts, dtype=np.float64) if not torch.is_tensor(counts) else counts)
    c = c.to(torch.float64)
    if c.ndim != 1 or len(c) == 0:
        raise UserError(
            f"item popularity must be a non-empty 1-D array of counts, got shape {tuple(c.shape)}."
        )
    span = c.max() - c.min()
    p = (c - c.min()) / span if span > 0 else torch.zeros_like(c)
    return p.to(torch.float32)


def _exclusion_rows(exclude: Any, start: int, stop: int, n_items: int, device: Any) -> torch.Tensor | None:
    """Dense bool [stop - start, I] block of the exclusion mask (a CSR matrix or a bool tensor/array)."""
    import torch

    if exclude is None:
        return None
    if sp.issparse(exclude):
        block = sp.csr_matrix(exclude[start:stop])
        dense = torch.zeros((stop - start, n_items), dtype=torch.bool)
        rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        dense[torch.from_numpy(rows), torch.from_numpy(block.indices.astype(np.int64))] = True
        return dense.to(device)
    return torch.as_tensor(exclude[start:stop], dtype=torch.bool, device=device)


def ground_topk(
    query_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    batch_size: int = 1024,
    popularity: np.ndarray | torch.Tensor | None = None,
    gamma: float = 0.0,
    exclude: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest items of each query: (item indices [n, k] int64, scores [n, k] float32), best first.

    Plain grounding (gamma = 0): score = d(q, z_i) = ||q - z_i||_2 (``torch.cdist``), smaller is better.
    Popularity-adjusted grounding (BIGRec ``data/movie/adjust_pda.py``), gamma != 0:

        d~(q, i) = (d(q, i) - min_j d(q, j)) / (max_j d(q, j) - min_j d(q, j))     (per query, over all items)
        score(q, i) = (1 + p_i)^(-gamma) * d~(q, i),  p = :func:`normalised_popularity` (training counts)

    so gamma > 0 favours popular items. A query whose distances are all equal gets d~ = 0. ``exclude`` (a
    scipy CSR matrix or bool array [n, I]; True = never recommend, e.g. the sample's history) is applied after
    the normalisation, so normalisation is over all items as in BIGRec. Ties go to the lower item index
    (stable sort). Work is done one batch of queries at a time: no tensor larger than [batch_size, I].
    """
    import torch

    queries = torch.as_tensor(query_vectors)
    items = torch.as_tensor(item_vectors)
    if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise UserError(
            f"grounding: query vectors {tuple(queries.shape)} and item vectors {tuple(items.shape)} must be "
            "[n, d] and [I, d] with the same d (embed both with the same backbone)."
        )
    n_items = items.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_items:
        raise UserError(f"grounding k must be an integer in [1, {n_items}] (the number of items), got {k!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"grounding batch_size must be an integer >= 1, got {batch_size!r}.")
    if exclude is not None and tuple(exclude.shape) != (queries.shape[0], n_items):
        raise UserError(
            f"grounding exclude mask has shape {tuple(exclude.shape)}, "
            f"expected ({queries.shape[0]}, {n_items})."
        )
    items = items.float()
    factor = None
    if gamma != 0:
        if popularity is None:
            raise UserError("grounding gamma != 0 needs the items' training popularity counts.")
        p = normalised_popularity(popularity)
        if len(p) != n_items:
            raise UserError(f"grounding popularity has {len(p)} entries for {n_items} items.")
        factor = torch.pow(1.0 + p, -float(gamma)).to(items.device)  # [I]
    top_items = torch.empty((queries.shape[0], k), dtype=torch.int64)
    top_scores = torch.empty((queries.shape[0], k), dtype=torch.float32)
    for start in range(0, queries.shape[0], batch_size):
        stop = min(start + batch_size, queries.shape[0])
        scores = torch.cdist(queries[start:stop].to(items.device).float(), items, p=2)  # [b, I]
        if factor is not None:
            low = scores.min(dim=1, keepdim=True).values
            span = scores.max(dim=1, keepdim=True).values - low
            scores = torch.where(
                span > 0, (scores - low) / span.clamp(min=torch.finfo(scores.dtype).tiny), 0.0
            )
            scores = scores * factor
        mask = _exclusion_rows(exclude, start, stop, n_items, scores.device)
        if mask is not None:
            scores = scores.masked_fill(mask, float("inf"))
        sorted_scores, order = torch.sort(scores, dim=1, stable=True)
        top_items[start:stop] = order[:, :k].cpu()
        top_scores[start:stop] = sorted_scores[:, :k].cpu()
    return top_items, top_scores

"""Full ranking: top-K items per user over the whole catalogue, with seen items masked (METHODS 2.1)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from fairbench.errors import UserError
from fairbench.metrics._inputs import PADDING

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

TIE_CHUNK_ENTRIES = 1 << 22
"""Tied rows are resolved in chunks of about this many scores, so the tie path adds a few MiB, not blocks."""


def full_ranking_topk(
    score_fn: ScoreFn,
    users: np.ndarray,
    exclude: sp.spmatrix,
    k: int,
    batch_size: int = 1024,
    progress: bool = False,
) -> np.ndarray:
    """int64 [len(users), k]: each user's k best items, best first, padded with -1.

    ``score_fn(LongTensor[B]) -> Tensor[B, I]`` scores a batch of users against all items. Items stored in
    ``exclude[u]`` (training history for validation; train + valid for test) and items scored -inf are
    never returned; a user with fewer than k such rankable items gets -1 in the remaining positions. NaN
    scores raise ValueError.

    Order: score descending, ties broken by the lower item index. Each row of the result is a function of
    that user's score row alone (``select_topk``), so it does not depend on ``batch_size`` as long as
    ``score_fn`` gives every user the same scores in any batch. Runs under ``torch.inference_mode``, on the
    device of the scores, with one [B, I] block alive at a time: the float32/float64 inference tensor that a
    scorer computes is masked in place and its masked entries are written back after the selection; other
    blocks (stored tensors, half precision, integers) are masked in a copy (``_masked_topk``). The scores
    that ``score_fn`` returns are never left modified.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"ranking cut-off k={k!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"evaluation batch_size={batch_size!r} must be a positive integer")
    users = np.asarray(users)
    if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
        raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} dtype {users.dtype}")
    exclude = sp.csr_matrix(exclude)
    n_users, n_items = exclude.shape
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"users hold indices outside [0, {n_users}) of the exclude matrix")
    users = users.astype(np.int64)
    masked = exclude[users]  # the users' rows in order, a copy: sliced per batch without scipy indexing
    masked.eliminate_zeros()
    indptr = masked.indptr.astype(np.int64)

    result = np.full((users.size, k), PADDING, dtype=np.int64)
    with torch.inference_mode():
        starts = range(0, users.size, batch_size)
        for start in tqdm(starts, desc="ranking", unit="batch", disable=not progress, leave=False):
            batch = users[start : start + batch_size]
            scores = score_fn(torch.from_numpy(batch))
            if tuple(scores.shape) != (batch.size, n_items):
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)}, expected ({batch.size}, {n_items})"
                )
            bounds = indptr[start : start + batch.size + 1]
            row_offsets = np.arange(batch.size, dtype=np.int64) * n_items
            flat = np.repeat(row_offsets, np.diff(bounds)) + masked.indices[bounds[0] : bounds[-1]]
            result[start : start + batch.size] = _masked_topk(scores, flat, k).cpu().numpy()
    return result


def _masked_topk(scores: torch.Tensor, flat: np.ndarray, k: int) -> torch.Tensor:
    """``select_topk`` of the [B, I] block ``scores`` with the entries at the row-major positions ``flat``
    (int64, row * I + item) set to -inf, copying the block only where writing into it could be seen outside.

    A float32/float64 inference tensor (what a scorer computes under ``full_ranking_topk``'s inference
    mode, e.g. a GEMM output) is masked in place: no second [B, I] block. Its masked entries are saved
    first and written back after the selection (also when it raises), so a score_fn that keeps or returns
    stored inference tensors sees them unchanged. Any other block is masked in a private copy: float16 /
    bfloat16 widen exactly to float32 and integers become float64 (order and ties are kept); a normal
    (non-inference) tensor, e.g. a view of a parameter, is cloned, since an in-place write would bump its
    autograd version counter; so is a block whose entries share memory (an expanded view).
    """
    scores = scores.detach()
    flat = torch.from_numpy(flat).to(scores.device)
    if scores.dtype in (torch.float32, torch.float64) and scores.is_inference():
        saved = scores.view(-1).index_select(0, flat) if scores.is_contiguous() else torch.take(scores, flat)
        try:
            _write_flat(scores, flat, None)
        except RuntimeError:  # entries share memory: fall through to a private copy
            pass
        else:
            try:
                return select_topk(scores, k)
            finally:
                _write_flat(scores, flat, saved)
    if scores.dtype in (torch.float32, torch.float64):
        scores = scores.clone()
    else:
        scores = scores.to(torch.float32 if scores.dtype.is_floating_point else torch.float64)
    _write_flat(scores, flat, None)
    return select_topk(scores, k)


def _write_flat(scores: torch.Tensor, flat: torch.Tensor, values: torch.Tensor | None) -> None:
    """Write ``values`` (None: -inf) at the row-major positions ``flat`` of the 2-D block ``scores``."""
    if scores.is_contiguous():
        if values is None:
            scores.view(-1).index_fill_(0, flat, float("-inf"))
        else:
            scores.view(-1).index_copy_(0, flat, values)
    else:
        if values is None:
            values = torch.full(flat.shape, float("-inf"), dtype=scores.dtype, device=scores.device)
        scores.put_(flat, values)


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """LongTensor [B, k]: per row, the k highest-scoring items (score descending, ties by lower item index),
    skipping items scored -inf; positions left over are -1. Raises ValueError for NaN scores.

    torch.topk's choice among tied scores is unspecified, so its item set is used only for rows where it is
    unique. ``torch.topk`` is asked for one value more than the ``take = min(k, I)`` places: a row is tied at
    the cut exactly when its (take+1)-th largest score equals its take-th largest score t (and t > -inf;
    when t is -inf every rankable item is in). Tied rows go through ``_select_with_ties``. The others keep
    topk's descending order, which is the rule's order unless two listed scores are equal: when a block has
    such a pair, its lists are reordered by ascending index and then by a stable descending sort of their
    scores. Every step is row-wise, so a row's result depends on that row's scores alone; ``scores`` is only
    read.
    """
    n_rows, n_items = scores.shape
    take = min(k, n_items)
    if n_rows == 0 or take == 0:
        return torch.full((n_rows, k), PADDING, dtype=torch.long, device=scores.device)
    values, items = torch.topk(scores, min(take + 1, n_items), dim=1)  # sorted, largest first
    if torch.isnan(values).any():  # topk ranks NaN above every number, so any NaN in a row shows up here
        raise ValueError("score_fn returned NaN scores; cannot rank")
    threshold = values[:, take - 1 : take]
    tied = None
    if values.shape[1] > take:
        tied = (values[:, take] == threshold[:, 0]) & (threshold[:, 0] > float("-inf"))
        values, items = values[:, :take], items[:, :take]

    rankable = values > float("-inf")
    if bool((values[:, 1:] == values[:, :-1]).logical_and_(rankable[:, 1:]).any()):
        # equal scores inside the lists: order those by item index (sort by index, then stable by score)
        items, by_index = torch.sort(items, dim=1)
        values = torch.gather(values, 1, by_index)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices
        items = torch.gather(items, 1, order)
        rankable = torch.gather(values, 1, order) > float("-inf")
    chosen = items.masked_fill_(~rankable, PADDING)
    if tied is not None and bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        chunk = max(1, TIE_CHUNK_ENTRIES // n_items)
        for first in range(0, rows.numel(), chunk):
            part = rows[first : first + chunk]
            chosen[part] = _select_with_ties(scores[part], threshold[part], take)
    if take == k:
        return chosen
    output = torch.full((n_rows, k), PADDING, dtype=torch.long, device=scores.device)
    output[:, :take] = chosen
    return output


def _select_with_ties(scores: torch.Tensor, threshold: torch.Tensor, take: int) -> torch.Tensor:
    """LongTensor [B, take] for rows whose take-th largest score ``threshold`` (> -inf) is tied beyond the
    places left: every item scored above it, plus the lowest-indexed items scored exactly it up to ``take``
    in all, ordered by score descending with lower indices first (stable sort of an index-ordered layout).
    """
    above = scores > threshold
    at_threshold = scores == threshold
    room = take - above.sum(dim=1, keepdim=True)
    first_at = torch.cumsum(at_threshold, dim=1, dtype=torch.int32) <= room
    selected = above | (at_threshold & first_at)  # exactly `take` per row

    rows, items = selected.nonzero(as_tuple=True)  # row-major: items ascending within each row
    items = items.view(-1, take)
    values = scores[rows, items.reshape(-1)].view(-1, take)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return torch.gather(items, 1, order)

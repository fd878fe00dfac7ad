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
    device of the scores, with one [B, I] block alive at a time.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"ranking cut-off k={k!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"evaluation batch_size={batch_size!r} must be a positive integer")
    users = np.asarray(users)
    if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
        raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} dtype {users.dtype}")
    exclude = sp.csr_matrix(exclude, copy=True)
    exclude.eliminate_zeros()
    n_users, n_items = exclude.shape
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"users hold indices outside [0, {n_users}) of the exclude matrix")

    result = np.full((users.size, k), PADDING, dtype=np.int64)
    with torch.inference_mode():
        starts = range(0, users.size, batch_size)
        for start in tqdm(starts, desc="ranking", unit="batch", disable=not progress, leave=False):
            batch = users[start : start + batch_size].astype(np.int64)
            scores = score_fn(torch.from_numpy(batch))
            if tuple(scores.shape) != (batch.size, n_items):
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)}, expected ({batch.size}, {n_items})"
                )
            scores = _as_float_copy(scores)
            masked = exclude[batch]
            rows = np.repeat(np.arange(batch.size, dtype=np.int64), np.diff(masked.indptr))
            scores[
                torch.from_numpy(rows).to(scores.device),
                torch.from_numpy(masked.indices.astype(np.int64)).to(scores.device),
            ] = float("-inf")
            result[start : start + batch.size] = select_topk(scores, k).cpu().numpy()
    return result


def _as_float_copy(scores: torch.Tensor) -> torch.Tensor:
    """A float copy we may write -inf into. float16/bfloat16 widen exactly to float32 (order and ties are
    kept); integer scores become float64."""
    scores = scores.detach()
    if scores.dtype in (torch.float32, torch.float64):
        return scores.clone()
    return scores.to(torch.float32 if scores.dtype.is_floating_point else torch.float64)


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """LongTensor [B, k]: per row, the k highest-scoring items (score descending, ties by lower item index),
    skipping items scored -inf; positions left over are -1. Raises ValueError for NaN scores.

    torch.topk's choice among tied scores is unspecified, so its item set is used only for rows where it is
    unique: where no more than k items score at least the k-th largest score t (or t is -inf, so every
    rankable item is in). Those candidates are ordered by ascending index, then by a stable descending sort
    of their scores. Rows with more items tied at t than places left go through ``_select_with_ties``.
    Every step is row-wise, so a row's result depends on that row's scores alone.
    """
    n_rows, n_items = scores.shape
    take = min(k, n_items)
    output = torch.full((n_rows, k), PADDING, dtype=torch.long, device=scores.device)
    if n_rows == 0 or take == 0:
        return output
    values, items = torch.topk(scores, take, dim=1)
    if torch.isnan(values).any():  # topk ranks NaN above every number, so any NaN in a row shows up here
        raise ValueError("score_fn returned NaN scores; cannot rank")
    threshold = values[:, -1:]
    ambiguous = (threshold[:, 0] > float("-inf")) & ((scores >= threshold).sum(dim=1) > take)

    items, by_index = torch.sort(items, dim=1)
    values = torch.gather(values, 1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    chosen = torch.gather(items, 1, order)
    chosen[torch.gather(values, 1, order) == float("-inf")] = PADDING
    if ambiguous.any():
        rows = ambiguous.nonzero().squeeze(1)
        chosen[rows] = _select_with_ties(scores[rows], threshold[rows], take)
    output[:, :take] = chosen
    return output


def _select_with_ties(scores: torch.Tensor, threshold: torch.Tensor, take: int) -> torch.Tensor:
    """LongTensor [B, take] for rows whose k-th largest score ``threshold`` (> -inf) is tied beyond the
    places left: every item scored above it, plus the lowest-indexed items scored exactly it up to ``take``
    in all, ordered by score descending with lower indices first (stable sort of an index-ordered layout).
    """
    above = scores > threshold
    at_threshold = scores == threshold
    room = take - above.sum(dim=1, keepdim=True)
    selected = above | (at_threshold & (torch.cumsum(at_threshold, dim=1) <= room))  # exactly `take` per row

    rows, items = selected.nonzero(as_tuple=True)  # row-major: items ascending within each row
    items = items.view(-1, take)
    values = scores[rows, items.reshape(-1)].view(-1, take)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return torch.gather(items, 1, order)

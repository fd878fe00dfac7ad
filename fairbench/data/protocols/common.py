"""What both protocols share: the protocol base class, id encoding, filters, split and matrix helpers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.data.types import InteractionData, RawInteractions
from fairbench.errors import UserError

# Split boundaries are floor(ratio * n); the epsilon keeps e.g. 0.7 * 10 = 6.999... from flooring to 6.
FLOOR_EPS = 1e-9


class SplitProtocol:
    """Base of all protocols: ``apply`` raw interactions -> :class:`InteractionData`."""

    def apply(self, raw: RawInteractions, name: str) -> InteractionData:
        raise NotImplementedError

    def cache_key(self) -> dict[str, Any]:
        """Everything that changes the output: the class and its fields."""
        fields = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}  # as JSON reads back
        return {"type": f"{type(self).__module__}.{type(self).__qualname__}", **fields}


@dataclass
class CodedInteractions:
    """A source's interactions with users / items as codes into their natural-order id arrays."""

    user_order: np.ndarray
    item_order: np.ndarray
    user_codes: np.ndarray
    item_codes: np.ndarray
    timestamp: np.ndarray
    row: np.ndarray  # row in the source (ties in time keep the file's order)
    counts: dict[str, int]
    rating: np.ndarray | None = None


def encode(raw: RawInteractions) -> CodedInteractions:
    """Codes of the interactions' users (natural order of their ids) and items (of the item table)."""
    frame = raw.interactions
    assert frame is not None
    item_order = natural_sorted_ids(raw.items["item_id"].to_numpy())
    if len(item_order) != len(raw.items):
        raise UserError(f"{raw.source}: the item table lists some item ids more than once")
    unknown = ~frame["item_id"].isin(item_order)
    if unknown.any():
        examples = ", ".join(map(str, frame.loc[unknown, "item_id"].unique()[:5]))
        raise UserError(
            f"{raw.source}: {int(unknown.sum())} interactions refer to items missing from the item "
            f"table (e.g. {examples}); fix the files or add the items"
        )
    counts: dict[str, int] = {
        "raw_interactions": len(frame),
        "raw_users": int(frame["user_id"].nunique()),
        "raw_items": len(item_order),
        "raw_items_with_interactions": int(frame["item_id"].nunique()),
    }
    user_order = natural_sorted_ids(frame["user_id"].to_numpy())
    return CodedInteractions(
        user_order=user_order,
        item_order=item_order,
        user_codes=pd.Categorical(frame["user_id"], categories=user_order).codes.astype(np.int64),
        item_codes=pd.Categorical(frame["item_id"], categories=item_order).codes.astype(np.int64),
        timestamp=frame["timestamp"].to_numpy(dtype=np.float64),
        row=np.arange(len(frame), dtype=np.int64),
        counts=counts,
        rating=frame["rating"].to_numpy(dtype=np.float64),
    )


def rating_filter(coded: CodedInteractions, min_rating: float | None, source: str) -> np.ndarray:
    """Rows with rating >= ``min_rating`` (all rows when None); a missing rating is a UserError then."""
    rating = coded.rating
    if min_rating is None or rating is None:
        return np.ones(len(coded.user_codes), dtype=bool)
    if np.isnan(rating).any():
        raise UserError(f"{source} has interactions without a rating; set dataset.protocol.min_rating=null")
    return rating >= min_rating


def kcore_filter(
    user_codes: np.ndarray,
    item_codes: np.ndarray,
    shape: tuple[int, int],
    min_user: int,
    min_item: int,
    iterative: bool,
    counts: dict[str, int],
) -> np.ndarray:
    """Rows kept by the user filter (>= ``min_user`` rows per user) then the item filter (>= ``min_item``).

    One pass, or, when ``iterative``, passes until nothing changes (every kept user and item then meets its
    threshold: the (min_user, min_item)-core). Records after_user_filter / users_after_user_filter (first
    pass), after_item_filter (when min_item > 1) and after_kcore / kcore_rounds (when iterative).
    """
    keep = np.ones(len(user_codes), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        before = int(keep.sum())
        user_sizes = np.bincount(user_codes[keep], minlength=shape[0])
        keep &= user_sizes[user_codes] >= min_user
        if rounds == 1:
            counts["after_user_filter"] = int(keep.sum())
            counts["users_after_user_filter"] = int((user_sizes >= min_user).sum())
        if min_item > 1:
            item_sizes = np.bincount(item_codes[keep], minlength=shape[1])
            keep &= item_sizes[item_codes] >= min_item
            if rounds == 1:
                counts["after_item_filter"] = int(keep.sum())
        if not iterative or int(keep.sum()) == before:
            break
    if iterative:
        counts["after_kcore"] = int(keep.sum())
        counts["kcore_rounds"] = rounds
    return keep


def natural_sorted_ids(ids: np.ndarray) -> np.ndarray:
    """Unique ids as str, in natural order: numeric when every id is a digit string, else lexicographic."""
    unique = np.asarray(pd.unique(pd.Series(ids, dtype=str)), dtype=str)
    if len(unique) and bool(pd.Series(unique).str.fullmatch(r"\d+").all()):
        # (length, text) orders digit strings numerically without overflow; "007" and "7" stay distinct.
        order = np.lexsort((unique, np.char.str_len(unique)))
    else:
        order = np.argsort(unique, kind="stable")
    return unique[order]


def split_bounds(sizes: np.ndarray, ratios: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user split boundaries for n = ``sizes``: train = [0, a), valid = [a, b), test = [b, n).

    a = max(1, floor(r_train * n)), b = min(n, max(a, floor((r_train + r_valid) * n))). For 4:3:3 and
    n = 20: 8 / 6 / 6; n = 21: 8 / 6 / 7; n = 23: 9 / 7 / 7 (test takes the rounding remainder).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    train_end = np.maximum(1, np.floor(ratios[0] * sizes + FLOOR_EPS)).astype(np.int64)
    valid_end = np.maximum(train_end, np.floor((ratios[0] + ratios[1]) * sizes + FLOOR_EPS)).astype(np.int64)
    return np.minimum(train_end, sizes), np.minimum(valid_end, sizes)


def build_csr(
    rows: np.ndarray, cols: np.ndarray, timestamps: np.ndarray, shape: tuple[int, int]
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary float32 CSR with sorted indices, and the timestamps aligned with its ``indices``.

    (row, col) pairs must be unique.
    """
    order = np.lexsort((cols, rows))
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    indices = cols[order].astype(np.int32)
    data = np.ones(len(indices), dtype=np.float32)
    matrix = sp.csr_matrix((data, indices, indptr.astype(np.int32)), shape=shape)
    matrix.has_sorted_indices = True
    return matrix, timestamps[order].astype(np.float64)


def unique_pairs(
    rows: np.ndarray, cols: np.ndarray, times: np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, col) pairs in (row, col) order, each with its earliest time (NaN only if all are)."""
    unique, inverse = np.unique(rows * n_cols + cols, return_inverse=True)
    earliest = np.full(len(unique), np.nan)
    np.fmin.at(earliest, inverse, times)  # fmin skips NaN
    return unique // n_cols, unique % n_cols, earliest


def window_positions(users: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows over rows sorted by user (then time): (sample positions, history positions [s, L]).

    Every row but a user's first is a sample; its history positions are the up to ``length`` rows before it
    of the same user, oldest first, left-padded with -1.
    """
    n = len(users)
    index = np.arange(n, dtype=np.int64)
    is_first = np.ones(n, dtype=bool)
    is_first[1:] = users[1:] != users[:-1]
    run_start = np.maximum.accumulate(np.where(is_first, index, 0)) if n else index
    positions = np.flatnonzero(~is_first)
    offsets = positions[:, None] - np.arange(length, 0, -1)[None, :]
    return positions, np.where(offsets >= run_start[positions][:, None], offsets, -1)


def last_items(users: np.ndarray, items: np.ndarray, n_users: int, length: int) -> np.ndarray:
    """[U, L] int32: each user's last ``length`` items of rows sorted by (user, time), left-padded with -1."""
    sizes = np.bincount(users, minlength=n_users)
    ends = np.cumsum(sizes)
    offsets = ends[:, None] - np.arange(length, 0, -1)[None, :]
    valid = offsets >= (ends - sizes)[:, None]
    if len(items) == 0:
        return np.full((n_users, length), -1, dtype=np.int32)
    return np.where(valid, items[np.clip(offsets, 0, len(items) - 1)], -1).astype(np.int32)


def check_ratios(ratios: tuple[float, ...], example: str) -> tuple[float, ...]:
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise UserError(
            f"dataset.protocol.ratios={list(ratios)}: need three non-negative train/valid/test "
            f"shares that sum to 1, e.g. {example}"
        )
    if ratios[0] <= 0:
        raise UserError("dataset.protocol.ratios: the train share must be positive")
    return ratios


def check_thresholds(min_user: int, min_item: int) -> None:
    if min_user < 1:
        raise UserError("dataset.protocol.min_user_interactions must be >= 1")
    if min_item < 1:
        raise UserError("dataset.protocol.min_item_interactions must be >= 1 (1 = no item filter)")

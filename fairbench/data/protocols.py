"""Data protocols: turn a source's raw interactions into train / valid / test matrices.

A protocol is a ``_target_`` config node (``dataset.protocol``); its fields are its config keys and
:meth:`SplitProtocol.cache_key` keys the processed-data cache. This round implements the BiFair / AlphaRec
"general" protocol (METHODS.md 1.1); the BIGRec sequential protocol (1.2) is a later subclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.data.types import SPLITS, InteractionData, RawInteractions
from fairbench.errors import UserError

# Split boundaries are floor(ratio * n); the epsilon keeps e.g. 0.7 * 10 = 6.999... from flooring to 6.
_FLOOR_EPS = 1e-9


class SplitProtocol:
    """Base of all protocols: ``apply`` raw interactions -> :class:`InteractionData`."""

    def apply(self, raw: RawInteractions, name: str) -> InteractionData:
        raise NotImplementedError

    def cache_key(self) -> dict[str, Any]:
        """Everything that changes the output: the class and its fields."""
        fields = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}  # as JSON reads back
        return {"type": f"{type(self).__module__}.{type(self).__qualname__}", **fields}


@dataclass(kw_only=True)
class GeneralProtocol(SplitProtocol):
    """BiFair Sec. 4.1 / AlphaRec: rating filter, user filter, per-user 4:3:3 split, cold items removed.

    Steps, in order (counts after each step are recorded in ``InteractionData.info["counts"]``):

    1. keep interactions with rating >= ``min_rating`` (skipped when None);
    2. deduplicate (user, item) pairs, keeping the earliest timestamp (ties: the first row read);
    3. drop users with fewer than ``min_user_interactions`` interactions, counted after steps 1-2. One pass,
       as in the papers: no item filter and no iteration to a k-core;
    4. split every user's n interactions in ``order``: the first ``n_train = max(1, floor(r_train * n))``
       go to train, up to ``max(n_train, floor((r_train + r_valid) * n))`` to valid, the rest to test.
       ``random`` orders each user's interactions by uniform keys from ``numpy.random.default_rng(seed)``
       drawn over the rows sorted by (user, item), so the split does not depend on the file's row order;
       ``temporal`` orders by timestamp, ties by item (natural id order), so test holds the latest ones;
    5. the item catalogue is the set of items with at least one training interaction; valid/test
       interactions with other items are removed (BiFair: "remove items from the validation and test sets
       that do not appear in the training set"). Users are all users kept by step 3 (each has >= 1 train
       interaction; valid/test may be empty after step 5);
    6. users and items are re-indexed 0..U-1 / 0..I-1 in natural order of their original ids (numeric order
       when all ids are digit strings, else lexicographic).
    """

    min_rating: float | None = 3.0
    min_user_interactions: int = 20
    ratios: tuple[float, ...] = (0.4, 0.3, 0.3)
    order: Literal["random", "temporal"] = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        self.ratios = tuple(float(r) for r in self.ratios)
        if len(self.ratios) != 3 or min(self.ratios) < 0 or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise UserError(
                f"dataset.protocol.ratios={list(self.ratios)}: need three non-negative train/valid/test "
                "shares that sum to 1, e.g. [0.4, 0.3, 0.3]"
            )
        if self.ratios[0] <= 0:
            raise UserError("dataset.protocol.ratios: the train share must be positive")
        if self.order not in ("random", "temporal"):
            raise UserError(f"dataset.protocol.order={self.order!r}: expected 'random' or 'temporal'")
        if self.min_user_interactions < 1:
            raise UserError("dataset.protocol.min_user_interactions must be >= 1")

    def apply(self, raw: RawInteractions, name: str) -> InteractionData:
        frame = raw.interactions
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

        user = pd.Categorical(frame["user_id"], categories=natural_sorted_ids(frame["user_id"].to_numpy()))
        user_codes = user.codes.astype(np.int64)
        item_codes = pd.Categorical(frame["item_id"], categories=item_order).codes.astype(np.int64)
        rating = frame["rating"].to_numpy(dtype=np.float64)
        timestamp = frame["timestamp"].to_numpy(dtype=np.float64)

        # 1. rating filter
        if self.min_rating is not None:
            if np.isnan(rating).any():
                raise UserError(
                    f"{raw.source} has interactions without a rating; set dataset.protocol.min_rating=null"
                )
            keep = rating >= self.min_rating
            user_codes, item_codes, timestamp = user_codes[keep], item_codes[keep], timestamp[keep]
        counts["after_min_rating"] = len(user_codes)

        # 2. deduplicate (user, item), earliest timestamp first (NaN sorts last; lexsort is stable)
        order = np.lexsort((timestamp, item_codes, user_codes))
        user_codes, item_codes, timestamp = user_codes[order], item_codes[order], timestamp[order]
        first = np.ones(len(user_codes), dtype=bool)
        first[1:] = (user_codes[1:] != user_codes[:-1]) | (item_codes[1:] != item_codes[:-1])
        user_codes, item_codes, timestamp = user_codes[first], item_codes[first], timestamp[first]
        counts["after_dedup"] = len(user_codes)

        # 3. user filter (one pass); rows stay sorted by (user, item)
        sizes = np.bincount(user_codes, minlength=len(user.categories))
        keep = sizes[user_codes] >= self.min_user_interactions
        user_codes, item_codes, timestamp = user_codes[keep], item_codes[keep], timestamp[keep]
        counts["after_user_filter"] = len(user_codes)
        counts["users_after_user_filter"] = int((sizes >= self.min_user_interactions).sum())
        if len(user_codes) == 0:
            raise UserError(
                f"no user of {raw.source} has >= {self.min_user_interactions} interactions after the rating "
                "filter; lower dataset.protocol.min_user_interactions or dataset.protocol.min_rating"
            )

        # 4. per-user split
        if self.order == "random":
            keys = np.random.default_rng(self.seed).random(len(user_codes))
            within = np.lexsort((keys, user_codes))
        else:
            if np.isnan(timestamp).any():
                raise UserError(
                    f"{raw.source} has interactions without a timestamp; dataset.protocol.order=temporal "
                    "needs them (use order=random)"
                )
            within = np.lexsort((item_codes, timestamp, user_codes))
        labels = split_labels(user_codes, within, self.ratios)

        # 5. catalogue = items seen in train; drop other items from valid/test
        in_train = np.zeros(len(item_order), dtype=bool)
        in_train[item_codes[labels == 0]] = True
        removed = ~in_train[item_codes]
        counts["removed_valid"] = int((removed & (labels == 1)).sum())
        counts["removed_test"] = int((removed & (labels == 2)).sum())
        keep = ~removed
        user_codes, item_codes, timestamp, labels = (
            user_codes[keep],
            item_codes[keep],
            timestamp[keep],
            labels[keep],
        )

        # 6. re-index in natural id order
        kept_users = np.flatnonzero(sizes >= self.min_user_interactions)
        user_index = np.full(len(sizes), -1, dtype=np.int64)
        user_index[kept_users] = np.arange(len(kept_users))
        item_index = np.cumsum(in_train) - 1
        n_users, n_items = len(kept_users), int(in_train.sum())
        rows, cols = user_index[user_codes], item_index[item_codes]

        matrices: dict[str, sp.csr_matrix] = {}
        stamps: dict[str, np.ndarray | None] = {}
        has_time = not np.isnan(timestamp).all()
        for code, split in enumerate(SPLITS):
            mask = labels == code
            shape = (n_users, n_items)
            matrices[split], stamps[split] = build_csr(rows[mask], cols[mask], timestamp[mask], shape)
            if not has_time:
                stamps[split] = None
            counts[f"{split}_interactions"] = int(mask.sum())
        counts["users"], counts["items"] = n_users, n_items

        items = raw.items.set_index("item_id").loc[item_order[in_train]].reset_index()
        user_ids = np.asarray(user.categories.to_numpy()[kept_users], dtype=str)
        info = {"source": raw.source, "protocol": self.cache_key(), "counts": counts}
        return InteractionData(
            name=name,
            user_ids=user_ids,
            items=items,
            train=matrices["train"],
            valid=matrices["valid"],
            test=matrices["test"],
            train_timestamps=stamps["train"],
            valid_timestamps=stamps["valid"],
            test_timestamps=stamps["test"],
            info=info,
        )


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
    train_end = np.maximum(1, np.floor(ratios[0] * sizes + _FLOOR_EPS)).astype(np.int64)
    valid_end = np.maximum(train_end, np.floor((ratios[0] + ratios[1]) * sizes + _FLOOR_EPS)).astype(np.int64)
    return np.minimum(train_end, sizes), np.minimum(valid_end, sizes)


def split_labels(user_codes: np.ndarray, within: np.ndarray, ratios: tuple[float, ...]) -> np.ndarray:
    """Split label per row (0 train, 1 valid, 2 test).

    ``within`` is a permutation sorting the rows by user and then by the within-user order; a row's
    position p in its user's run is compared with :func:`split_bounds`.
    """
    sorted_users = user_codes[within]
    sizes = np.bincount(sorted_users)
    starts = np.cumsum(sizes) - sizes
    position = np.arange(len(within)) - starts[sorted_users]
    train_end, valid_end = split_bounds(sizes, ratios)
    sorted_labels = np.where(
        position < train_end[sorted_users], 0, np.where(position < valid_end[sorted_users], 1, 2)
    ).astype(np.int8)
    labels = np.empty(len(within), dtype=np.int8)
    labels[within] = sorted_labels
    return labels


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

"""The BiFair / AlphaRec "general" protocol (METHODS.md 1.1): per-user splits of filtered interactions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from fairbench.data.protocols.common import (
    SplitProtocol,
    build_csr,
    check_ratios,
    check_thresholds,
    encode,
    kcore_filter,
    last_items,
    rating_filter,
    split_bounds,
    window_positions,
)
from fairbench.data.types import SPLITS, InteractionData, RawInteractions, SequentialSamples
from fairbench.errors import UserError


@dataclass(kw_only=True)
class GeneralProtocol(SplitProtocol):
    """BiFair Sec. 4.1 / AlphaRec: rating filter, user filter, per-user 4:3:3 split, cold items removed.

    Steps, in order (counts after each step are recorded in ``InteractionData.info["counts"]``):

    1. keep interactions with rating >= ``min_rating`` (skipped when None);
    2. deduplicate (user, item) pairs, keeping the earliest timestamp (ties: the first row read);
    3. drop users with fewer than ``min_user_interactions`` interactions, counted after steps 1-2, then items
       with fewer than ``min_item_interactions`` (1 = no item filter). One pass, as in the papers; with
       ``iterative_kcore`` both filters repeat until every user and item meets its threshold (a k-core);
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
       when all ids are digit strings, else lexicographic);
    7. sequential samples (when ``history_length`` L > 0), each user's interactions ordered by timestamp,
       ties by item (by item alone without timestamps): train = one sample per training interaction but the
       user's first, history = the up to L training interactions before it; valid = one sample per valid
       interaction, history = the user's last L training interactions; test = one per test interaction,
       history = the user's last L train-or-valid interactions. So every valid/test sample of a user has
       the same history, and the matrices are exactly the samples' targets plus the users' first train items.
    """

    min_rating: float | None = 3.0
    min_user_interactions: int = 20
    min_item_interactions: int = 1
    iterative_kcore: bool = False
    ratios: tuple[float, ...] = (0.4, 0.3, 0.3)
    order: Literal["random", "temporal"] = "random"
    seed: int = 0
    history_length: int = 10

    def __post_init__(self) -> None:
        self.ratios = check_ratios(self.ratios, "[0.4, 0.3, 0.3]")
        if self.order not in ("random", "temporal"):
            raise UserError(f"dataset.protocol.order={self.order!r}: expected 'random' or 'temporal'")
        check_thresholds(self.min_user_interactions, self.min_item_interactions)
        if self.history_length < 0:
            raise UserError("dataset.protocol.history_length must be >= 0 (0 = no sequential samples)")

    def apply(self, raw: RawInteractions, name: str) -> InteractionData:
        coded = encode(raw)
        counts = coded.counts
        user_codes, item_codes, timestamp = coded.user_codes, coded.item_codes, coded.timestamp

        # 1. rating filter
        keep = rating_filter(coded, self.min_rating, raw.source)
        user_codes, item_codes, timestamp = user_codes[keep], item_codes[keep], timestamp[keep]
        counts["after_min_rating"] = len(user_codes)

        # 2. deduplicate (user, item), earliest timestamp first (NaN sorts last; lexsort is stable)
        order = np.lexsort((timestamp, item_codes, user_codes))
        user_codes, item_codes, timestamp = user_codes[order], item_codes[order], timestamp[order]
        first = np.ones(len(user_codes), dtype=bool)
        first[1:] = (user_codes[1:] != user_codes[:-1]) | (item_codes[1:] != item_codes[:-1])
        user_codes, item_codes, timestamp = user_codes[first], item_codes[first], timestamp[first]
        counts["after_dedup"] = len(user_codes)

        # 3. user / item filter (one pass unless iterative_kcore); rows stay sorted by (user, item)
        keep = kcore_filter(
            user_codes,
            item_codes,
            (len(coded.user_order), len(coded.item_order)),
            self.min_user_interactions,
            self.min_item_interactions,
            self.iterative_kcore,
            counts,
        )
        user_codes, item_codes, timestamp = user_codes[keep], item_codes[keep], timestamp[keep]
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
        in_train = np.zeros(len(coded.item_order), dtype=bool)
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
        kept_users = np.flatnonzero(np.bincount(user_codes, minlength=len(coded.user_order)))
        user_index = np.full(len(coded.user_order), -1, dtype=np.int64)
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

        # 7. sequential samples
        samples = None
        if self.history_length > 0:
            samples = general_samples(rows, cols, timestamp, labels, n_users, self.history_length)
            for split in SPLITS:
                counts[f"{split}_samples"] = len(samples[split])

        items = raw.items.set_index("item_id").loc[coded.item_order[in_train]].reset_index()
        user_ids = np.asarray(coded.user_order[kept_users], dtype=str)
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
            samples=samples,
        )


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


def general_samples(
    rows: np.ndarray, cols: np.ndarray, times: np.ndarray, labels: np.ndarray, n_users: int, length: int
) -> dict[str, SequentialSamples]:
    """Samples of the general protocol's split (GeneralProtocol step 7)."""
    order = np.lexsort((cols, times, rows))
    rows, cols, times, labels = rows[order], cols[order], times[order], labels[order]
    train = labels == 0
    positions, history_positions = window_positions(rows[train], length)
    train_items = cols[train]
    history = np.where(history_positions < 0, -1, train_items[np.maximum(history_positions, 0)])
    samples = {
        "train": SequentialSamples(
            user=rows[train][positions],
            history=history.astype(np.int32),
            target=train_items[positions],
            timestamp=times[train][positions],
        )
    }
    for code, split in ((1, "valid"), (2, "test")):
        before = labels < code
        histories = last_items(rows[before], cols[before], n_users, length)
        held_out = labels == code
        samples[split] = SequentialSamples(
            user=rows[held_out],
            history=histories[rows[held_out]],
            target=cols[held_out],
            timestamp=times[held_out],
        )
    return samples

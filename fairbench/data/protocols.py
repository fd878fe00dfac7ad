"""Data protocols: turn a source's raw interactions into train / valid / test matrices and samples.

A protocol is a ``_target_`` config node (``dataset.protocol``, chosen with ``dataset/protocol=general`` or
``dataset/protocol=sequential``); its fields are its config keys and :meth:`SplitProtocol.cache_key` keys
the processed-data cache. :class:`GeneralProtocol` is the BiFair / AlphaRec protocol (METHODS.md 1.1),
:class:`SequentialProtocol` the BIGRec / IFairLRS one (1.2). Both give what both model families need: the
user x item matrices, next-item samples per split, the item table and training popularity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.data.checks import HISTORY_STEP_SECONDS
from fairbench.data.types import SPLITS, InteractionData, RawInteractions, SequentialSamples
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


@dataclass(kw_only=True)
class SequentialProtocol(SplitProtocol):
    """BIGRec / IFairLRS next-item protocol (METHODS.md 1.2; BIGRec ``data/movie/process.ipynb``).

    From interactions, in order (counts in ``InteractionData.info["counts"]``):

    1. keep interactions with rating >= ``min_rating`` (None: keep all); every interaction needs a timestamp;
    2. deduplicate (user, item), keeping the earliest (ties: the first row read);
    3. user / item filter as in :class:`GeneralProtocol` step 3 (defaults: none);
    4. sort each user's interactions by timestamp (ties: order in the source file); every position i >= 1
       gives a sample: history = the up to L = ``history_length`` previous items, target = item i, time =
       the target's timestamp (a user with one interaction gives none);
    5. sort all samples by time (ties: by user, then position) and cut them globally: the first
       ``floor(r_train * n)`` are train, up to ``floor((r_train + r_valid) * n)`` valid, the rest test;
    6. optionally keep a random subset of each split: at most ``max_train_samples`` / ``max_valid_samples``
       / ``max_test_samples``, drawn without replacement by ``numpy.random.default_rng([seed, split])``
       (split 0, 1, 2; BIGRec: 1024 train, 5000 test) and kept in time order;
    7. users = those with >= 1 sample in step 4; items = every item in their sequences (so a valid/test
       target may have no training interaction: LLM-based models generate over the whole catalogue); both
       re-indexed in natural id order.

    A source with its own samples and split (bigrec_csv) skips steps 1-5: its samples are kept as given,
    histories cut to their last L items; without validation samples, the latest (by time, then line)
    ``n_train - floor(r_train / (r_train + r_valid) * n_train)`` train samples become validation. Users
    and items are those named by any sample.

    Matrices (what models trained on user-item interactions see), from the samples kept in step 6:
    train = the (user, item) pairs of the train samples' targets **and history items**; valid / test = the
    (user, target) pairs of the valid / test samples, minus pairs already in train (and, for test, in
    valid) - none are with steps 1-5, whose (user, item) pairs are unique and whose splits follow each
    user's time order. Timestamps are the interactions' own (for given samples: the sample's time, history
    items 1 ms earlier per step back, as in :func:`fairbench.data.checks.interactions_from_samples`).
    """

    min_rating: float | None = None
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    iterative_kcore: bool = False
    history_length: int = 10
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    max_train_samples: int | None = None
    max_valid_samples: int | None = None
    max_test_samples: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        self.ratios = check_ratios(self.ratios, "[0.8, 0.1, 0.1]")
        check_thresholds(self.min_user_interactions, self.min_item_interactions)
        if self.history_length < 1:
            raise UserError("dataset.protocol.history_length must be >= 1 for the sequential protocol")
        for split in SPLITS:
            cap = getattr(self, f"max_{split}_samples")
            if cap is not None and cap < 1:
                raise UserError(
                    f"dataset.protocol.max_{split}_samples={cap}: must be >= 1 or null (keep all)"
                )

    def apply(self, raw: RawInteractions, name: str) -> InteractionData:
        built = self._from_given_samples(raw) if raw.samples is not None else self._from_interactions(raw)
        counts = built.counts
        # 6. sub-sample each split
        selected = []
        for code, split in enumerate(SPLITS):
            members = np.flatnonzero(built.labels == code)
            counts[f"{split}_samples_before_subsampling"] = len(members)
            cap = getattr(self, f"max_{split}_samples")
            if cap is not None and len(members) > cap:
                rng = np.random.default_rng([self.seed, code])
                members = members[np.sort(rng.choice(len(members), size=cap, replace=False))]
            selected.append(members)
            counts[f"{split}_samples"] = len(members)
        return built.finish(name, raw.source, self.cache_key(), selected)

    def _from_interactions(self, raw: RawInteractions) -> _SampleSet:
        coded = encode(raw)
        counts = coded.counts
        keep = rating_filter(coded, self.min_rating, raw.source)
        user_codes, item_codes = coded.user_codes[keep], coded.item_codes[keep]
        timestamp, row = coded.timestamp[keep], coded.row[keep]
        counts["after_min_rating"] = len(user_codes)
        if np.isnan(timestamp).any():
            raise UserError(
                f"{raw.source} has interactions without a timestamp; the sequential protocol orders each "
                "user's interactions by time (use dataset/protocol=general with order=random)"
            )
        order = np.lexsort((row, timestamp, item_codes, user_codes))
        user_codes, item_codes, timestamp, row = (
            user_codes[order],
            item_codes[order],
            timestamp[order],
            row[order],
        )
        first = np.ones(len(user_codes), dtype=bool)
        first[1:] = (user_codes[1:] != user_codes[:-1]) | (item_codes[1:] != item_codes[:-1])
        user_codes, item_codes, timestamp, row = (
            user_codes[first],
            item_codes[first],
            timestamp[first],
            row[first],
        )
        counts["after_dedup"] = len(user_codes)
        keep = kcore_filter(
            user_codes,
            item_codes,
            (len(coded.user_order), len(coded.item_order)),
            self.min_user_interactions,
            self.min_item_interactions,
            self.iterative_kcore,
            counts,
        )
        user_codes, item_codes, timestamp, row = (
            user_codes[keep],
            item_codes[keep],
            timestamp[keep],
            row[keep],
        )

        # 4. sequences and sliding windows
        order = np.lexsort((row, timestamp, user_codes))
        users, items, times = user_codes[order], item_codes[order], timestamp[order]
        positions, history_positions = window_positions(users, self.history_length)
        if len(positions) == 0:
            raise UserError(
                f"no user of {raw.source} has two or more interactions after the filters, so there is no "
                "sequential sample; check the data or lower dataset.protocol.min_rating"
            )
        padding = history_positions < 0
        history = np.where(padding, -1, items[np.maximum(history_positions, 0)])
        history_time = np.where(padding, np.nan, times[np.maximum(history_positions, 0)])

        # 5. global temporal split; samples in time order (ties: user, then position)
        order = np.lexsort((positions, times[positions]))
        positions, history, history_time = positions[order], history[order], history_time[order]
        n_samples = len(positions)
        counts["samples"] = n_samples
        train_end, valid_end = (int(b[0]) for b in split_bounds(np.array([n_samples]), self.ratios))
        labels = np.full(n_samples, 2, dtype=np.int8)
        labels[:valid_end] = 1
        labels[:train_end] = 0

        # 7. catalogue: users with a sample, every item in their sequences
        has_sample = np.zeros(len(coded.user_order), dtype=bool)
        has_sample[users[positions]] = True
        in_sequences = has_sample[users]
        return _SampleSet.encode(
            coded,
            user=users[positions],
            history=history,
            history_time=history_time,
            target=items[positions],
            timestamp=times[positions],
            labels=labels,
            catalogue_users=np.flatnonzero(has_sample),
            catalogue_items=np.unique(items[in_sequences]),
            items=raw.items,
            counts=counts,
        )

    def _from_given_samples(self, raw: RawInteractions) -> _SampleSet:
        samples = raw.samples
        assert samples is not None
        if len(samples) == 0:
            raise UserError(f"{raw.source}: no usable sample left (see the warnings above)")
        user_order = natural_sorted_ids(samples.user_id)
        item_order = natural_sorted_ids(samples.item_ids)
        user_codes = pd.Categorical(samples.user_id, categories=user_order).codes.astype(np.int64)
        flat_codes = pd.Categorical(samples.item_ids, categories=item_order).codes.astype(np.int64)
        lengths = np.diff(samples.indptr)
        target_at = samples.indptr[1:] - 1
        # history: the last L items before each target, left-padded
        offsets = target_at[:, None] - np.arange(self.history_length, 0, -1)[None, :]
        padding = offsets < samples.indptr[:-1, None]
        history = np.where(padding, -1, flat_codes[np.maximum(offsets, 0)])
        steps_back = np.arange(self.history_length, 0, -1)[None, :] * HISTORY_STEP_SECONDS
        history_time = np.where(padding, np.nan, samples.timestamp[:, None] - steps_back)
        counts: dict[str, int] = {
            "given_samples": len(samples),
            "given_train_samples": int((samples.split == 0).sum()),
            "given_valid_samples": int((samples.split == 1).sum()),
            "given_test_samples": int((samples.split == 2).sum()),
            "histories_truncated": int((lengths - 1 > self.history_length).sum()),
        }
        labels = samples.split.astype(np.int8).copy()
        if not (labels == 1).any():
            train = np.flatnonzero(labels == 0)
            train = train[np.lexsort((samples.line[train], samples.timestamp[train]))]
            share = self.ratios[0] / (self.ratios[0] + self.ratios[1])
            n_keep = int(np.floor(share * len(train) + _FLOOR_EPS))
            labels[train[n_keep:]] = 1
            counts["valid_carved_from_train"] = len(train) - n_keep
        order = np.lexsort((samples.line, labels, samples.timestamp))
        coded = _Coded(
            user_order=user_order,
            item_order=item_order,
            user_codes=user_codes,
            item_codes=flat_codes,
            timestamp=samples.timestamp,
            row=samples.line,
            counts=counts,
        )
        return _SampleSet.encode(
            coded,
            user=user_codes[order],
            history=history[order],
            history_time=history_time[order],
            target=flat_codes[target_at][order],
            timestamp=samples.timestamp[order],
            labels=labels[order],
            catalogue_users=np.arange(len(user_order)),
            catalogue_items=np.arange(len(item_order)),
            items=raw.items,
            counts=counts,
        )


@dataclass
class _Coded:
    """A source's interactions with users / items as codes into their natural-order id arrays."""

    user_order: np.ndarray
    item_order: np.ndarray
    user_codes: np.ndarray
    item_codes: np.ndarray
    timestamp: np.ndarray
    row: np.ndarray  # row in the source (ties in time keep the file's order)
    counts: dict[str, int]
    rating: np.ndarray | None = None


def encode(raw: RawInteractions) -> _Coded:
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
    return _Coded(
        user_order=user_order,
        item_order=item_order,
        user_codes=pd.Categorical(frame["user_id"], categories=user_order).codes.astype(np.int64),
        item_codes=pd.Categorical(frame["item_id"], categories=item_order).codes.astype(np.int64),
        timestamp=frame["timestamp"].to_numpy(dtype=np.float64),
        row=np.arange(len(frame), dtype=np.int64),
        counts=counts,
        rating=frame["rating"].to_numpy(dtype=np.float64),
    )


def rating_filter(coded: _Coded, min_rating: float | None, source: str) -> np.ndarray:
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


@dataclass
class _SampleSet:
    """Samples in internal indices and their split labels, before sub-sampling (SequentialProtocol)."""

    user: np.ndarray
    history: np.ndarray
    history_time: np.ndarray
    target: np.ndarray
    timestamp: np.ndarray
    labels: np.ndarray
    user_ids: np.ndarray
    items: pd.DataFrame
    counts: dict[str, int]

    @classmethod
    def encode(
        cls,
        coded: _Coded,
        *,
        user: np.ndarray,
        history: np.ndarray,
        history_time: np.ndarray,
        target: np.ndarray,
        timestamp: np.ndarray,
        labels: np.ndarray,
        catalogue_users: np.ndarray,
        catalogue_items: np.ndarray,
        items: pd.DataFrame,
        counts: dict[str, int],
    ) -> _SampleSet:
        """Re-index codes to 0..U-1 / 0..I-1 over the catalogue (sorted codes keep the natural order)."""
        user_index = np.full(len(coded.user_order), -1, dtype=np.int64)
        user_index[catalogue_users] = np.arange(len(catalogue_users))
        item_index = np.full(len(coded.item_order) + 1, -1, dtype=np.int64)  # [-1] maps padding to -1
        item_index[catalogue_items] = np.arange(len(catalogue_items))
        table = items.set_index("item_id").loc[coded.item_order[catalogue_items]].reset_index()
        return cls(
            user=user_index[user],
            history=item_index[history].astype(np.int32),
            history_time=history_time,
            target=item_index[target],
            timestamp=np.asarray(timestamp, dtype=np.float64),
            labels=labels,
            user_ids=np.asarray(coded.user_order[catalogue_users], dtype=str),
            items=table,
            counts=counts,
        )

    def finish(
        self, name: str, source: str, protocol: dict[str, Any], selected: list[np.ndarray]
    ) -> InteractionData:
        """Matrices and samples of the selected samples of each split (see SequentialProtocol)."""
        n_users, n_items = len(self.user_ids), len(self.items)
        counts = self.counts
        samples: dict[str, SequentialSamples] = {}
        matrices: dict[str, sp.csr_matrix] = {}
        stamps: dict[str, np.ndarray] = {}
        seen = np.zeros(0, dtype=np.int64)  # user * n_items + item of the earlier splits
        for code, (split, members) in enumerate(zip(SPLITS, selected, strict=True)):
            user, target, time = self.user[members], self.target[members], self.timestamp[members]
            history = self.history[members]
            samples[split] = SequentialSamples(user=user, history=history, target=target, timestamp=time)
            rows, cols, times = user, target, time
            if code == 0:
                filled = history >= 0
                rows = np.concatenate([user, np.broadcast_to(user[:, None], history.shape)[filled]])
                cols = np.concatenate([target, history[filled].astype(np.int64)])
                times = np.concatenate([time, self.history_time[members][filled]])
            rows, cols, times = unique_pairs(rows, cols, times, n_items)
            keys = rows * n_items + cols  # sorted, like seen
            at = np.minimum(np.searchsorted(seen, keys), max(len(seen) - 1, 0))
            earlier = seen[at] == keys if len(seen) else np.zeros(len(keys), dtype=bool)
            if code > 0:
                counts[f"removed_{split}"] = int(earlier.sum())
            rows, cols, times = rows[~earlier], cols[~earlier], times[~earlier]
            seen = np.sort(np.concatenate([seen, keys[~earlier]]))
            matrices[split], stamps[split] = build_csr(rows, cols, times, (n_users, n_items))
            counts[f"{split}_interactions"] = len(rows)
        counts["users"], counts["items"] = n_users, n_items
        has_time = not np.isnan(self.timestamp).all()
        return InteractionData(
            name=name,
            user_ids=self.user_ids,
            items=self.items,
            train=matrices["train"],
            valid=matrices["valid"],
            test=matrices["test"],
            train_timestamps=stamps["train"] if has_time else None,
            valid_timestamps=stamps["valid"] if has_time else None,
            test_timestamps=stamps["test"] if has_time else None,
            info={"source": source, "protocol": protocol, "counts": counts},
            samples=samples,
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

"""The BIGRec / IFairLRS sequential protocol (METHODS.md 1.2): next-item samples cut globally in time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.data.checks import HISTORY_STEP_SECONDS
from fairbench.data.protocols.common import (
    FLOOR_EPS,
    CodedInteractions,
    SplitProtocol,
    build_csr,
    check_ratios,
    check_thresholds,
    encode,
    kcore_filter,
    natural_sorted_ids,
    rating_filter,
    split_bounds,
    unique_pairs,
    window_positions,
)
from fairbench.data.types import SPLITS, InteractionData, RawInteractions, SequentialSamples
from fairbench.errors import UserError


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
        return built.finish(name, raw.source, self.cache_key(), selected, np.flatnonzero(built.labels == 0))

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
            n_keep = int(np.floor(share * len(train) + FLOOR_EPS))
            labels[train[n_keep:]] = 1
            counts["valid_carved_from_train"] = len(train) - n_keep
        order = np.lexsort((samples.line, labels, samples.timestamp))
        coded = CodedInteractions(
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
        coded: CodedInteractions,
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

    def train_pairs(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, item, time) of the train samples ``members``: their targets and history items."""
        user, history = self.user[members], self.history[members]
        filled = history >= 0
        rows = np.concatenate([user, np.broadcast_to(user[:, None], history.shape)[filled]])
        cols = np.concatenate([self.target[members], history[filled].astype(np.int64)])
        times = np.concatenate([self.timestamp[members], self.history_time[members][filled]])
        return rows, cols, times

    def finish(
        self,
        name: str,
        source: str,
        protocol: dict[str, Any],
        selected: list[np.ndarray],
        all_train: np.ndarray,
    ) -> InteractionData:
        """Matrices and samples of the selected samples of each split (see SequentialProtocol); when train
        samples were dropped by sub-sampling, also the items' counts over ``all_train`` (the training
        period's samples), as ``training_period_counts``."""
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
            rows, cols, times = self.train_pairs(members) if code == 0 else (user, target, time)
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
        period_counts = None
        if len(all_train) > len(selected[0]):
            rows, cols, times = self.train_pairs(all_train)
            _, cols, _ = unique_pairs(rows, cols, times, n_items)
            period_counts = np.bincount(cols, minlength=n_items).astype(np.int64)
            counts["training_period_interactions"] = len(cols)
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
            training_period_counts=period_counts,
        )

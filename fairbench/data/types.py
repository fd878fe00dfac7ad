"""Plain data types shared by the data package and everything downstream (see the fairbench contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.data.issues import DataIssues

SPLITS = ("train", "valid", "test")


@dataclass
class RawSamples:
    """Next-item samples given by a source with its own split (bigrec_csv), in original ids.

    Sample n lists ``item_ids[indptr[n]:indptr[n + 1]]``: its history, oldest first, then its target (the
    last element). ``split`` is 0 train, 1 valid, 2 test; ``line`` is the sample's line in
    ``files[split]``.
    """

    user_id: np.ndarray  # str [n]
    item_ids: np.ndarray  # str [m]
    indptr: np.ndarray  # int64 [n + 1]
    timestamp: np.ndarray  # float64 [n]
    split: np.ndarray  # int8 [n]
    line: np.ndarray  # int64 [n]
    files: dict[int, Path] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_id)

    def select(self, keep: np.ndarray) -> RawSamples:
        """The samples where ``keep`` (bool [n]) is True, in the same order."""
        lengths = np.diff(self.indptr)
        flat_keep = np.repeat(keep, lengths)
        indptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=indptr[1:])
        return RawSamples(
            user_id=self.user_id[keep],
            item_ids=self.item_ids[flat_keep],
            indptr=indptr,
            timestamp=self.timestamp[keep],
            split=self.split[keep],
            line=self.line[keep],
            files=self.files,
        )


@dataclass
class RawInteractions:
    """What a source loader returns, before any protocol: one row per logged interaction.

    ``interactions`` columns: user_id (str), item_id (str), rating (float64, NaN when the source has none),
    timestamp (float64, NaN when the source has none), and optionally line (int64, 1-based line in
    ``interactions_file``). ``items`` columns: item_id (str), title (str), genres (list[str], possibly
    empty), plus optional extras (e.g. year) and optionally line (in ``items_file``).
    :func:`fairbench.data.checks.clean_raw` then drops (or, when strict, rejects) duplicate item ids, items
    without a title, interactions with unknown items, and reports duplicate interactions, so that every
    interaction's item_id occurs exactly once in ``items`` when the protocol runs.

    A source with its own sequential samples (``samples``) may leave ``interactions`` None: clean_raw
    derives them from the samples. ``issues`` collects the bad data found while reading.
    """

    interactions: pd.DataFrame | None
    items: pd.DataFrame
    source: str  # human-readable origin, e.g. "RecBole atomic files in /path"
    files: list[Path] = field(default_factory=list)  # the files read; their contents key the cache
    issues: DataIssues = field(default_factory=DataIssues)
    samples: RawSamples | None = None
    interactions_file: Path | None = None
    items_file: Path | None = None


@dataclass
class SequentialSamples:
    """Next-item samples of one split: predict ``target[n]`` for ``user[n]`` from ``history[n]``.

    ``history`` [n, L] holds internal item indices oldest to newest, left-padded with -1, so that
    ``history[:, -1]`` is the item just before the target (L = the protocol's ``history_length``).
    ``timestamp`` is the target's time (NaN when the source has none).
    """

    user: np.ndarray  # int64 [n]
    history: np.ndarray  # int32 [n, L]
    target: np.ndarray  # int64 [n]
    timestamp: np.ndarray  # float64 [n]

    def __post_init__(self) -> None:
        n = len(self.user)
        if self.history.ndim != 2 or self.history.shape[0] != n or len(self.target) != n:
            raise ValueError(f"samples: user {n}, history {self.history.shape}, target {len(self.target)}")
        if len(self.timestamp) != n:
            raise ValueError(f"samples: {len(self.timestamp)} timestamps for {n} samples")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def history_length(self) -> int:
        return int(self.history.shape[1])

    def lengths(self) -> np.ndarray:
        """Non-padding history items per sample, int64 [n]."""
        return (self.history >= 0).sum(axis=1).astype(np.int64)


@dataclass
class InteractionData:
    """A processed dataset: users x items interaction matrices for train / valid / test.

    Row u of every matrix is internal user u (original id ``user_ids[u]``); column i is internal item i
    (row i of ``items``). Matrices are float32 CSR with sorted indices and all stored values 1.
    ``<split>_timestamps`` (optional) are float64 arrays aligned with ``<split>.indices``.
    ``samples`` (optional) are the next-item samples of each split (keys "train", "valid", "test"), for
    sequential / LLM-based models; how they relate to the matrices is documented by each protocol.
    ``info`` records provenance: source, protocol, counts after each protocol step, bad data dropped
    (``info["issues"]``), cache status. ``training_period_counts`` (optional, int64 [I]): each item's
    training interactions over every train sample of the split before a protocol kept a random subset of
    them (None when none was dropped: then it equals ``train_counts()``).
    """

    name: str
    user_ids: np.ndarray
    items: pd.DataFrame
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    train_timestamps: np.ndarray | None = None
    valid_timestamps: np.ndarray | None = None
    test_timestamps: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, SequentialSamples] | None = None
    training_period_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = (len(self.user_ids), len(self.items))
        period = self.training_period_counts
        if period is not None and period.shape != (shape[1],):
            raise ValueError(f"training_period_counts has shape {period.shape}, expected ({shape[1]},)")
        for split in SPLITS:
            matrix = getattr(self, split)
            if matrix.shape != shape:
                raise ValueError(f"{split} has shape {matrix.shape}, expected {shape} (users, items)")
            stamps = getattr(self, f"{split}_timestamps")
            if stamps is not None and len(stamps) != matrix.nnz:
                raise ValueError(f"{split}_timestamps: {len(stamps)} entries for {matrix.nnz} interactions")
        for split, samples in (self.samples or {}).items():
            if split not in SPLITS:
                raise ValueError(f"samples: unknown split {split!r}")
            if len(samples) and (
                samples.user.min() < 0
                or samples.user.max() >= shape[0]
                or samples.target.min() < 0
                or samples.target.max() >= shape[1]
                or samples.history.max() >= shape[1]
                or samples.history.min() < -1
            ):
                raise ValueError(f"samples[{split!r}] has user or item indices out of range")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def split(self, name: str) -> sp.csr_matrix:
        """The interaction matrix of split ``name`` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def train_counts(self) -> np.ndarray:
        """Training interactions per item, int64 [I] (the popularity used for item groups)."""
        return np.bincount(self.train.indices, minlength=self.n_items).astype(np.int64)

    def period_counts(self) -> np.ndarray:
        """Training interactions per item over the whole training period, int64 [I]: before sub-sampling
        where a protocol dropped train samples, else ``train_counts()``."""
        if self.training_period_counts is None:
            return self.train_counts()
        return np.asarray(self.training_period_counts, dtype=np.int64)


@dataclass
class ItemGroups:
    """A grouping of the item catalogue, e.g. popularity head/tail or genres.

    ``membership[i, g]`` is True when item i belongs to group g; an item may belong to several groups
    (genre) or exactly one (popularity), or to none (e.g. an item without a genre).
    """

    kind: str  # "pop" or "genre"; used in metric keys such as test/pop/cv@20
    names: list[str]
    membership: np.ndarray  # [I, G] bool

    def __post_init__(self) -> None:
        if self.membership.ndim != 2 or self.membership.shape[1] != len(self.names):
            raise ValueError(f"membership shape {self.membership.shape} does not fit {len(self.names)} names")
        self.membership = np.asarray(self.membership, dtype=bool)

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def sizes(self) -> np.ndarray:
        """Items per group, int64 [G]."""
        return self.membership.sum(axis=0).astype(np.int64)

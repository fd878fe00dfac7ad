"""Plain data types shared by the data package and everything downstream (see the fairbench contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")


@dataclass
class RawInteractions:
    """What a source loader returns, before any protocol: one row per logged interaction.

    ``interactions`` columns: user_id (str), item_id (str), rating (float64, NaN when the source has none),
    timestamp (float64, NaN when the source has none). ``items`` columns: item_id (str, unique), title (str),
    genres (list[str], possibly empty), plus optional extras (e.g. year). Every interaction's item_id must
    occur in ``items``.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    source: str  # human-readable origin, e.g. "RecBole atomic files in /path"
    files: list[Path] = field(default_factory=list)  # the files read; their contents key the cache


@dataclass
class InteractionData:
    """A processed dataset: users x items interaction matrices for train / valid / test.

    Row u of every matrix is internal user u (original id ``user_ids[u]``); column i is internal item i
    (row i of ``items``). Matrices are float32 CSR with sorted indices and all stored values 1.
    ``<split>_timestamps`` (optional) are float64 arrays aligned with ``<split>.indices``.
    ``info`` records provenance: source, protocol, counts after each protocol step, cache status.
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

    def __post_init__(self) -> None:
        shape = (len(self.user_ids), len(self.items))
        for split in SPLITS:
            matrix = getattr(self, split)
            if matrix.shape != shape:
                raise ValueError(f"{split} has shape {matrix.shape}, expected {shape} (users, items)")
            stamps = getattr(self, f"{split}_timestamps")
            if stamps is not None and len(stamps) != matrix.nnz:
                raise ValueError(f"{split}_timestamps: {len(stamps)} entries for {matrix.nnz} interactions")

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

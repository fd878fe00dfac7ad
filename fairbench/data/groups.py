"""Item groups for fairness metrics and methods: popularity (head/tail or quantiles) and genre.

Config node ``dataset.groups`` (a :class:`GroupsSpec`) holds one ``_target_`` node per grouping;
:func:`build_item_groups` turns it into ``{"pop": ItemGroups, "genre": ItemGroups}`` (a grouping set to
null is left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from fairbench.data.types import InteractionData, ItemGroups
from fairbench.errors import UserError
from fairbench.runtime import build

_EPS = 1e-9

GROUP_KIND_NAMES = {"popularity": "pop", "pop": "pop", "genre": "genre"}
"""What a config may call a group kind (``method.groups``) -> the key of :func:`build_item_groups`."""


def group_kind(name: str | None, where: str = "method.groups") -> str | None:
    """The item-group kind ``name`` stands for ("pop" or "genre"), or None for None."""
    if name is None:
        return None
    if name not in GROUP_KIND_NAMES:
        raise UserError(f"{where}={name!r}: choose popularity (or pop) or genre")
    return GROUP_KIND_NAMES[name]


@dataclass(kw_only=True)
class PopularityGroups:
    """Popularity groups from training interactions per item (METHODS.md 1.1 and 1.2).

    Items are ranked by training count, descending; ties go to the lower internal item index (i.e. the
    smaller original id), so the ranking is stable and reproducible. Exactly one of:

    - ``top_fraction`` f (BiFair): "head" = the first ``ceil(f * I)`` ranked items, "tail" = the rest;
    - ``n_quantiles`` Q (IFairLRS): Q groups of (almost) equal item count, named q0 (least popular) ..
      q{Q-1} (most popular, IFairLRS label Q-1). The ranking is cut as ``numpy.array_split`` cuts I items
      into Q parts from the most popular end, so more popular groups get the one extra item when Q does
      not divide I.

    ``counted_on`` says which training interactions count: ``train_matrix`` - those models train on (for a
    sequential protocol that kept a random subset of train samples, only that subset's targets and history
    items); ``training_period`` - every train sample of the split before that sub-sampling, so a few-shot
    run gets the catalogue's popularity rather than that of a few hundred samples (IFairLRS publishes fixed
    ML-1M quintiles over the whole catalogue, ``movie_pop_count_5.csv``, without saying which interactions
    they count). Without sub-sampling the two are the same.
    """

    top_fraction: float | None = 0.1
    n_quantiles: int | None = None
    counted_on: Literal["train_matrix", "training_period"] = "train_matrix"

    def __post_init__(self) -> None:
        if (self.top_fraction is None) == (self.n_quantiles is None):
            raise UserError(
                "dataset.groups.popularity: set exactly one of top_fraction (head/tail) and n_quantiles "
                f"(got top_fraction={self.top_fraction}, n_quantiles={self.n_quantiles}); e.g. "
                "dataset.groups.popularity.n_quantiles=5 dataset.groups.popularity.top_fraction=null"
            )
        if self.top_fraction is not None and not 0 < self.top_fraction < 1:
            raise UserError(f"dataset.groups.popularity.top_fraction={self.top_fraction}: must be in (0, 1)")
        if self.n_quantiles is not None and self.n_quantiles < 2:
            raise UserError(f"dataset.groups.popularity.n_quantiles={self.n_quantiles}: must be >= 2")
        if self.counted_on not in ("train_matrix", "training_period"):
            raise UserError(
                f"dataset.groups.popularity.counted_on={self.counted_on!r}: choose train_matrix or "
                "training_period"
            )

    def counts(self, data: InteractionData) -> np.ndarray:
        """Training interactions per item, int64 [I], as ``counted_on`` says."""
        return data.period_counts() if self.counted_on == "training_period" else data.train_counts()

    def build(self, data: InteractionData) -> ItemGroups:
        rank = popularity_rank(self.counts(data))
        n_items = data.n_items
        if self.top_fraction is not None:
            n_head = head_size(self.top_fraction, n_items)
            head = rank < n_head
            return ItemGroups(kind="pop", names=["head", "tail"], membership=np.stack([head, ~head], axis=1))
        n_groups = int(self.n_quantiles)  # type: ignore[arg-type]
        if n_groups > n_items:
            raise UserError(
                f"dataset.groups.popularity.n_quantiles={n_groups} exceeds the {n_items} items of {data.name}"
            )
        # as array_split: the first I % Q parts (most popular) get ceil(I / Q) items, the rest floor(I / Q).
        part_sizes = np.full(n_groups, n_items // n_groups)
        part_sizes[: n_items % n_groups] += 1
        part_of_rank = np.repeat(np.arange(n_groups), part_sizes)  # 0 = most popular part
        label = n_groups - 1 - part_of_rank[rank]
        membership = label[:, None] == np.arange(n_groups)[None, :]
        return ItemGroups(kind="pop", names=[f"q{g}" for g in range(n_groups)], membership=membership)


@dataclass(kw_only=True)
class GenreGroups:
    """One group per genre, from the ``genres`` column of the item table (multi-membership).

    Groups are the genres present among the catalogue items, sorted alphabetically. With ``top_n`` N, only
    the N genres with the most catalogue items are kept (ties: alphabetical), still sorted alphabetically,
    and the others are merged into a last group "other": an item is in "other" when it has at least one
    genre outside the top N (so it may also be in top-N groups). Items without a genre (MovieLens'
    "unknown" pseudo-genre is read as no genre) are, per ``missing``: ``exclude`` - in no genre group, so
    they count for no group in group metrics; ``group`` - in an extra last group "unknown".
    """

    missing: Literal["exclude", "group"] = "exclude"
    top_n: int | None = None

    def __post_init__(self) -> None:
        if self.missing not in ("exclude", "group"):
            raise UserError(f"dataset.groups.genre.missing={self.missing!r}: expected 'exclude' or 'group'")
        if self.top_n is not None and self.top_n < 1:
            raise UserError(f"dataset.groups.genre.top_n={self.top_n}: must be >= 1, or null for all genres")

    def build(self, data: InteractionData) -> ItemGroups:
        if "genres" not in data.items:
            raise UserError(f"{data.name} has no genres; set dataset.groups.genre=null")
        exploded = data.items["genres"].explode().dropna()
        names = sorted(pd.unique(exploded.astype(str)))
        codes = pd.Categorical(exploded.astype(str), categories=names).codes
        membership = np.zeros((data.n_items, len(names)), dtype=bool)
        membership[exploded.index.to_numpy(dtype=np.int64), codes] = True
        if self.top_n is not None and len(names) > self.top_n:
            if "other" in names:
                raise UserError(
                    f"{data.name} has a genre literally named 'other'; set dataset.groups.genre.top_n=null"
                )
            sizes = membership.sum(axis=0)
            ranked = np.lexsort(
                (np.arange(len(names)), -sizes)
            )  # names are sorted: index order = alphabetical
            kept = np.sort(ranked[: self.top_n])
            rest = np.sort(ranked[self.top_n :])
            other = membership[:, rest].any(axis=1)
            names = [names[k] for k in kept] + ["other"]
            membership = np.concatenate([membership[:, kept], other[:, None]], axis=1)
        if self.missing == "group":
            if "unknown" in names:
                raise UserError(f"{data.name} has a genre literally named 'unknown'; use missing=exclude")
            no_genre = ~membership.any(axis=1)
            if no_genre.any():
                names.append("unknown")
                membership = np.concatenate([membership, no_genre[:, None]], axis=1)
        if not names:
            raise UserError(f"no item of {data.name} has a genre; set dataset.groups.genre=null")
        return ItemGroups(kind="genre", names=names, membership=membership)


@dataclass(kw_only=True)
class GroupsSpec:
    """Which item groupings to build; null disables one. Keys of the result: "pop", "genre"."""

    popularity: PopularityGroups | None = field(default_factory=PopularityGroups)
    genre: GenreGroups | None = field(default_factory=GenreGroups)


def build_item_groups(data: InteractionData, spec: GroupsSpec | Mapping[str, Any]) -> dict[str, ItemGroups]:
    """Item groupings of ``data`` as configured by ``spec`` (a :class:`GroupsSpec` or its config node)."""
    spec = build(spec, GroupsSpec, "dataset.groups", _convert_="all")
    groups: dict[str, ItemGroups] = {}
    if spec.popularity is not None:
        groups["pop"] = spec.popularity.build(data)
    if spec.genre is not None:
        groups["genre"] = spec.genre.build(data)
    return groups


def popularity_rank(counts: np.ndarray) -> np.ndarray:
    """Rank of each item (0 = most popular): by count descending, ties by item index ascending."""
    order = np.lexsort((np.arange(len(counts)), -np.asarray(counts, dtype=np.int64)))
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(len(counts))
    return rank


def head_size(top_fraction: float, n_items: int) -> int:
    """ceil(top_fraction * I), robust to float error (0.1 * 1610 = 161.00000000000003 -> 161); at least 1."""
    return max(1, int(math.ceil(top_fraction * n_items - _EPS)))

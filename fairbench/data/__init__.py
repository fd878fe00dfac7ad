"""Datasets: sources (one loader per family), protocols (filter, split), item groups, cache, statistics.

Entry points: ``load_dataset(cfg.dataset, cache_dir=..., data_dir=...)`` -> :class:`InteractionData`;
``build_item_groups(data, cfg.dataset.groups)`` -> ``{"pop": ItemGroups, "genre": ItemGroups}``;
``dataset_stats(data, groups)`` -> :class:`DatasetStats` (``print(stats)``, ``stats.flat``).
"""

from fairbench.data.dataset import DatasetSpec, load_dataset
from fairbench.data.groups import GenreGroups, GroupsSpec, PopularityGroups, build_item_groups
from fairbench.data.movielens import MovieLens100K
from fairbench.data.protocols import GeneralProtocol, SplitProtocol
from fairbench.data.stats import DatasetStats, dataset_stats
from fairbench.data.types import SPLITS, InteractionData, ItemGroups, RawInteractions

__all__ = [
    "SPLITS",
    "DatasetSpec",
    "DatasetStats",
    "GeneralProtocol",
    "GenreGroups",
    "GroupsSpec",
    "InteractionData",
    "ItemGroups",
    "MovieLens100K",
    "PopularityGroups",
    "RawInteractions",
    "SplitProtocol",
    "build_item_groups",
    "dataset_stats",
    "load_dataset",
]

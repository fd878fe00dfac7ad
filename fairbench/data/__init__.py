"""Datasets: sources (one loader per family), bad-data checks, protocols (filter, split, samples), item
groups, cache, statistics.

Families (config ``dataset=``): ml100k, ml1m (:mod:`~fairbench.data.movielens`), steam, books / movies /
games / amazon (:mod:`~fairbench.data.amazon`), bigrec_csv. Protocols (``dataset/protocol=``): general,
sequential (:mod:`~fairbench.data.protocols`).

Entry points: ``load_dataset(cfg.dataset, cache_dir=..., data_dir=...)`` -> :class:`InteractionData`;
``build_item_groups(data, cfg.dataset.groups)`` -> ``{"pop": ItemGroups, "genre": ItemGroups}``;
``dataset_stats(data, groups)`` -> :class:`DatasetStats` (``print(stats)``, ``stats.flat``).
"""

from fairbench.data.amazon import AmazonReviews
from fairbench.data.bigrec_csv import BigRecCSV
from fairbench.data.dataset import DatasetSpec, FileDatasetSpec, load_dataset
from fairbench.data.groups import GenreGroups, GroupsSpec, PopularityGroups, build_item_groups
from fairbench.data.issues import ISSUE_KINDS, DataIssues
from fairbench.data.movielens import MovieLens1M, MovieLens100K
from fairbench.data.protocols import GeneralProtocol, SequentialProtocol, SplitProtocol
from fairbench.data.stats import DatasetStats, dataset_stats
from fairbench.data.steam import Steam
from fairbench.data.types import (
    SPLITS,
    InteractionData,
    ItemGroups,
    RawInteractions,
    RawSamples,
    SequentialSamples,
)

__all__ = [
    "ISSUE_KINDS",
    "SPLITS",
    "AmazonReviews",
    "BigRecCSV",
    "DataIssues",
    "DatasetSpec",
    "DatasetStats",
    "FileDatasetSpec",
    "GeneralProtocol",
    "GenreGroups",
    "GroupsSpec",
    "InteractionData",
    "ItemGroups",
    "MovieLens100K",
    "MovieLens1M",
    "PopularityGroups",
    "RawInteractions",
    "RawSamples",
    "SequentialProtocol",
    "SequentialSamples",
    "SplitProtocol",
    "Steam",
    "build_item_groups",
    "dataset_stats",
    "load_dataset",
]

"""Full-ranking evaluation of a trained recommender on the validation or test split.

Valid: training items are masked. Test: training and validation items are masked (METHODS.md 2.1). The top-K
lists are computed once per split (batched over users) and every metric is derived from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.data.types import InteractionData, ItemGroups
from fairbench.errors import UserError
from fairbench.metrics import evaluate_topk, full_ranking_topk
from fairbench.models.base import Recommender

log = logging.getLogger(__name__)

GROUP_METRICS = ("cv", "min", "mgu", "dgu")


@dataclass
class MetricConfig:
    """What is measured (documented in conf/metric/default.yaml)."""

    ks: list[int] = field(default_factory=lambda: [10, 20])
    utility: Literal["recall", "ndcg", "hr"] = "recall"
    group_normalization: Literal["relevant", "all"] = "relevant"
    group_kinds: list[str] = field(default_factory=lambda: ["pop", "genre"])

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise UserError(f"metric.ks must be a non-empty list of positive cut-offs, got {list(self.ks)}")
        self.ks = sorted(set(int(k) for k in self.ks))


@dataclass
class SplitResult:
    """Flat metrics (``recall@20``, ``pop/cv@20``, ``pop/utility@20/head``...) and a per-group table."""

    metrics: dict[str, float]
    groups: pd.DataFrame


def split_matrices(
    data: InteractionData, split: Literal["valid", "test"]
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(held-out truth, items to mask) for a split."""
    if split == "valid":
        return data.valid, data.train
    if split == "test":
        return data.test, (data.train + data.valid).tocsr()
    raise ValueError(f"unknown split {split!r}")


def evaluate_split(
    model: Recommender,
    data: InteractionData,
    split: Literal["valid", "test"],
    groups: dict[str, ItemGroups],
    cfg: MetricConfig,
    batch_size: int = 1024,
    progress: bool = False,
) -> SplitResult:
    """Rank all items for every user with held-out items in ``split`` and compute all metrics."""
    truth, exclude = split_matrices(data, split)
    users = np.flatnonzero(truth.getnnz(axis=1) > 0)
    topk = full_ranking_topk(model.scorer(), users, exclude, max(cfg.ks), batch_size, progress=progress)
    return metrics_from_topk(topk, truth[users], data.train, groups, cfg)


def metrics_from_topk(
    topk: np.ndarray,
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    groups: dict[str, ItemGroups],
    cfg: MetricConfig,
) -> SplitResult:
    """Accuracy and popularity metrics, then per group kind the group metrics, prefixed by the kind.

    ``truth`` rows align with ``topk``; ``history`` is the whole training matrix (its column sums give item
    popularity for ARP/APLT and the reference group shares GP_ref of GU).
    """
    common = dict(ks=tuple(cfg.ks), utility=cfg.utility, group_normalization=cfg.group_normalization)
    metrics = dict(evaluate_topk(topk, truth, history=history, **common))
    rows = []
    for kind in cfg.group_kinds:
        item_groups = groups[kind]
        grouped = evaluate_topk(topk, truth, item_groups=item_groups.membership, history=history, **common)
        for k in cfg.ks:
            for name in GROUP_METRICS:
                metrics[f"{kind}/{name}@{k}"] = grouped[f"{name}@{k}"]
            for index, group_name in enumerate(item_groups.names):
                utility = grouped[f"utility@{k}/{index}"]
                gu = grouped[f"gu@{k}/{index}"]
                metrics[f"{kind}/utility@{k}/{group_name}"] = utility
                metrics[f"{kind}/gu@{k}/{group_name}"] = gu
                rows.append(
                    {
                        "kind": kind,
                        "group": group_name,
                        "k": k,
                        "n_items": int(item_groups.membership[:, index].sum()),
                        "utility": utility,
                        "gu": gu,
                    }
                )
    return SplitResult(metrics=metrics, groups=pd.DataFrame(rows))


def available_group_kinds(cfg: MetricConfig, groups: dict[str, ItemGroups]) -> list[str]:
    """The kinds of ``metric.group_kinds`` that the dataset builds; the others are skipped with a warning
    (e.g. genre metrics on a dataset without genres, such as BIGRec csv files)."""
    missing = [kind for kind in cfg.group_kinds if kind not in groups]
    if missing:
        log.warning(
            "metric.group_kinds asks for %s, but the dataset builds only %s: those metrics are skipped",
            missing,
            sorted(groups),
        )
    return [kind for kind in cfg.group_kinds if kind in groups]

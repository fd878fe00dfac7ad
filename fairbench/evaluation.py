"""Evaluation: rows -> ranked lists -> metrics, for any kind of recommender.

A split becomes :class:`EvalRows` (users of the general protocol, or next-item samples of the sequential
one); :func:`rank` turns a model into top-K lists for those rows (full ranking of scores with masking, or the
model's own ``recommend``), an optional post-processing stage may rerank them, and
:func:`evaluate_ranking` computes every metric from the lists alone. For users, valid masks training items
and test masks training and validation items (METHODS.md 2.1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

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
    rows: Literal["auto", "user", "sample"] = "auto"
    final_valid: bool = True

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise UserError(f"metric.ks must be a non-empty list of positive cut-offs, got {list(self.ks)}")
        self.ks = sorted(set(int(k) for k in self.ks))


@dataclass
class SplitResult:
    """Flat metrics (``recall@20``, ``pop/cv@20``, ``pop/utility@20/head``...) and a per-group table."""

    metrics: dict[str, float]
    groups: pd.DataFrame


@dataclass
class EvalRows:
    """What is ranked on one split: one row per user (general protocol) or per next-item sample.

    ``truth`` [R, I] holds each row's held-out items (a sample's target), ``exclude`` [R, I] the items never
    recommended to it (for users: training items, plus validation items on test), and ``reference`` the
    interactions whose column sums give item popularity (ARP, APLT) and GU's reference shares: the whole
    training matrix for users, the rows' own histories for samples (IFairLRS, METHODS.md 2.3).
    ``history`` [R, L] (samples only) is each row's history, left-padded with -1.
    """

    split: Literal["valid", "test"]
    unit: Literal["user", "sample"]
    users: np.ndarray
    truth: sp.csr_matrix
    exclude: sp.csr_matrix
    reference: sp.csr_matrix
    history: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Ranking:
    """Top-K lists of every row of ``rows`` (int64 [R, K], best first, -1 padded); ``scores`` [R, K] when
    the ranker gives them (rerankers may need them). A generative model adds what it generated per row
    (``details``, written to generations.jsonl for test) and what re-grounding needs (``grounding``)."""

    rows: EvalRows
    items: np.ndarray
    scores: np.ndarray | None = None
    details: list[dict[str, Any]] | None = None
    grounding: Any = None


def split_matrices(
    data: InteractionData, split: Literal["valid", "test"]
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(held-out truth, items to mask) for a split."""
    if split == "valid":
        return data.valid, data.train
    if split == "test":
        return data.test, (data.train + data.valid).tocsr()
    raise ValueError(f"unknown split {split!r}")


def evaluation_rows(
    data: InteractionData, split: Literal["valid", "test"], unit: Literal["user", "sample"]
) -> EvalRows:
    """The rows of ``split``: users with held-out items, or the split's next-item samples.

    Samples mask nothing (BIGRec ``evaluate.py`` ranks the whole catalogue; the sequential protocol's
    targets are never in their own history).
    """
    if unit == "user":
        truth, exclude = split_matrices(data, split)
        users = np.flatnonzero(truth.getnnz(axis=1) > 0)
        return EvalRows(split, "user", users, truth[users], exclude[users], data.train)
    if not data.samples or split not in data.samples:
        raise UserError(
            "evaluation on next-item samples needs the sequential protocol: add dataset/protocol=sequential"
        )
    samples = data.samples[split]
    n, n_items = len(samples), data.n_items
    truth = sp.csr_matrix(
        (np.ones(n, dtype=np.float32), samples.target.astype(np.int64), np.arange(n + 1)), shape=(n, n_items)
    )
    history = samples.history.astype(np.int64)
    present = history >= 0
    reference = sp.csr_matrix(
        (
            np.ones(int(present.sum()), dtype=np.float32),
            history[present],
            np.r_[0, np.cumsum(present.sum(1))],
        ),
        shape=(n, n_items),
    )
    reference.sum_duplicates()
    reference.data[:] = 1.0
    empty = sp.csr_matrix((n, n_items), dtype=np.float32)
    return EvalRows(split, "sample", samples.user.astype(np.int64), truth, empty, reference, history)


def row_unit(model: type[Recommender] | Recommender, cfg: MetricConfig) -> Literal["user", "sample"]:
    """``metric.rows``: ``auto`` evaluates models trained on next-item samples on samples, others on users."""
    if cfg.rows != "auto":
        return cfg.rows
    return "sample" if model.batch_unit == "sample" else "user"


def rank(
    model: Recommender, rows: EvalRows, k: int, batch_size: int = 1024, progress: bool = False
) -> Ranking:
    """Top-``k`` lists for ``rows``: ``model.recommend(rows, k)`` when the model recommends by itself
    (e.g. generate and ground), else full ranking of its scores with ``rows.exclude`` masked.

    Scores come from ``score_histories(history)`` for sample rows of a sequential model and from
    ``scorer()(users)`` otherwise (a user model on sample rows scores each sample's user).
    """
    recommend = getattr(model, "recommend", None)
    if callable(recommend):
        return recommend(rows, k)
    index = np.arange(len(rows))
    if rows.unit == "sample" and callable(getattr(model, "score_histories", None)):
        history = torch.from_numpy(rows.history)
        score_history = model.score_histories

        def score(batch: torch.Tensor) -> torch.Tensor:
            return score_history(history[batch])

    else:
        users = torch.from_numpy(rows.users)
        score_users = model.scorer()

        def score(batch: torch.Tensor) -> torch.Tensor:
            return score_users(users[batch])

    items = full_ranking_topk(score, index, rows.exclude, k, batch_size, progress=progress)
    return Ranking(rows, items)


def evaluate_ranking(ranking: Ranking, groups: dict[str, ItemGroups], cfg: MetricConfig) -> SplitResult:
    """Every metric of a ranking (:func:`metrics_from_topk` over its rows' truth and reference)."""
    return metrics_from_topk(ranking.items, ranking.rows.truth, ranking.rows.reference, groups, cfg)


def evaluate_split(
    model: Recommender,
    data: InteractionData,
    split: Literal["valid", "test"],
    groups: dict[str, ItemGroups],
    cfg: MetricConfig,
    batch_size: int = 1024,
    progress: bool = False,
) -> SplitResult:
    """Rank ``split``'s rows with ``model`` and compute all metrics (the validation step of training)."""
    rows = evaluation_rows(data, split, row_unit(model, cfg))
    return evaluate_ranking(rank(model, rows, max(cfg.ks), batch_size, progress), groups, cfg)


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
    memberships = {kind: groups[kind].membership for kind in cfg.group_kinds}  # all kinds from one hit matrix
    computed = evaluate_topk(topk, truth, item_groups=memberships, history=history, **common)
    metrics = {key: value for key, value in computed.items() if "/" not in key}
    rows = []
    for kind in cfg.group_kinds:
        item_groups = groups[kind]
        for k in cfg.ks:
            for name in GROUP_METRICS:
                metrics[f"{kind}/{name}@{k}"] = computed[f"{kind}/{name}@{k}"]
            for index, group_name in enumerate(item_groups.names):
                utility = computed[f"{kind}/utility@{k}/{index}"]
                gu = computed[f"{kind}/gu@{k}/{index}"]
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

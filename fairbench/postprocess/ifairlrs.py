"""``postprocess=ifairlrs``: IFairLRS's reranking step, in the form METHODS.md 4 proposes.

IFairLRS (Jiang et al., WWW 2024) reranks recommendations "with a punishment term for unfairness"; neither
the paper text available here nor the public code (JiangM-C/IFairLRS, which has no reranker) gives the
formula. fairbench's documented choice:

1. Group unfairness on validation: GU(g)@K = GP_rec(g)@K - GP_ref(g) of the model's own validation lists
   (METHODS.md 2.3, the evaluator's ``<kind>/gu@K/<g>``; K = ``gu_k``, default the largest metric K).
2. Item penalty: pen(i) = mean over the groups g of item i of max(0, GU(g)) (a multi-genre item gets the mean
   over its genres, as IFairLRS weights multi-genre targets; an item in no group is not penalised).
3. Rerank within each row's ``candidates`` best items: s'(i) = s(i) - lambda * pen(i), where s is the
   ranking's score min-max normalised over the row's candidates to [0, 1] (``normalize``; BIGRec's
   popularity adjustment normalises its distances the same way), or 1 - r / (C - 1) from the 0-based rank r
   when the ranking has no scores (full-ranking models, constrained decoding). Ties keep the original order,
   so lambda = 0 returns the model's lists.
4. lambda from the grid ``lambdas``, chosen on the **validation** ranking: the best ``select_on`` value
   (``select_mode`` max or min); the lambdas within ``tolerance`` (relative) of the best count as ties, and
   ties go to the lowest validation MGU@K of the reranked groups, then to the smaller lambda. GU and lambda
   come from validation only and are then applied to test.

Reported in metrics.json: ``postprocess/lambda``, ``postprocess/select_value`` (as popularity_grounding's
``postprocess/gamma`` and ``postprocess/select_value``), and ``postprocess/penalty/<group>`` = max(0, GU(g)).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np

from fairbench.data.groups import group_kind
from fairbench.data.types import ItemGroups
from fairbench.errors import UserError
from fairbench.evaluation import MetricConfig, Ranking, evaluate_ranking
from fairbench.methods.grouping import GroupKind
from fairbench.postprocess.base import PostProcessor

log = logging.getLogger(__name__)

DEFAULT_LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def item_penalties(membership: np.ndarray, gu: np.ndarray) -> np.ndarray:
    """pen(i) [I] = mean over item i's groups of max(0, GU(g)); 0 for items in no group."""
    membership = np.asarray(membership, dtype=np.float64)
    n_groups = membership.sum(1)
    return (membership @ np.maximum(gu, 0.0)) / np.maximum(n_groups, 1.0)


def base_scores(items: np.ndarray, scores: np.ndarray | None, normalize: bool = True) -> np.ndarray:
    """s [R, C]: the scores, min-max normalised per row over its candidates (``normalize``), or
    1 - r / (C - 1) from the rank when there are none; -inf at padding (-1)."""
    valid = items >= 0
    if scores is None:
        width = items.shape[1]
        rank_score = 1.0 - np.arange(width, dtype=np.float64) / max(width - 1, 1)
        out = np.broadcast_to(rank_score, items.shape).copy()
    else:
        out = np.asarray(scores, dtype=np.float64).copy()
        if normalize:
            low = np.where(valid, out, np.inf).min(1, keepdims=True)
            high = np.where(valid, out, -np.inf).max(1, keepdims=True)
            span = high - low
            span = np.where(np.isfinite(span) & (span > 0), span, 1.0)
            out = np.where(valid, (out - np.where(np.isfinite(low), low, 0.0)) / span, 0.0)
    return np.where(valid, out, -np.inf)


def rerank(
    items: np.ndarray, scores: np.ndarray, penalties: np.ndarray, lam: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of every row by s - lam * pen(item) (stable: ties keep the row's order); (items, s')."""
    adjusted = scores - lam * penalties[np.maximum(items, 0)]
    adjusted = np.where(items >= 0, adjusted, -np.inf)
    order = np.argsort(-adjusted, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(items, order, 1), np.take_along_axis(adjusted, order, 1)


class IFairLRSRerank(PostProcessor):
    """Penalise items of over-recommended groups by lambda x max(0, GU) (see the module docstring)."""

    def __init__(
        self,
        groups: GroupKind = "popularity",
        lambdas: list[float] | None = None,
        select_on: str = "ndcg@10",
        select_mode: Literal["max", "min"] = "max",
        tolerance: float = 0.0,
        candidates: int = 100,
        gu_k: int | None = None,
        normalize: bool = True,
    ) -> None:
        if groups is None:
            raise UserError("postprocess.groups: ifairlrs penalises item groups; choose popularity or genre")
        self.groups = groups
        self.group_kind = group_kind(groups, where="postprocess.groups")
        self.lambdas = [float(x) for x in (lambdas if lambdas is not None else DEFAULT_LAMBDAS)]
        if not self.lambdas or min(self.lambdas) < 0:
            raise UserError(f"postprocess.lambdas must list values >= 0, got {self.lambdas}")
        if select_mode not in ("max", "min"):
            raise UserError(f"postprocess.select_mode must be max or min, got {select_mode!r}")
        if tolerance < 0:
            raise UserError(f"postprocess.tolerance must be >= 0, got {tolerance}")
        if candidates < 1:
            raise UserError(f"postprocess.candidates must be >= 1, got {candidates}")
        if gu_k is not None and gu_k < 1:
            raise UserError(f"postprocess.gu_k must be >= 1 or null, got {gu_k}")
        self.select_on, self.select_mode, self.tolerance = select_on, select_mode, tolerance
        self.n_candidates, self.gu_k, self.normalize = candidates, gu_k, normalize
        self.lam: float | None = None
        self.select_value = float("nan")
        self.penalties: np.ndarray | None = None
        self.group_penalties: dict[str, float] = {}

    def candidates(self, k: int) -> int:
        return max(k, self.n_candidates)

    def group_unfairness(self, valid: Ranking, groups: ItemGroups, cfg: MetricConfig, k: int) -> np.ndarray:
        """GU(g)@k [G] of the validation lists, from the evaluator."""
        only = dataclasses.replace(cfg, ks=[k], group_kinds=[self.group_kind])
        metrics = evaluate_ranking(
            dataclasses.replace(valid, items=valid.items[:, :k]), {self.group_kind: groups}, only
        ).metrics
        return np.array([metrics[f"{self.group_kind}/gu@{k}/{name}"] for name in groups.names])

    def fit(self, valid: Ranking, groups: dict[str, ItemGroups], cfg: MetricConfig) -> None:
        if self.group_kind not in groups:
            raise UserError(
                f"postprocess.groups asks for {self.group_kind} groups but the dataset builds only "
                f"{sorted(groups)}"
            )
        kind_groups = groups[self.group_kind]
        k = max(cfg.ks)
        gu = self.group_unfairness(valid, kind_groups, cfg, self.gu_k or k)
        self.penalties = item_penalties(kind_groups.membership, np.nan_to_num(gu))
        self.group_penalties = dict(zip(kind_groups.names, np.maximum(np.nan_to_num(gu), 0.0), strict=True))
        values, fairness = [], []
        mgu_key = f"{self.group_kind}/mgu@{self.gu_k or k}"
        scored = dataclasses.replace(
            cfg,
            ks=sorted({*cfg.ks, self.gu_k or k}),
            group_kinds=list(dict.fromkeys([*cfg.group_kinds, self.group_kind])),
        )
        for lam in self.lambdas:
            metrics = evaluate_ranking(self.apply_lambda(valid, lam, max(scored.ks)), groups, scored).metrics
            if self.select_on not in metrics:
                raise UserError(
                    f"postprocess.select_on={self.select_on!r} is not a metric; choose from "
                    + ", ".join(sorted(m for m in metrics if m.count("/") <= 1))
                )
            values.append(metrics[self.select_on])
            fairness.append(metrics[mgu_key])
        best = self.select(np.array(values, dtype=np.float64), np.array(fairness, dtype=np.float64))
        self.lam, self.select_value = self.lambdas[best], float(values[best])
        log.info(
            "ifairlrs rerank (%s groups): GU@%d on valid %s; lambda=%g (valid %s %.4f, %s %.4f)",
            self.groups,
            self.gu_k or k,
            {name: round(float(x), 4) for name, x in zip(kind_groups.names, gu, strict=True)},
            self.lam,
            self.select_on,
            self.select_value,
            mgu_key,
            fairness[best],
        )

    def select(self, values: np.ndarray, fairness: np.ndarray) -> int:
        """Index of the chosen lambda: best ``select_on`` value; ties within ``tolerance`` (relative) go
        to the lowest validation MGU, then to the smaller lambda."""
        if np.all(np.isnan(values)):
            return int(np.argmin(self.lambdas))
        signed = values if self.select_mode == "max" else -values
        best = np.nanmax(signed)
        tied = np.flatnonzero(signed >= best - self.tolerance * abs(best))
        order = sorted(tied, key=lambda i: (np.nan_to_num(fairness[i], nan=np.inf), self.lambdas[i]))
        return int(order[0])

    def apply_lambda(self, ranking: Ranking, lam: float, k: int) -> Ranking:
        """The ranking reranked with penalty weight ``lam``, cut to ``k``."""
        if self.penalties is None:
            raise RuntimeError("IFairLRSRerank.apply before fit")
        scores = base_scores(ranking.items, ranking.scores, self.normalize)
        items, adjusted = rerank(ranking.items, scores, self.penalties, lam, k)
        return dataclasses.replace(ranking, items=items, scores=adjusted)

    def apply(self, ranking: Ranking, k: int) -> Ranking:
        if self.lam is None:
            raise RuntimeError("IFairLRSRerank.apply before fit")
        return self.apply_lambda(ranking, self.lam, k)

    def chosen(self) -> dict[str, float]:
        out = {
            "lambda": float(self.lam if self.lam is not None else np.nan),
            "select_value": self.select_value,
        }
        return out | {f"penalty/{name}": float(x) for name, x in self.group_penalties.items()}

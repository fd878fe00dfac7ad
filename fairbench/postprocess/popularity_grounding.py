"""``postprocess=popularity_grounding``: BIGRec's popularity-adjusted grounding, gamma chosen on valid.

BIGRec ``data/movie/adjust_pda.py`` re-ranks the grounding distances as

    score(q, i) = (1 + p_i)^(-gamma) * (d(q, i) - min_j d(q, j)) / (max_j d(q, j) - min_j d(q, j))

(p = min-max normalised training popularity; :func:`fairbench.models.grounding.ground_topk`), smaller is
better, so gamma > 0 favours popular items and gamma = 0 is plain grounding. BIGRec scans gamma over a grid
and reports the best test value; here gamma is chosen on the **validation** ranking for ``select_on`` (a
validation metric of the evaluator, e.g. ``ndcg@10``) and then applied to test. BIGRec's own scan selects
HR's gamma by NDCG; fairbench selects on the metric you name. The chosen gamma is reported as
``postprocess/gamma`` (and the validation value as ``postprocess/select_value``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from fairbench.data.types import ItemGroups
from fairbench.errors import UserError
from fairbench.evaluation import MetricConfig, Ranking, evaluate_ranking
from fairbench.models.grounding import ground_topk
from fairbench.postprocess.base import PostProcessor

log = logging.getLogger(__name__)


class PopularityGrounding(PostProcessor):
    """Re-ground generated texts with BIGRec's popularity adjustment; gamma from a grid, chosen on valid."""

    def __init__(
        self, gammas: list[float] | None = None, select_on: str = "ndcg@10", batch_size: int = 1024
    ) -> None:
        self.gammas = [float(g) for g in (gammas if gammas is not None else range(100))]
        if not self.gammas:
            raise UserError("postprocess.gammas must list at least one value (BIGRec scans 0..99)")
        self.select_on, self.batch_size = select_on, batch_size
        self.gamma: float | None = None
        self.select_value = float("nan")

    def required_capabilities(self) -> dict[str, str]:
        return {"grounding": "re-grounds the generated texts of a generate-and-ground model"}

    def _reground(self, ranking: Ranking, gamma: float, k: int) -> Ranking:
        grounding = ranking.grounding
        if grounding is None:
            raise UserError(
                "postprocess=popularity_grounding needs the generations' vectors, which the ranking does not "
                "carry (model.decoding=constrained ranks beams first; use model.decoding=free)"
            )
        exclude = ranking.rows.exclude if ranking.rows.exclude.nnz else None
        items, distances = ground_topk(
            grounding.queries,
            grounding.item_vectors,
            k,
            self.batch_size,
            popularity=grounding.popularity,
            gamma=gamma,
            exclude=exclude,
        )
        return dataclasses.replace(ranking, items=items.numpy(), scores=-distances.numpy())

    def fit(self, valid: Ranking, groups: dict[str, ItemGroups], cfg: MetricConfig) -> None:
        k = max(cfg.ks)
        values = []
        for gamma in self.gammas:
            metrics = evaluate_ranking(self._reground(valid, gamma, k), groups, cfg).metrics
            if self.select_on not in metrics:
                raise UserError(
                    f"postprocess.select_on={self.select_on!r} is not a metric; choose from "
                    + ", ".join(sorted(m for m in metrics if "/" not in m))
                )
            values.append(metrics[self.select_on])
        best = int(np.nanargmax(values)) if not np.all(np.isnan(values)) else 0
        self.gamma, self.select_value = self.gammas[best], float(values[best])
        log.info(
            "popularity grounding: gamma=%g (valid %s %.4f)", self.gamma, self.select_on, self.select_value
        )

    def apply(self, ranking: Ranking, k: int) -> Ranking:
        if self.gamma is None:
            raise RuntimeError("PopularityGrounding.apply before fit")
        return self._reground(ranking, self.gamma, k)

    def chosen(self) -> dict[str, float]:
        return {
            "gamma": float(self.gamma if self.gamma is not None else np.nan),
            "select_value": self.select_value,
        }

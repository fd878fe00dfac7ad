"""``postprocess=none``: the model's own lists are evaluated."""

from __future__ import annotations

import dataclasses

from fairbench.evaluation import Ranking
from fairbench.postprocess.base import PostProcessor


class KeepRanking(PostProcessor):
    """Identity: returns the first ``k`` items of each list."""

    fits_on_validation = False

    def apply(self, ranking: Ranking, k: int) -> Ranking:
        scores = ranking.scores[:, :k] if ranking.scores is not None else None
        return dataclasses.replace(ranking, items=ranking.items[:, :k], scores=scores)

"""The post-processing seam: between ranking and evaluation, selected by the ``postprocess`` config group.

A post-processor sees ranked lists only (:class:`fairbench.evaluation.Ranking`), never the test truth while
it is fitted: :meth:`PostProcessor.fit` gets the validation ranking (with its truth, to choose e.g. a
penalty weight on a validation metric), :meth:`PostProcessor.apply` reorders any ranking. It asks the ranking
stage for ``candidates`` items per row (at least the largest K) and declares what it needs from the model
(:meth:`required_capabilities`), checked before any data is loaded. What it chose is reported as
``postprocess/<name>`` metrics (:meth:`chosen`).
"""

from __future__ import annotations

from fairbench.data.types import ItemGroups
from fairbench.evaluation import MetricConfig, Ranking


class PostProcessor:
    """Base class of rerankers."""

    #: whether :meth:`fit` needs the validation ranking (the identity does not)
    fits_on_validation: bool = True
    #: the item-group kind it needs from the dataset ("pop" or "genre"; checked when data is loaded), or None
    group_kind: str | None = None

    def candidates(self, k: int) -> int:
        """Items per row the ranking stage must return for final lists of ``k``."""
        return k

    def required_capabilities(self) -> dict[str, str]:
        """Model capabilities this post-processor needs, each with the reason (see FairnessMethod)."""
        return {}

    def fit(self, valid: Ranking, groups: dict[str, ItemGroups], cfg: MetricConfig) -> None:
        """Choose settings from the validation ranking (never from test)."""

    def apply(self, ranking: Ranking, k: int) -> Ranking:
        """The reranked top-``k`` lists."""
        raise NotImplementedError

    def chosen(self) -> dict[str, float]:
        """Settings chosen by :meth:`fit`, reported as ``postprocess/<key>`` metrics."""
        return {}

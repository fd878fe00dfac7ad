"""Statistics of ``fairbench report``: paired tests over per-row values, Holm's correction, Pareto fronts.

Paired tests follow Elliot's convention (Anelli et al., SIGIR 2021): a paired Student t-test and a Wilcoxon
signed-rank test of one configuration against a baseline over the same evaluated rows (users or samples),
their p-values corrected for the number of configurations compared with Holm's step-down method.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: metric names where a lower value is better (everything else: higher is better)
LOWER_IS_BETTER = ("cv", "mgu", "dgu", "gini", "arp", "loss")


def lower_is_better(metric: str) -> bool:
    """True for metrics such as ``pop/cv@20``, ``gini@10`` or ``loss`` where smaller values are better."""
    return re.sub(r"@.*", "", metric).rsplit("/", 1)[-1] in LOWER_IS_BETTER


def is_signed_gap(metric: str) -> bool:
    """A group's GU(g)@K (``pop/gu@5/q4``): signed, neither higher nor lower is better (0 is parity)."""
    return re.search(r"(^|/)gu@\d+/", metric) is not None


@dataclass
class PairedTest:
    """Paired comparison of ``values`` against ``baseline`` over the same rows."""

    n: int
    mean_difference: float
    t_pvalue: float
    wilcoxon_pvalue: float


def paired_tests(values: np.ndarray, baseline: np.ndarray) -> PairedTest:
    """Two-sided paired t-test and Wilcoxon signed-rank test (zero differences dropped, exact p-value for
    small samples without ties, normal approximation otherwise: scipy's defaults).

    All differences zero: both p-values are 1 (no evidence of a difference). Fewer than two pairs: NaN.
    """
    values, baseline = np.asarray(values, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if values.shape != baseline.shape:
        raise ValueError(f"paired samples differ in shape: {values.shape} vs {baseline.shape}")
    keep = np.isfinite(values) & np.isfinite(baseline)
    values, baseline = values[keep], baseline[keep]
    n = int(values.size)
    if n < 2:
        return PairedTest(n, float("nan"), float("nan"), float("nan"))
    difference = values - baseline
    if not np.any(difference):
        return PairedTest(n, 0.0, 1.0, 1.0)
    t_pvalue = float(stats.ttest_rel(values, baseline).pvalue)
    wilcoxon_pvalue = float(stats.wilcoxon(values, baseline).pvalue)
    return PairedTest(n, float(difference.mean()), t_pvalue, wilcoxon_pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN and is not counted).

    With the m finite p-values sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def pareto_front(x: Sequence[float], y: Sequence[float], maximize: tuple[bool, bool]) -> np.ndarray:
    """Bool mask of the points no other point dominates (at least as good on both axes, better on one).

    ``maximize`` gives each axis' direction. Points with a NaN coordinate are never on the front. Sort by
    the first axis, then sweep keeping the best second coordinate seen: O(n log n).
    """
    a = np.asarray(x, dtype=np.float64) * (1 if maximize[0] else -1)
    b = np.asarray(y, dtype=np.float64) * (1 if maximize[1] else -1)
    on_front = np.zeros(a.size, dtype=bool)
    valid = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
    best = -np.inf
    order = valid[np.lexsort((-b[valid], -a[valid]))]  # first axis descending, then second descending
    start = 0
    while start < order.size:
        stop = start
        while stop < order.size and a[order[stop]] == a[order[start]]:
            stop += 1
        tied = order[start:stop]
        top = b[tied].max()
        if top > best:
            on_front[tied[b[tied] == top]] = True
            best = top
        start = stop
    return on_front

"""Statistics of `fairbench report`: paired tests against formulas and scipy, Holm by hand, Pareto fronts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from fairbench.report.stats import holm, lower_is_better, paired_tests, pareto_front

BASE = np.array([0.10, 0.25, 0.00, 0.40, 0.30, 0.15, 0.50, 0.05, 0.20, 0.35])
OTHER = np.array([0.12, 0.31, 0.02, 0.39, 0.36, 0.22, 0.58, 0.05, 0.29, 0.46])


def test_paired_t_test_is_the_t_statistic_of_the_differences():
    result = paired_tests(OTHER, BASE)
    d = OTHER - BASE
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert result.t_pvalue == pytest.approx(2 * stats.t.sf(abs(t), df=d.size - 1), rel=1e-12)
    assert result.t_pvalue == pytest.approx(stats.ttest_rel(OTHER, BASE).pvalue, rel=1e-12)
    assert result.n == 10 and result.mean_difference == pytest.approx(d.mean())


def test_wilcoxon_drops_zero_differences_and_is_exact_for_small_samples():
    # one zero difference (0.05 vs 0.05) is dropped; the 9 others: one negative (-0.01, smallest |d|),
    # rank sum of the negatives W- = 1, exact two-sided p = 2 * P(W <= 1) = 2 * 2 / 2^9
    result = paired_tests(OTHER, BASE)
    assert result.wilcoxon_pvalue == pytest.approx(4 / 2**9, rel=1e-12)
    assert result.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(OTHER, BASE).pvalue, rel=1e-12)


def test_paired_tests_edge_cases():
    same = paired_tests(BASE, BASE)
    assert (same.t_pvalue, same.wilcoxon_pvalue) == (1.0, 1.0)
    assert math.isnan(paired_tests(np.array([0.1]), np.array([0.2])).t_pvalue)
    with_nan = paired_tests(np.r_[OTHER, np.nan], np.r_[BASE, 0.3])  # unpaired NaN rows are left out
    assert with_nan.n == 10 and with_nan.t_pvalue == pytest.approx(paired_tests(OTHER, BASE).t_pvalue)


def test_holm_by_hand():
    # m = 4 sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06, 0.04*1 = 0.04
    # -> running max 0.04 0.06 0.06 0.06
    p = [0.03, 0.01, 0.04, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.04, 0.06, 0.06])
    # capped at 1; NaN neither counted nor changed: m = 2 -> 0.3*2 = 0.6, 0.7*1 -> max 0.7
    np.testing.assert_allclose(holm([0.7, float("nan"), 0.3]), [0.7, float("nan"), 0.6])
    np.testing.assert_allclose(holm([0.5, 0.6, 0.9]), [1.0, 1.0, 1.0])
    assert holm([]).size == 0


def brute_force_front(x, y, maximize):
    sx, sy = (1 if maximize[0] else -1), (1 if maximize[1] else -1)
    points = [(sx * a, sy * b) for a, b in zip(x, y, strict=True)]
    front = []
    for i, (a, b) in enumerate(points):
        if math.isnan(a) or math.isnan(b):
            front.append(False)
            continue
        dominated = any(
            c >= a and d >= b and (c > a or d > b)
            for j, (c, d) in enumerate(points)
            if j != i and not (math.isnan(c) or math.isnan(d))
        )
        front.append(not dominated)
    return np.array(front)


def test_pareto_front_on_a_hand_made_set():
    # recall (higher better) vs CV (lower better): A dominates D; B and C trade off; E ties A's recall with a
    # worse CV; F equals C exactly (both on the front); G has no CV
    recall = [0.20, 0.25, 0.15, 0.18, 0.20, 0.15, 0.30]
    cv = [0.50, 0.60, 0.40, 0.55, 0.52, 0.40, float("nan")]
    expected = [True, True, True, False, False, True, False]
    assert pareto_front(recall, cv, (True, False)).tolist() == expected


@pytest.mark.parametrize("maximize", list(itertools.product([True, False], repeat=2)))
def test_pareto_front_equals_brute_force(maximize):
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 25))
        x = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
        y = rng.integers(0, 6, n).astype(float)
        x[rng.random(n) < 0.1] = np.nan
        np.testing.assert_array_equal(pareto_front(x, y, maximize), brute_force_front(x, y, maximize))


def test_metric_directions():
    assert lower_is_better("pop/cv@20") and lower_is_better("genre/mgu@5") and lower_is_better("gini@10")
    assert not lower_is_better("recall@20") and not lower_is_better("pop/min@20")
    assert not lower_is_better("pop/utility@20/tail")


def test_point_labels_merge_coincident_points_and_keep_right_labels_inside():
    from fairbench.report.plots import point_labels

    xs = np.array([0.10, 0.20, 0.20, 0.30, np.nan])
    ys = np.array([0.50, 0.90, 0.90, 0.70, 0.10])
    labels = point_labels(["a", "erm / pop", "erm / genre", "c", "missing"], xs, ys)
    assert [text for text, *_ in labels] == ["a", "erm / pop, erm / genre", "c"]
    assert [align for *_, align in labels] == ["left", "left", "right"]  # c: the right third of the range
    above = point_labels(["upper", "lower", "far"], np.array([0.0, 0.01, 1.0]), np.array([0.51, 0.50, 0.0]))
    assert [offset[1] for _, _, _, offset, _ in above] == [4, -10, 4]  # "lower" sits just below "upper"


def test_labels_name_only_the_overrides_that_split_a_configuration_and_gaps_get_no_arrow():
    from pathlib import Path

    from omegaconf import OmegaConf

    from fairbench.report.document import is_signed_gap
    from fairbench.report.jobs import Job, configuration_labels

    def job(model: str, seed: int, **overrides: str) -> Job:
        return Job(Path("."), OmegaConf.create({}), {"model": model}, {"seed": str(seed)} | overrides, "done")

    jobs = [
        job("bigrec", 0, experiment="bigrec"),
        job("bigrec", 1, experiment="bigrec"),
        job("sasrec", 0, **{"dataset.protocol.max_train_samples": "128"}),
        job("mf", 0),
        job("mf", 0, **{"model.loss": "infonce"}),
    ]
    assert [label for _, label in configuration_labels(jobs, ["model"])] == [
        "bigrec",
        "bigrec",
        "sasrec",
        "mf",
        "mf [model.loss=infonce]",
    ]
    assert is_signed_gap("pop/gu@5/q4") and is_signed_gap("gu@10/head")
    assert not any(map(is_signed_gap, ["pop/mgu@5", "pop/dgu@5", "genre/cv@20", "recall@20"]))


def test_the_same_scatter_drawn_twice_gives_the_same_files(tmp_path):
    """Results pages are rebuilt by a script: redrawing unchanged numbers must not change the figures' bytes
    (no creation date, fixed SVG element ids)."""
    import pandas as pd

    from fairbench.report.plots import pareto_scatter

    table = pd.DataFrame(
        {
            "configuration": ["erm", "bifair", "popdro"],
            "recall@20": [0.26, 0.20, 0.22],
            "pop/cv@20": [0.68, 0.17, 0.35],
        }
    )
    first = [tmp_path / "a" / "pareto.svg", tmp_path / "a" / "pareto.png"]
    second = [tmp_path / "b" / "pareto.svg", tmp_path / "b" / "pareto.png"]
    pareto_scatter(table, "recall@20", "pop/cv@20", first)
    pareto_scatter(table, "recall@20", "pop/cv@20", second)
    for one, other in zip(first, second, strict=True):
        assert one.read_bytes() == other.read_bytes()
    assert b"<dc:date>" not in first[0].read_bytes()

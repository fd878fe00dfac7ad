"""Metrics against ranx, hand computations (METHODS 2.1-2.4) and a per-user loop reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from fairbench.errors import UserError
from fairbench.metrics import (
    bottom_quartile_mean,
    coefficient_of_variation,
    evaluate_topk,
    gini_index,
    group_utilities,
    hit_matrix,
    long_tail_mask,
)

LOG2_3 = math.log2(3)


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR [len(rows), n_items] with ones at the listed items of every row."""
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    users = np.array([u for u, _ in data], dtype=np.int64)
    items = np.array([i for _, i in data], dtype=np.int64)
    return sp.csr_matrix((np.ones(len(data), np.float32), (users, items)), shape=(len(rows), n_items))


def random_fixture(seed: int, n_users: int = 60, n_items: int = 40, width: int = 12):
    """Random lists (trailing -1 padding, some all-padding), truth with |R| from 0 to 20 (> and < K)."""
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    n_real = rng.integers(0, width + 1, n_users)
    topk[np.arange(width)[None, :] >= n_real[:, None]] = -1
    truth_rows = [
        sorted(rng.choice(n_items, size=int(rng.integers(0, 21)), replace=False).tolist())
        for _ in range(n_users)
    ]
    truth_rows[0], truth_rows[1] = [], []  # users without truth are skipped
    return topk, csr(truth_rows, n_items), truth_rows


# --------------------------------------------------------------------------- accuracy vs ranx


def test_accuracy_matches_ranx():
    # ranx's metric functions on typed lists of [n, 2] (id, score) arrays, best first: the same code that
    # ranx.evaluate runs after sorting a Run, without its slow Qrels/Run conversion. ranx "ndcg" is the
    # Järvelin form rel / log2(r + 1) (binary relevance here), "hit_rate" is HR.
    from numba.typed import List
    from ranx.metrics import hit_rate, ndcg, recall

    topk, truth, truth_rows = random_fixture(seed=0)
    ks = (1, 5, 10, 15)  # 15 > topk width 12: missing positions count as padding
    ours = evaluate_topk(topk, truth, ks=ks)

    evaluated = [u for u, items in enumerate(truth_rows) if items]
    qrels = List([np.array([[i, 1.0] for i in truth_rows[u]], dtype=np.float64) for u in evaluated])
    runs = List(
        [
            np.array([[i, len(row) - r] for r, i in enumerate(row) if i >= 0], dtype=np.float64).reshape(
                -1, 2
            )
            for row in (topk[u] for u in evaluated)
        ]
    )
    for k in ks:
        assert ours[f"recall@{k}"] == pytest.approx(recall(qrels, runs, k).mean(), abs=1e-12)
        assert ours[f"ndcg@{k}"] == pytest.approx(ndcg(qrels, runs, k).mean(), abs=1e-12)
        assert ours[f"hr@{k}"] == pytest.approx(hit_rate(qrels, runs, k).mean(), abs=1e-12)


def test_narrow_topk_equals_explicit_padding_and_empty_truth_users_are_ignored():
    topk, truth, _ = random_fixture(seed=1)
    padded = np.concatenate([topk, np.full((topk.shape[0], 8), -1)], axis=1)
    assert evaluate_topk(topk, truth, ks=(5, 20)) == evaluate_topk(padded, truth, ks=(5, 20))
    changed = topk.copy()
    changed[:2] = np.arange(12)  # rows 0 and 1 have no truth: their lists must not matter
    assert evaluate_topk(changed, truth, ks=(5, 10)) == evaluate_topk(topk, truth, ks=(5, 10))


def test_hit_matrix_marks_relevant_positions_and_never_padding():
    truth = csr([[1, 3], [0], []], n_items=4)
    topk = np.array([[3, 0, -1], [-1, 0, 2], [0, 1, 2]])
    expected = np.array([[True, False, False], [False, True, False], [False, False, False]])
    np.testing.assert_array_equal(hit_matrix(topk, truth), expected)


# --------------------------------------------------------------------------- group utility, CV, MIN

# Two popularity-like groups: group 0 = items {0, 1}, group 1 = items {2, 3, 4, 5}.
TWO_GROUPS = np.zeros((6, 2), dtype=bool)
TWO_GROUPS[[0, 1], 0] = True
TWO_GROUPS[[2, 3, 4, 5], 1] = True
TWO_TRUTH = csr([[0, 2, 3], [1], [4, 5], []], n_items=6)
TWO_TOPK = np.array([[0, 2, 5], [4, 1, 0], [1, 0, 3], [0, 1, 2]])
# K=2: u0 R_0={0} R_1={2,3}, L={0,2}: utility(u0,0)=1, utility(u0,1)=1/2; u1 R_0={1}, L={4,1}: utility 1;
# u2 R_1={4,5}, L={1,0}: utility 0; u3 has no truth and is skipped.


def test_two_groups_recall_relevant_normalization():
    result = evaluate_topk(TWO_TOPK, TWO_TRUTH, TWO_GROUPS, ks=(2,))
    assert result["utility@2/0"] == pytest.approx(1.0)  # mean(1, 1)
    assert result["utility@2/1"] == pytest.approx(0.25)  # mean(1/2, 0)
    assert result["cv@2"] == pytest.approx(0.375 / 0.625)  # std(1, .25) / mean(1, .25)
    assert result["min@2"] == pytest.approx(0.25)  # max(1, floor(2/4)) = 1 lowest group
    assert result["recall@2"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["ndcg@2"] == pytest.approx((1 + 1 / LOG2_3) / 3)
    assert result["hr@2"] == pytest.approx(2 / 3)


def test_two_groups_all_normalization_divides_by_every_user_with_truth():
    result = evaluate_topk(TWO_TOPK, TWO_TRUTH, TWO_GROUPS, ks=(2,), group_normalization="all")
    assert result["utility@2/0"] == pytest.approx(2 / 3)
    assert result["utility@2/1"] == pytest.approx(0.5 / 3)
    assert result["cv@2"] == pytest.approx(0.25 / (5 / 12))
    assert result["min@2"] == pytest.approx(1 / 6)


def test_two_groups_ndcg_and_hr_utilities():
    ndcg = evaluate_topk(TWO_TOPK, TWO_TRUTH, TWO_GROUPS, ks=(2,), utility="ndcg")
    # u0 group 1: item 2 at rank 2, IDCG over min(2, |R_1|=2) ranks; u1 group 0: item 1 at rank 2, IDCG 1.
    assert ndcg["utility@2/0"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    assert ndcg["utility@2/1"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3) / 2)
    hr = evaluate_topk(TWO_TOPK, TWO_TRUTH, TWO_GROUPS, ks=(2,), utility="hr")
    assert hr["utility@2/0"] == pytest.approx(1.0)
    assert hr["utility@2/1"] == pytest.approx(0.5)
    assert hr["min@2"] == pytest.approx(0.5)
    assert hr["recall@2"] == ndcg["recall@2"]  # the utility only changes the group metrics


def test_five_groups_cv_and_min():
    groups = np.eye(5, dtype=bool)  # group g = {item g}
    truth = csr([[0, 1], [1, 3, 4], [0, 2, 3]], n_items=5)
    topk = np.array([[0, 2], [1, 4], [3, 0]])
    result = evaluate_topk(topk, truth, groups, ks=(2,))
    expected = [1.0, 0.5, 0.0, 0.5, 1.0]
    assert [result[f"utility@2/{g}"] for g in range(5)] == pytest.approx(expected)
    assert result["cv@2"] == pytest.approx(math.sqrt(0.14) / 0.6)
    assert result["min@2"] == pytest.approx(0.0)  # floor(5/4) = 1 lowest group
    every = evaluate_topk(topk, truth, groups, ks=(2,), group_normalization="all")
    assert [every[f"utility@2/{g}"] for g in range(5)] == pytest.approx([2 / 3, 1 / 3, 0, 1 / 3, 1 / 3])


def test_group_without_held_out_items_is_nan_and_left_out_of_cv_and_min():
    groups = np.eye(5, dtype=bool)
    truth = csr([[0, 1], [1, 3, 4], [0, 3]], n_items=5)  # nobody holds out item 2
    topk = np.array([[0, 2], [1, 4], [3, 0]])
    with pytest.warns(RuntimeWarning, match=r"item groups \[2\]"):
        result = evaluate_topk(topk, truth, groups, ks=(2,))
    assert math.isnan(result["utility@2/2"])
    assert result["cv@2"] == pytest.approx(0.25 / 0.75)  # over [1, .5, .5, 1]
    assert result["min@2"] == pytest.approx(0.5)  # floor(4/4) = 1 of the 4 remaining groups
    with pytest.warns(RuntimeWarning):
        table = group_utilities(topk, truth, groups, ks=(2,))
    np.testing.assert_allclose(table, [[1.0, 0.5, np.nan, 0.5, 1.0]])


def test_cv_and_bottom_quartile_mean_building_blocks():
    values = np.array([0.1, 0.4, 0.2, 0.8, 0.3, 0.6, 0.5, 0.7])
    assert coefficient_of_variation(values) == pytest.approx(np.std(values) / np.mean(values))
    assert bottom_quartile_mean(values) == pytest.approx((0.1 + 0.2) / 2)  # floor(8/4) = 2 lowest
    assert bottom_quartile_mean(np.array([0.3, np.nan, 0.1])) == pytest.approx(0.1)
    assert math.isnan(coefficient_of_variation(np.zeros(3)))
    assert math.isnan(bottom_quartile_mean(np.array([np.nan])))


# --------------------------------------------------------------------------- GU, MGU, DGU

# Multi-genre items: 0 in {g0, g1}, 1 in {g1}, 2 in {g2}, 3 in {g0, g1, g2}.
GENRES = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=bool)


def test_gu_mgu_dgu_with_multi_genre_items():
    history = csr([[0, 1], [1, 2, 3]], n_items=4)  # popularity [1, 2, 1, 1]
    # GP_ref: g0 = 1 + 1, g1 = 1 + 2 + 1, g2 = 1 + 1 over 8 memberships = [1/4, 1/2, 1/4].
    truth = csr([[0], [2], []], n_items=4)
    topk = np.array([[3, 2], [0, -1], [1, 0]])  # user 2 has no truth: not part of GP_rec
    result = evaluate_topk(topk, truth, GENRES, history, ks=(1, 2))
    # K=2: items 3, 2, 0 -> g0: 2, g1: 2, g2: 2 memberships -> GP_rec = [1/3, 1/3, 1/3].
    gu2 = [1 / 3 - 1 / 4, 1 / 3 - 1 / 2, 1 / 3 - 1 / 4]
    assert [result[f"gu@2/{g}"] for g in range(3)] == pytest.approx(gu2)
    assert result["mgu@2"] == pytest.approx(1 / 9)
    assert result["dgu@2"] == pytest.approx(1 / 4)
    # K=1: items 3, 0 -> g0: 2, g1: 2, g2: 1 of 5 -> GP_rec = [.4, .4, .2].
    assert [result[f"gu@1/{g}"] for g in range(3)] == pytest.approx([0.15, -0.1, -0.05])
    assert result["mgu@1"] == pytest.approx(0.1)
    assert result["dgu@1"] == pytest.approx(0.25)


# --------------------------------------------------------------------------- coverage, gini, ARP, APLT


def test_coverage_gini_arp_aplt_by_hand():
    history = csr([[0, 1, 2], [0, 1, 3], [0, 1], [0], [0]], n_items=5)  # popularity [5, 3, 1, 1, 0]
    # Short head: 5 + 3 = 8 >= 0.8 * 10 -> head {0, 1}, long tail {2, 3, 4}.
    truth = csr([[0], [1], [2], []], n_items=5)
    topk = np.array([[0, 2, 4], [1, 3, -1], [-1, -1, -1], [2, 3, 4]])  # user 3: no truth, ignored
    result = evaluate_topk(topk, truth, history=history, ks=(1, 3))
    assert result["coverage@3"] == pytest.approx(1.0)
    assert result["coverage@1"] == pytest.approx(2 / 5)
    assert result["gini@3"] == pytest.approx(0.0)
    assert result["gini@1"] == pytest.approx(0.6)  # counts [0, 0, 0, 1, 1]: (2*4-6 + 2*5-6) / (5*2)
    assert result["arp@3"] == pytest.approx((6 / 3 + 4 / 2) / 2)  # real items only; user 2 left out
    assert result["arp@1"] == pytest.approx((5 + 3) / 2)
    assert result["aplt@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)  # divides by K; padding is no tail
    assert result["aplt@1"] == pytest.approx(0.0)


def test_long_tail_ties_go_to_the_head_by_lower_index():
    np.testing.assert_array_equal(long_tail_mask(np.array([2, 2, 2, 2, 2])), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(long_tail_mask(np.array([0, 1, 3, 3, 3])), [1, 1, 0, 0, 0])


def test_gini_extremes():
    assert gini_index(np.array([4, 4, 4, 4])) == pytest.approx(0.0)
    assert gini_index(np.array([0, 0, 0, 7])) == pytest.approx(3 / 4)  # (I - 1) / I


def test_keys_appear_only_with_their_inputs():
    topk, truth, _ = random_fixture(seed=2, n_items=40)
    base = evaluate_topk(topk, truth, ks=(5, 10))
    assert set(base) == {f"{m}@{k}" for m in ("recall", "ndcg", "hr", "coverage", "gini") for k in (5, 10)}
    groups = np.random.default_rng(0).random((40, 3)) < 0.5
    with_groups = evaluate_topk(topk, truth, groups, ks=(5,))
    assert {"cv@5", "min@5", "utility@5/2"} <= set(with_groups)
    assert not {"mgu@5", "arp@5", "aplt@5"} & set(with_groups)
    history = csr([[0, 1, 2], [3, 4]], n_items=40)
    assert {"arp@5", "aplt@5"} <= set(evaluate_topk(topk, truth, history=history, ks=(5,)))
    assert {"mgu@5", "dgu@5", "gu@5/0"} <= set(evaluate_topk(topk, truth, groups, history, ks=(5,)))


def test_bad_inputs():
    truth = csr([[0], [1]], n_items=3)
    with pytest.raises(ValueError, match="more than once"):
        evaluate_topk(np.array([[0, 0], [1, 2]]), truth, ks=(2,))
    with pytest.raises(ValueError, match="rows"):
        evaluate_topk(np.array([[0, 1]]), truth, ks=(2,))
    with pytest.raises(ValueError, match="outside"):
        evaluate_topk(np.array([[0, 3], [1, 2]]), truth, ks=(2,))
    with pytest.raises(UserError, match="utility"):
        evaluate_topk(np.array([[0, 1], [1, 2]]), truth, ks=(2,), utility="mrr")
    with pytest.raises(UserError, match="group_normalization"):
        evaluate_topk(np.array([[0, 1], [1, 2]]), truth, ks=(2,), group_normalization="users")
    with pytest.raises(UserError, match="K=0"):
        evaluate_topk(np.array([[0, 1], [1, 2]]), truth, ks=(0, 2))


# --------------------------------------------------------------------------- properties


def reference_group_utilities(topk, truth_rows, groups, ks, utility, normalization):
    """Per-user loop over METHODS 2.2, independent of the vectorised code."""
    evaluated = [u for u, items in enumerate(truth_rows) if items]
    table = np.full((len(ks), groups.shape[1]), np.nan)
    for k_index, k in enumerate(ks):
        for g in range(groups.shape[1]):
            values = []
            for u in evaluated:
                relevant = {i for i in truth_rows[u] if groups[i, g]}
                if not relevant:
                    continue
                ranked = [int(i) for i in topk[u, :k]]
                hit_ranks = [r for r, i in enumerate(ranked, start=1) if i in relevant]
                if utility == "recall":
                    values.append(len(hit_ranks) / len(relevant))
                elif utility == "hr":
                    values.append(float(bool(hit_ranks)))
                else:
                    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(k, len(relevant)) + 1))
                    values.append(sum(1 / math.log2(r + 1) for r in hit_ranks) / ideal)
            if values:
                table[k_index, g] = sum(values) / (
                    len(values) if normalization == "relevant" else len(evaluated)
                )
    return table


@st.composite
def fixtures(draw):
    n_users = draw(st.integers(1, 7))
    n_items = draw(st.integers(1, 9))
    width = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    topk = np.full((n_users, width), -1, dtype=np.int64)
    for u in range(n_users):
        row = rng.permutation(n_items)[: rng.integers(0, min(width, n_items) + 1)]
        topk[u, : row.size] = row
        topk[u] = topk[u, rng.permutation(width)] if rng.random() < 0.3 else topk[u]  # padding mid-list
    truth_rows = [
        sorted(rng.choice(n_items, size=int(rng.integers(0, n_items + 1)), replace=False).tolist())
        for _ in range(n_users)
    ]
    groups = rng.random((n_items, int(rng.integers(1, 5)))) < 0.5
    history = sp.csr_matrix((rng.random((3, n_items)) < 0.5).astype(np.float32))
    return topk, truth_rows, csr(truth_rows, n_items), groups, history


def same_results(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key], abs=1e-12) for key in a
    )


PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)


@PROPERTY_SETTINGS
@given(fixtures(), st.sampled_from(["recall", "ndcg", "hr"]), st.sampled_from(["relevant", "all"]))
def test_group_utilities_match_per_user_loop(fixture, utility, normalization):
    topk, truth_rows, truth, groups, _ = fixture
    ks = (1, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = group_utilities(topk, truth, groups, ks, utility, normalization)
    expected = reference_group_utilities(topk, truth_rows, groups, ks, utility, normalization)
    np.testing.assert_allclose(table, expected, atol=1e-12)


@PROPERTY_SETTINGS
@given(fixtures(), st.integers(0, 2**31 - 1))
def test_invariant_to_permuting_users(fixture, seed):
    topk, _, truth, groups, history = fixture
    order = np.random.default_rng(seed).permutation(topk.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        original = evaluate_topk(topk, truth, groups, history, ks=(1, 3))
        permuted = evaluate_topk(topk[order], truth[order], groups, history, ks=(1, 3))
    assert same_results(original, permuted)


@PROPERTY_SETTINGS
@given(fixtures())
def test_recall_monotone_in_k_and_bounded_values(fixture):
    topk, _, truth, groups, history = fixture
    ks = (1, 2, 3, 4, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = evaluate_topk(topk, truth, groups, history, ks=ks)
    recalls = [result[f"recall@{k}"] for k in ks]
    if not math.isnan(recalls[0]):
        assert all(b >= a - 1e-12 for a, b in zip(recalls, recalls[1:], strict=False))
    bounded = ("recall@", "ndcg@", "hr@", "coverage@", "gini@", "aplt@", "utility@", "min@", "mgu@")
    for key, value in result.items():
        if key.startswith(bounded) and not math.isnan(value):
            assert -1e-12 <= value <= 1 + 1e-12, key
        if key.startswith(("dgu@", "gu@")) and not math.isnan(value):
            assert -1 - 1e-12 <= value <= 2 + 1e-12, key


@PROPERTY_SETTINGS
@given(fixtures(), st.sampled_from(["recall", "ndcg", "hr"]), st.sampled_from(["relevant", "all"]))
def test_single_group_with_all_items_equals_overall_utility(fixture, utility, normalization):
    topk, _, truth, _, _ = fixture
    everything = np.ones((truth.shape[1], 1), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no user with truth: the group is empty
        result = evaluate_topk(
            topk, truth, everything, ks=(1, 3), utility=utility, group_normalization=normalization
        )
    for k in (1, 3):
        overall = result[f"{utility}@{k}"]
        group = result[f"utility@{k}/0"]
        assert (math.isnan(overall) and math.isnan(group)) or group == pytest.approx(overall, abs=1e-12)


# --------------------------------------------------------------------------- several group kinds in one call


def separate_calls(topk, truth, kinds: dict, history, **common) -> dict[str, float]:
    """What evaluation.metrics_from_topk did: one call without groups, then one call per group kind."""
    expected = dict(evaluate_topk(topk, truth, history=history, **common))
    for kind, groups in kinds.items():
        grouped = evaluate_topk(topk, truth, item_groups=groups, history=history, **common)
        expected.update({f"{kind}/{key}": value for key, value in grouped.items() if key not in expected})
    return expected


def identical(a: dict[str, float], b: dict[str, float]) -> bool:
    """Same keys and bit-identical values (NaN equals NaN)."""
    return a.keys() == b.keys() and all(
        (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == b[key] for key in a
    )


@PROPERTY_SETTINGS
@given(
    fixtures(),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["recall", "ndcg", "hr"]),
    st.sampled_from(["relevant", "all"]),
    st.booleans(),
)
def test_group_kinds_in_one_call_equal_separate_calls(fixture, seed, utility, normalization, with_history):
    """One call with {kind: membership} gives exactly (not approximately) the values of the separate calls."""
    topk, _, truth, groups, history = fixture
    rng = np.random.default_rng(seed)
    kinds = {"pop": groups, "genre": rng.random((truth.shape[1], int(rng.integers(1, 6)))) < 0.4}
    history = history if with_history else None
    common = dict(ks=(1, 2, 5), utility=utility, group_normalization=normalization)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        combined = evaluate_topk(topk, truth, item_groups=kinds, history=history, **common)
        expected = separate_calls(topk, truth, kinds, history, **common)
    assert identical(combined, expected)


def test_group_kinds_keys_and_warnings_name_the_kind():
    truth = csr([[0, 1], [1, 3, 4], [0, 3]], n_items=5)  # nobody holds out item 2
    topk = np.array([[0, 2], [1, 4], [3, 0]])
    history = csr([[0, 1, 2], [0]], n_items=5)
    kinds = {"genre": np.eye(5, dtype=bool), "pop": np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]])}
    with pytest.warns(RuntimeWarning, match=r"genre item groups \[2\]"):
        result = evaluate_topk(topk, truth, kinds, history, ks=(1, 2))
    single = evaluate_topk(topk, truth, kinds["pop"], history, ks=(1, 2))
    for k in (1, 2):
        for name in ("cv", "min", "mgu", "dgu"):
            assert result[f"pop/{name}@{k}"] == single[f"{name}@{k}"]
            assert f"genre/{name}@{k}" in result and f"{name}@{k}" not in result
        assert [key for key in result if key.startswith(f"genre/utility@{k}/")] == [
            f"genre/utility@{k}/{g}" for g in range(5)
        ]
        assert result[f"pop/gu@{k}/1"] == single[f"gu@{k}/1"]
    assert identical(evaluate_topk(topk, truth, {}, history), evaluate_topk(topk, truth, None, history))
    for bad in ("", "a/b", 3):
        with pytest.raises(ValueError, match="kind"):
            evaluate_topk(topk, truth, {bad: kinds["pop"]}, ks=(2,))
    with pytest.raises(ValueError, match="membership"):
        evaluate_topk(topk, truth, {"pop": np.ones((4, 2), bool)}, ks=(2,))

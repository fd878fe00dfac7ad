"""full_ranking_topk and select_topk against a dense numpy reference with the same tie rule (score desc, lower
index) and against the legacy implementation of that rule; masking without a copy; the ranking benchmark
script."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairbench.errors import UserError
from fairbench.metrics import full_ranking_topk, ranking, select_topk


def reference_topk(scores: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Per row: non-excluded items scored above -inf, sorted by (-score, item index); first k, -1 pads."""
    result = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for row in range(scores.shape[0]):
        candidates = np.flatnonzero(~excluded[row] & (scores[row] > -np.inf))
        ordered = candidates[np.lexsort((candidates, -scores[row, candidates]))][:k]
        result[row, : ordered.size] = ordered
    return result


def lookup(scores: np.ndarray):
    """score_fn that reads each user's row of a fixed score matrix (the same row in any batch)."""
    table = torch.from_numpy(scores)

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        assert users.dtype == torch.long and users.ndim == 1
        return table[users]

    return score_fn


def tied_problem(seed: int, n_users: int = 50, n_items: int = 30):
    """Integer scores in 0..4 (many ties), some -inf, about 30% of items excluded per user."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, (n_users, n_items)).astype(np.float32)
    scores[rng.random((n_users, n_items)) < 0.05] = -np.inf
    excluded = rng.random((n_users, n_items)) < 0.3
    return scores, excluded


@pytest.mark.parametrize("batch_size", [1, 4, 13, 1024])
def test_matches_dense_reference_with_ties_for_any_batch_size(batch_size):
    scores, excluded = tied_problem(seed=0)
    users = np.random.default_rng(1).choice(50, size=40, replace=True)  # any order, repeats allowed
    topk = full_ranking_topk(lookup(scores), users, sp.csr_matrix(excluded), k=7, batch_size=batch_size)
    assert topk.dtype == np.int64 and topk.shape == (40, 7)
    np.testing.assert_array_equal(topk, reference_topk(scores[users], excluded[users], k=7))


def test_masked_items_never_returned():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((100, 200)).astype(np.float32)
    excluded = rng.random((100, 200)) < 0.5
    scores[excluded] += 100.0  # masked items would otherwise top every list
    topk = full_ranking_topk(lookup(scores), np.arange(100), sp.csr_matrix(excluded), k=50, batch_size=32)
    rows = np.repeat(np.arange(100), 50)
    assert not excluded[rows, topk.ravel()].any()
    np.testing.assert_array_equal(topk, reference_topk(scores, excluded, k=50))


def test_pads_with_minus_one_when_too_few_rankable_items():
    scores = np.array([[0.5, 0.9, 0.1, 0.7, 0.3], [1.0, 1.0, 1.0, -np.inf, 1.0]], dtype=np.float32)
    excluded = sp.csr_matrix(np.array([[1, 0, 0, 1, 1], [0, 1, 0, 0, 0]], dtype=np.float32))
    topk = full_ranking_topk(lookup(scores), np.array([0, 1]), excluded, k=4)
    np.testing.assert_array_equal(topk, [[1, 2, -1, -1], [0, 2, 4, -1]])
    wider = full_ranking_topk(lookup(scores), np.array([0, 1]), sp.csr_matrix((2, 5)), k=7)
    np.testing.assert_array_equal(wider, [[1, 3, 0, 4, 2, -1, -1], [0, 1, 2, 4, -1, -1, -1]])


def test_explicit_zeros_in_exclude_do_not_mask():
    excluded = sp.csr_matrix((np.array([0.0, 1.0]), (np.array([0, 0]), np.array([0, 1]))), shape=(1, 3))
    scores = np.array([[3.0, 2.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        full_ranking_topk(lookup(scores), np.array([0]), excluded, k=3), [[0, 2, -1]]
    )


def test_half_precision_scores_rank_like_their_float32_values():
    rng = np.random.default_rng(3)
    scores = (rng.standard_normal((20, 64)) * 0.01).astype(np.float16)  # coarse: many exact ties
    excluded = rng.random((20, 64)) < 0.2
    topk = full_ranking_topk(lookup(scores), np.arange(20), sp.csr_matrix(excluded), k=10, batch_size=3)
    np.testing.assert_array_equal(topk, reference_topk(scores.astype(np.float32), excluded, k=10))


def test_inputs_are_checked_and_scores_are_not_modified():
    scores = np.zeros((2, 3), dtype=np.float32)
    original = scores.copy()
    excluded = sp.csr_matrix(np.eye(2, 3, dtype=np.float32))
    full_ranking_topk(lookup(scores), np.array([0, 1]), excluded, k=2)
    np.testing.assert_array_equal(scores, original)  # masking works on a copy
    assert full_ranking_topk(lookup(scores), np.array([], dtype=np.int64), excluded, k=2).shape == (0, 2)
    with pytest.raises(UserError, match="k=0"):
        full_ranking_topk(lookup(scores), np.array([0]), excluded, k=0)
    with pytest.raises(UserError, match="batch_size"):
        full_ranking_topk(lookup(scores), np.array([0]), excluded, k=1, batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        full_ranking_topk(lookup(scores), np.array([0]), sp.csr_matrix((2, 4)), k=1)
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_topk(lookup(np.full((2, 3), np.nan, np.float32)), np.array([0]), excluded, k=1)


@settings(max_examples=50, deadline=None)
@given(
    n_users=st.integers(1, 8),
    n_items=st.integers(1, 12),
    k=st.integers(1, 14),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_equals_reference_and_ignores_batch_size(n_users, n_items, k, batch_size, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-2, 3, (n_users, n_items)).astype(np.float64)
    scores[rng.random((n_users, n_items)) < 0.1] = -np.inf
    excluded = rng.random((n_users, n_items)) < 0.3
    users = rng.integers(0, n_users, size=int(rng.integers(0, 10)))
    exclude = sp.csr_matrix(excluded)
    topk = full_ranking_topk(lookup(scores), users, exclude, k=k, batch_size=batch_size)
    np.testing.assert_array_equal(topk, reference_topk(scores[users], excluded[users], k))
    np.testing.assert_array_equal(
        topk, full_ranking_topk(lookup(scores), users, exclude, k=k, batch_size=1000)
    )


# --------------------------------------------------------------------------- the tie rule of select_topk


def legacy_select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The rule as first implemented (kept as the reference): topk(k), a full ``scores >= t`` count per row to
    find rows tied at the cut t, and an index-ordered selection of the tied rows."""
    n_rows, n_items = scores.shape
    take = min(k, n_items)
    output = torch.full((n_rows, k), -1, dtype=torch.long)
    if n_rows == 0 or take == 0:
        return output
    values, items = torch.topk(scores, take, dim=1)
    if torch.isnan(values).any():
        raise ValueError("NaN")
    threshold = values[:, -1:]
    ambiguous = (threshold[:, 0] > float("-inf")) & ((scores >= threshold).sum(dim=1) > take)
    items, by_index = torch.sort(items, dim=1)
    values = torch.gather(values, 1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    chosen = torch.gather(items, 1, order)
    chosen[torch.gather(values, 1, order) == float("-inf")] = -1
    if ambiguous.any():
        rows = ambiguous.nonzero().squeeze(1)
        tied, t = scores[rows], threshold[rows]
        above, at_t = tied > t, tied == t
        room = take - above.sum(dim=1, keepdim=True)
        selected = above | (at_t & (torch.cumsum(at_t, dim=1) <= room))
        sel_rows, sel_items = selected.nonzero(as_tuple=True)
        sel_items = sel_items.view(-1, take)
        sel_values = tied[sel_rows, sel_items.reshape(-1)].view(-1, take)
        by_score = torch.sort(sel_values, dim=1, descending=True, stable=True).indices
        chosen[rows] = torch.gather(sel_items, 1, by_score)
    output[:, :take] = chosen
    return output


@settings(max_examples=150, deadline=None)
@given(
    n_rows=st.integers(0, 12),
    n_items=st.integers(1, 40),
    k=st.integers(1, 45),
    levels=st.integers(1, 4),
    inf_share=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    chunk=st.sampled_from([1, 7, 1 << 22]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_tie_rule_equals_legacy_rule(n_rows, n_items, k, levels, inf_share, dtype, chunk, seed):
    """select_topk's tie test from topk(k+1) gives exactly the legacy output on tie-heavy blocks (a few
    score levels, -inf, +inf, whole rows of one value), whatever the chunking of the tie path."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n_rows, n_items)).astype(np.float64)
    scores[rng.random((n_rows, n_items)) < inf_share * 0.5] = -np.inf
    scores[rng.random((n_rows, n_items)) < 0.05] = np.inf
    block = torch.from_numpy(scores).to(dtype)
    original = block.clone()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ranking, "TIE_CHUNK_ENTRIES", chunk)
        chosen = select_topk(block, k)
    np.testing.assert_array_equal(chosen.numpy(), legacy_select_topk(block, k).numpy())
    np.testing.assert_array_equal(chosen.numpy(), reference_topk(scores, np.zeros_like(scores, bool), k))
    assert torch.equal(block, original)


def test_tie_rule_on_random_float_blocks_and_cut_at_every_position():
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.standard_normal((64, 300)).astype(np.float32))
    scores[::3, 100:200] = scores[::3, 150:151]  # rows with a 100-way tie somewhere in the list
    for k in (1, 5, 20, 299, 300, 301):
        np.testing.assert_array_equal(select_topk(scores, k).numpy(), legacy_select_topk(scores, k).numpy())


# --------------------------------------------------------------------------- masking without a copy


def stored_scores(kind: str, scores: np.ndarray, inference: bool = True):
    """score_fn returning views of a stored table (the caller's memory) in several layouts; the table is an
    inference tensor (masked in place, then restored) or a normal one (masked in a copy)."""
    with torch.inference_mode(inference):
        table = torch.from_numpy(scores.copy())
        transposed = torch.from_numpy(np.ascontiguousarray(scores.T)).T  # same values, column-major memory

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        if kind == "slice":  # users are 0..B-1 in one batch: a plain view of the table
            return table[: users.numel()]
        if kind == "transposed":
            return transposed[: users.numel()]
        return table[:1].expand(users.numel(), -1)  # entries share memory: cannot be masked in place

    return score_fn, (table, transposed)


@pytest.mark.parametrize("inference", [True, False])
@pytest.mark.parametrize("kind", ["slice", "transposed", "expanded"])
def test_stored_scores_are_masked_and_restored(kind, inference):
    scores, excluded = tied_problem(seed=7, n_users=12, n_items=30)
    if kind == "expanded":
        scores = np.repeat(scores[:1], 12, axis=0)
    score_fn, stored = stored_scores(kind, scores, inference)
    before = [tensor.clone() for tensor in stored]
    versions = [tensor._version for tensor in stored] if not inference else None
    topk = full_ranking_topk(score_fn, np.arange(12), sp.csr_matrix(excluded), k=9, batch_size=12)
    np.testing.assert_array_equal(topk, reference_topk(scores, excluded, k=9))
    assert all(torch.equal(tensor, copy) for tensor, copy in zip(stored, before, strict=True))
    if not inference:  # a normal tensor is never written to (its autograd version is unchanged)
        assert [tensor._version for tensor in stored] == versions


def test_scorer_blocks_are_masked_without_a_copy(monkeypatch):
    copies = []
    clone = torch.Tensor.clone

    def counting_clone(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return clone(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counting_clone)
    scores, excluded = tied_problem(seed=9)
    topk = full_ranking_topk(lookup(scores), np.arange(50), sp.csr_matrix(excluded), k=7, batch_size=16)
    np.testing.assert_array_equal(topk, reference_topk(scores, excluded, k=7))
    assert copies == []


def test_scores_are_restored_when_nan_raises():
    scores = np.array([[1.0, np.nan, 3.0], [0.5, 0.2, 0.1]], dtype=np.float32)
    score_fn, (table, _) = stored_scores("slice", scores)
    before = table.clone()
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_topk(score_fn, np.array([0, 1]), sp.csr_matrix(np.eye(2, 3, dtype=np.float32)), k=2)
    np.testing.assert_array_equal(table.numpy(), before.numpy())  # NaN compares equal here


def test_integer_scores_rank_like_their_values():
    rng = np.random.default_rng(8)
    scores = rng.integers(-3, 3, (15, 25)).astype(np.int64)
    excluded = rng.random((15, 25)) < 0.3
    topk = full_ranking_topk(lookup(scores), np.arange(15), sp.csr_matrix(excluded), k=6, batch_size=4)
    np.testing.assert_array_equal(topk, reference_topk(scores.astype(np.float64), excluded, k=6))


# --------------------------------------------------------------------------- the benchmark script


def test_bench_ranking_script_runs_on_a_tiny_size(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_ranking.py"
    spec = importlib.util.spec_from_file_location("bench_ranking", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # main() sets them; restored after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    threads = torch.get_num_threads()
    out = tmp_path / "bench_ranking.json"
    argv = ["--sizes", "300x500,1kx50", "--max-users", "200", "--repeats", "2", "--batch-size", "32"]
    try:
        report = bench.main([*argv, "--chunk-batches", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == report
    first, second = report["results"]
    assert (first["users"], first["items"], first["timed_users"], first["rows_differing"]) == (
        300,
        500,
        200,
        0,
    )
    assert len(first["seconds"]["fairbench"]) == len(first["seconds"]["naive"]) == 2
    assert len(first["chunk_ratios"]) == 2 * 4 and first["ratio"] > 0 and first["paired_ratio"] > 0
    assert len(first["cpu_chunk_ratios"]) == 2 * 4 and first["cpu_paired_ratio"] > 0
    assert second["est_seconds_all_users"]["naive"] == pytest.approx(5 * second["median_seconds"]["naive"])
    assert bench.parse_sizes("1Mx10k,2.5kx7") == [(1_000_000, 10_000), (2_500, 7)]

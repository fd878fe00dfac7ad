"""per_user.parquet: per-row values whose means are the run's metrics, written by every run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fairbench.metrics import evaluate_topk
from fairbench.metrics.per_user import per_row_metrics
from tests.helpers.cli import run_quick_job


def random_case(seed: int = 0, n_rows: int = 60, n_items: int = 40, k: int = 10):
    rng = np.random.default_rng(seed)
    truth = sp.random(n_rows, n_items, density=0.08, random_state=seed, format="csr")
    truth.data[:] = 1.0
    topk = np.stack([rng.permutation(n_items)[:k] for _ in range(n_rows)])
    topk[:3, -2:] = -1  # short lists
    membership = rng.random((n_items, 4)) < 0.35
    return topk, truth, membership


@pytest.mark.parametrize("utility", ["recall", "ndcg", "hr"])
@pytest.mark.parametrize("normalization", ["relevant", "all"])
def test_per_row_means_are_the_reported_metrics(utility, normalization):
    topk, truth, membership = random_case()
    ks = (5, 10)
    names = ["a", "b", "c", "d"]
    table = per_row_metrics(topk, truth, np.arange(100, 160), ks, {"g": (names, membership)}, utility)
    metrics = evaluate_topk(
        topk, truth, item_groups={"g": membership}, ks=ks, utility=utility, group_normalization=normalization
    )
    evaluated = int((truth.getnnz(axis=1) > 0).sum())
    assert len(table) == evaluated * len(ks) and table["row"].min() >= 100
    for k in ks:
        part = table[table["k"] == k]
        for name in ("recall", "ndcg", "hr"):
            assert part[name].mean() == pytest.approx(metrics[f"{name}@{k}"], abs=1e-6)
        for index, group in enumerate(names):
            values = part[f"g/{group}"]
            expected = values.mean() if normalization == "relevant" else values.fillna(0).sum() / len(part)
            assert expected == pytest.approx(metrics[f"g/utility@{k}/{index}"], abs=1e-6, nan_ok=True)


def test_a_run_writes_per_user_parquet_matching_its_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_quick_job(tmp_path / "job")
    job = Path(tmp_path / "job")
    metrics = json.loads((job / "metrics.json").read_text())
    table = pd.read_parquet(job / "per_user.parquet")
    assert set(table["split"]) == {"valid", "test"} and set(table["k"]) == {10, 20}
    assert "pop/head" in table and "genre/Drama" in table
    assert not list(job.glob(".per_user.parquet.*"))  # the temporary file was renamed
    for split in ("valid", "test"):
        part = table[(table["split"] == split) & (table["k"] == 20)]
        assert part["row"].is_unique
        assert part["recall"].mean() == pytest.approx(metrics[f"{split}/recall@20"], abs=1e-6)
        assert part["pop/tail"].mean() == pytest.approx(metrics[f"{split}/pop/utility@20/tail"], abs=1e-6)

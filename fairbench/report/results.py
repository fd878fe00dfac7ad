"""Run-directory outputs: metrics.json, groups.csv, history.csv, the group-utility plot and the console table.

Every file is written atomically (temporary file in the same directory, then ``os.replace``), so a crashed or
interrupted run never leaves a half-written result that a sweep summary would read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from fairbench.files import write_text_atomic


def write_json(path: Path, payload: dict) -> None:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in payload.items()}
    write_text_atomic(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line (e.g. what a generative model produced for each test sample)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def plot_group_utilities(groups: pd.DataFrame, k: int, path: Path, title: str = "") -> None:
    """Bar chart of test group utilities at cut-off ``k``, one panel per group kind (PNG)."""
    from fairbench.report.plots import group_utility_bars

    frame = groups[groups["k"] == k]
    if len(frame):
        group_utility_bars(frame, k, path, title)


def results_table(
    metrics: dict[str, float], ks: Sequence[int], group_kinds: Sequence[str], split: str = "test"
) -> Table:
    """Compact console table: accuracy, then per group kind CV, MIN, MGU, for every K."""
    table = Table(title=f"{split} results", title_justify="left")
    table.add_column("metric")
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    rows = [("recall", "recall"), ("ndcg", "ndcg"), ("hr", "hr"), ("coverage", "coverage")]
    for kind in group_kinds:
        rows += [(f"{kind} {name.upper()}", f"{kind}/{name}") for name in ("cv", "min", "mgu")]
    for label, key in rows:
        values = [metrics.get(f"{split}/{key}@{k}") for k in ks]
        if all(v is None for v in values):
            continue
        table.add_row(label, *("-" if v is None else f"{v:.4f}" for v in values))
    return table


def print_results(
    metrics: dict[str, float], ks: Sequence[int], group_kinds: Sequence[str], run_dir: Path
) -> None:
    console = Console()
    console.print(results_table(metrics, ks, group_kinds))
    console.print(f"run directory: {run_dir}")

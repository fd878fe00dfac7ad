"""Sweep summary: one row per Hydra job with its overrides, status and final metrics.

Each job writes ``status.json`` (and, when it succeeded, ``metrics.json``) in its own directory; the
callback reads them after the sweep, so jobs run by any launcher (basic, joblib, submitit) are covered and a
failed job is listed as failed instead of hiding the others' results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from fairbench.report.results import write_csv

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "test/recall@20",
    "test/ndcg@20",
    "test/hr@20",
    "test/pop/cv@20",
    "test/pop/min@20",
    "test/genre/cv@20",
    "test/genre/min@20",
)

#: failed jobs of the last sweep summarised in this process (read by the CLI for its exit code)
last_sweep_failures: int = 0


def summarize_sweep(sweep_dir: Path) -> pd.DataFrame:
    """Collect every job directory below ``sweep_dir`` (those holding ``.hydra/overrides.yaml``)."""
    rows: list[dict[str, Any]] = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=_job_order):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides)}
        status_file, metrics_file = job_dir / "status.json", job_dir / "metrics.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        row["status"] = status.get("status", "unknown")
        if row["status"] != "completed":
            row["error"] = status.get("error", "no status.json: the job did not finish")
        if metrics_file.is_file():
            row.update(json.loads(metrics_file.read_text()))
        rows.append(row)
    return pd.DataFrame(rows)


def _job_order(path: Path) -> tuple[int, str]:
    name = path.parent.parent.name
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def print_summary(frame: pd.DataFrame, path: Path) -> None:
    table = Table(title=f"sweep summary ({path})", title_justify="left")
    columns = ["job", "overrides", "status"] + [k for k in SUMMARY_KEYS if k in frame.columns]
    for column in columns:
        table.add_column(column.removeprefix("test/"), justify="left" if column in columns[:3] else "right")
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row.get(column)
            if isinstance(value, float):
                cells.append("-" if pd.isna(value) else f"{value:.4f}")
            else:
                cells.append("" if value is None else str(value))
        table.add_row(*cells)
    Console().print(table)


class SweepSummaryCallback(Callback):
    """Writes ``summary.csv`` in the sweep directory and prints it when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global last_sweep_failures
        sweep_dir = Path(config.hydra.sweep.dir)
        frame = summarize_sweep(sweep_dir)
        if frame.empty:
            log.warning("no job directories found under %s", sweep_dir)
            return
        path = sweep_dir / "summary.csv"
        write_csv(path, frame)
        print_summary(frame, path)
        last_sweep_failures = int((frame["status"] != "completed").sum())
        if last_sweep_failures:
            log.error(
                "%d of %d jobs failed; see their status.json and train.log", last_sweep_failures, len(frame)
            )

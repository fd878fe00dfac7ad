"""``per_user.parquet``: every evaluated row's accuracy and group utilities, per split and K.

Columns: ``split`` (valid / test), ``row`` (user id for user rows, sample index within the split for
next-item samples), ``k``, ``recall``, ``ndcg``, ``hr`` and ``<kind>/<group>`` (utility of the row's
held-out items in that item group with ``metric.utility``; NaN when it has none there), all float32
(:func:`fairbench.metrics.per_user.per_row_metrics`). Size: rows x splits x len(ks) lines of 3 + number of
groups values, e.g. ml100k with the defaults (2 splits, K in 10/20, 2 + 20 groups) is 3,380 lines of 26
columns, about 70 KB of zstd-compressed parquet; the size grows linearly with the evaluated rows (a 50k-user
Amazon set: a few MB).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairbench.data.types import ItemGroups
from fairbench.evaluation import MetricConfig, Ranking
from fairbench.files import atomic_write
from fairbench.metrics.per_user import per_row_metrics


def per_user_frame(
    rankings: dict[str, Ranking], groups: dict[str, ItemGroups], cfg: MetricConfig
) -> pd.DataFrame:
    """The per-row metrics of every split's ranking, stacked with a ``split`` column."""
    frames = []
    for split, ranking in rankings.items():
        rows = ranking.rows
        ids = rows.users if rows.unit == "user" else range(len(rows))
        kinds = {kind: (groups[kind].names, groups[kind].membership) for kind in cfg.group_kinds}
        frame = per_row_metrics(ranking.items, rows.truth, list(ids), cfg.ks, kinds, cfg.utility)
        frames.append(frame.assign(split=split))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["split", *[c for c in frame.columns if c != "split"]]]


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    """Parquet (zstd) written to a temporary file in the same folder, then renamed over ``path``."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False, compression="zstd"))


def write_per_user(
    path: Path, rankings: dict[str, Ranking], groups: dict[str, ItemGroups], cfg: MetricConfig
) -> None:
    """``per_user.parquet`` of a run (see the module doc for its columns and size)."""
    write_parquet_atomic(path, per_user_frame(rankings, groups, cfg))

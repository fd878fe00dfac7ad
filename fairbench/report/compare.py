"""``fairbench report``: configurations of finished jobs, mean ± std over seeds, paired tests vs a baseline.

A configuration is a combination of the ``--by`` settings (config groups such as ``model`` or ``method``,
or config keys such as ``method.groups``) plus any other override that differs between the jobs (the seed
never does: it is what the mean and std are taken over, sample std with ddof=1).

Paired tests compare a configuration with the baseline configuration on the per-row values of the report
metric (``per_user.parquet``: users, or samples of the sequential protocol). Rows are paired by their id
within the evaluated data: the dataset config including its split seed (``dataset.protocol.seed``) and the
row unit. A configuration's value for a row is the mean of that row's values over the configuration's
seeds (its jobs), so each user counts once and seed noise is averaged out before pairing; rows present for
only one of the two configurations (another split seed, another dataset) are left out. p-values of the
paired t-test and the Wilcoxon signed-rank test are corrected with Holm's method over all compared
configurations (separately per test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fairbench.errors import UserError
from fairbench.report.jobs import Job, configuration_labels, find_jobs, sweep_command
from fairbench.report.stats import holm, lower_is_better, paired_tests, pareto_front

#: table columns (with @K appended) when --columns is not given; those no job has are dropped
DEFAULT_COLUMNS = ("recall", "ndcg", "hr", "pop/cv", "pop/min", "genre/cv", "genre/min")


@dataclass
class ReportSpec:
    """What to report (the ``fairbench report`` options)."""

    by: list[str]
    metric: str = "recall@20"
    baseline: str | None = None
    split: str = "test"
    columns: list[str] | None = None
    x: str | None = None
    y: str | None = None
    title: str = "fairbench report"
    #: the command line that made the report, printed in report.md so that a document says how to remake it
    command: str | None = None
    #: the author's markdown put before the table (protocol, budgets) and after the figures (analysis)
    preface: str = ""
    discussion: str = ""

    @property
    def k(self) -> int:
        match = re.search(r"@(\d+)", self.metric)
        if match is None:
            raise UserError(f"--metric {self.metric}: give a metric at a cut-off, e.g. recall@20")
        return int(match.group(1))


@dataclass
class Report:
    """Everything ``report.md``, ``report.csv``, ``report.json`` and the plots are made from."""

    spec: ReportSpec
    table: pd.DataFrame  # one row per configuration (columns: see build_report)
    columns: list[str]
    jobs: list[Job]
    sources: list[Path]
    commands: list[str]
    baseline: str | None
    group_utilities: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: paper vs fairbench side by side (see fairbench.report.paper), when a published table is named
    paper: pd.DataFrame | None = None
    paper_caption: str = ""

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if not job.completed]


def per_row_column(metric: str) -> tuple[str, int] | None:
    """(per_user.parquet column, K) of a metric with per-row values: ``recall@20`` -> (recall, 20),
    ``pop/utility@20/tail`` -> (pop/tail, 20); None for list- or group-level metrics (CV, MIN, gini...)."""
    match = re.fullmatch(r"(recall|ndcg|hr)@(\d+)", metric)
    if match:
        return match.group(1), int(match.group(2))
    match = re.fullmatch(r"([^/@]+)/utility@(\d+)/(.+)", metric)
    return (f"{match.group(1)}/{match.group(3)}", int(match.group(2))) if match else None


def build_report(sweep_dirs: list[Path], spec: ReportSpec) -> Report:
    """Read the job directories below ``sweep_dirs`` and build the report table.

    Table columns: ``configuration`` (label), one per ``--by`` key, ``seeds`` (completed jobs), ``<m>`` and
    ``<m> std`` for every reported metric ``m``; with a baseline: ``delta`` (relative change of the report
    metric's mean vs the baseline), ``pairs``, ``p_t``, ``p_t_holm``, ``p_wilcoxon``, ``p_wilcoxon_holm``;
    ``pareto`` (on the front of the x-y scatter).
    """
    jobs = find_jobs(sweep_dirs)
    done = [job for job in jobs if job.completed]
    if not done:
        raise UserError(
            f"fairbench report: none of the {len(jobs)} job(s) under {', '.join(map(str, sweep_dirs))} "
            "completed; see their status.json"
        )
    k = spec.k
    prefix = f"{spec.split}/"
    columns = [f"{c}@{k}" for c in DEFAULT_COLUMNS] if spec.columns is None else list(spec.columns)
    if spec.metric not in columns:
        columns.insert(0, spec.metric)
    available = set().union(*(job.metrics for job in done))
    missing = [c for c in (spec.metric, spec.x, spec.y) if c and prefix + c not in available]
    if missing:
        known = sorted(
            m.removeprefix(prefix) for m in available if m.startswith(prefix) and "/utility@" not in m
        )
        raise UserError(
            f"fairbench report: no job has {', '.join(missing)} on {spec.split}; known: {', '.join(known)}"
        )
    columns = [c for c in columns if prefix + c in available]

    labelled = configuration_labels(done, spec.by)
    order = list(dict.fromkeys(label for _, label in labelled))
    members: dict[str, list[Job]] = {label: [] for label in order}
    by_values: dict[str, tuple[str, ...]] = {}
    for job, (values, label) in zip(done, labelled, strict=True):
        members[label].append(job)
        by_values[label] = values

    rows = []
    for label in order:
        row: dict = {"configuration": label}
        row |= dict(zip(spec.by, by_values[label], strict=True))
        row["seeds"] = len(members[label])
        for column in columns:
            values = np.array(
                [job.metrics.get(prefix + column, np.nan) for job in members[label]], dtype=float
            )
            row[column] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
            row[f"{column} std"] = (
                float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else np.nan
            )
        rows.append(row)
    table = pd.DataFrame(rows)

    report = Report(spec, table, columns, jobs, list(sweep_dirs), [], None)
    report.commands = [c for d in sweep_dirs if (c := sweep_command(d))]
    if spec.baseline is not None:
        report.baseline = find_baseline(spec.baseline, order, by_values, spec.by)
        add_significance(report, members)
    x, y = spec.x or spec.metric, spec.y or default_fairness_axis(columns, k)
    if x in table and y is not None and y in table:
        table["pareto"] = pareto_front(table[x], table[y], (not lower_is_better(x), not lower_is_better(y)))
    report.group_utilities = {label: mean_group_utilities(members[label], spec.split, k) for label in order}
    return report


def default_fairness_axis(columns: list[str], k: int) -> str | None:
    """pop CV@K when reported, else the first lower-is-better column."""
    if f"pop/cv@{k}" in columns:
        return f"pop/cv@{k}"
    return next((c for c in columns if lower_is_better(c)), None)


def find_baseline(
    baseline: str, labels: list[str], by_values: dict[str, tuple[str, ...]], by: list[str]
) -> str:
    """The configuration named by ``--baseline``: its label, or ``key=value[,key=value]`` over ``--by``."""
    if baseline in labels:
        return baseline
    wanted = dict(part.split("=", 1) for part in baseline.split(",") if "=" in part)
    unknown = [key for key in wanted if key not in by]
    if not wanted or unknown:
        raise UserError(
            f"--baseline {baseline!r}: give a configuration label or key=value pairs over --by "
            f"({', '.join(by)}); configurations: {'; '.join(labels)}"
        )
    matches = [
        label
        for label in labels
        if all(dict(zip(by, by_values[label], strict=True))[key] == value for key, value in wanted.items())
    ]
    if len(matches) != 1:
        found = "none" if not matches else f"{len(matches)}: {'; '.join(matches)}"
        raise UserError(
            f"--baseline {baseline!r} must match one configuration, matched {found}; "
            f"configurations: {'; '.join(labels)}"
        )
    return matches[0]


def row_values(jobs: list[Job], split: str, column: str, k: int) -> tuple[pd.Series, int]:
    """Per-row values of ``column`` averaged over ``jobs`` (indexed by data key and row id), and how many
    jobs had a per_user.parquet."""
    parts = []
    for job in jobs:
        frame = job.per_user()
        if frame is None or column not in frame:
            continue
        frame = frame[(frame["split"] == split) & (frame["k"] == k)]
        parts.append(
            pd.Series(
                frame[column].to_numpy(np.float64),
                index=pd.MultiIndex.from_arrays(
                    [np.full(len(frame), job.data_key()), frame["row"].to_numpy()], names=["data", "row"]
                ),
            )
        )
    if not parts:
        return pd.Series(dtype=np.float64), 0
    stacked = pd.concat(parts)
    return stacked.groupby(level=["data", "row"]).mean(), len(parts)


def add_significance(report: Report, members: dict[str, list[Job]]) -> None:
    """delta, pairs, p-values (raw and Holm-corrected) of every configuration against the baseline."""
    spec, table, baseline = report.spec, report.table, report.baseline
    base_row = table.index[table["configuration"] == baseline][0]
    base_mean = table.at[base_row, spec.metric]
    table["delta"] = table[spec.metric] / base_mean - 1 if base_mean else np.nan
    per_row = per_row_column(spec.metric)
    for name in ("pairs", "p_t", "p_wilcoxon"):
        table[name] = np.nan
    if per_row is None:
        report.notes.append(
            f"{spec.metric} has no per-user values (it is computed over the whole ranking), so no paired "
            "test was run; report an accuracy metric or a group utility (e.g. pop/utility@20/tail) for one."
        )
    else:
        column, k = per_row
        base_values, base_jobs = row_values(members[baseline], spec.split, column, k)
        without = []
        for index, label in enumerate(table["configuration"]):
            if label == baseline:
                continue
            values, n_jobs = row_values(members[label], spec.split, column, k)
            if n_jobs < len(members[label]) or base_jobs < len(members[baseline]):
                without.append(label)
            common = values.index.intersection(base_values.index)
            if len(common) == 0:
                continue
            result = paired_tests(values.loc[common].to_numpy(), base_values.loc[common].to_numpy())
            table.loc[index, ["pairs", "p_t", "p_wilcoxon"]] = [
                result.n,
                result.t_pvalue,
                result.wilcoxon_pvalue,
            ]
        if without:
            report.notes.append(
                "jobs without per_user.parquet (runs made before fairbench wrote it) are left out of the "
                f"paired tests of: {'; '.join(without)}"
            )
    table["p_t_holm"] = holm(table["p_t"])
    table["p_wilcoxon_holm"] = holm(table["p_wilcoxon"])


def mean_group_utilities(jobs: list[Job], split: str, k: int) -> pd.DataFrame:
    """Test utility per item group at K, averaged over the jobs (columns kind, group, k, utility)."""
    frames = [g for job in jobs if (g := job.groups()) is not None]
    if not frames:
        return pd.DataFrame(columns=["kind", "group", "k", "utility"])
    frame = pd.concat(frames)
    frame = frame[(frame["split"] == split) & (frame["k"] == k)]
    return frame.groupby(["kind", "group"], sort=False, as_index=False)["utility"].mean().assign(k=k)

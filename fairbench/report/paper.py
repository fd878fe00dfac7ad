"""Published numbers beside fairbench's: ``fairbench/report/data/published.csv`` (BiFair Tables 1-4, 6, 7;
columns paper, table, dataset, groups, backbone, model, method (fairbench option names), label (as printed),
metric (fairbench's key), value, notes)."""

from __future__ import annotations

import math
from importlib import resources

import pandas as pd

from fairbench.report.compare import Report
from fairbench.report.tables import PublishedTable, published_table


def published() -> pd.DataFrame:
    """Every published number fairbench ships."""
    with resources.files("fairbench.report.data").joinpath("published.csv").open() as handle:
        return pd.read_csv(handle, dtype={"table": str}, keep_default_na=False, na_values=[""])


def paper_rows(table: PublishedTable, dataset: str) -> pd.DataFrame:
    frame = published()
    frame = frame[(frame["table"] == table.paper_tables[dataset]) & (frame["dataset"] == dataset)]
    for column, value in table.fixed.items():
        frame = frame[frame[column].isin([value, "-"])]
    return frame


def attach_paper(report: Report, name: str, dataset: str | None = None) -> None:
    """Put the published numbers of table ``name`` beside the report's configurations, with the relative
    change of each vs its own baseline row (the paper's, and fairbench's of the same groups/backbone)."""
    table = published_table(name)
    ran = sorted({job.setting("dataset") for job in report.jobs if job.completed})
    if dataset is None:
        dataset = next((d for d in ran if d in table.paper_tables), table.default_dataset)
    if dataset not in table.paper_tables:
        from fairbench.errors import UserError

        raise UserError(f"--paper-dataset {dataset}: {name} has {', '.join(table.paper_tables)}")
    rows = paper_rows(table, dataset)
    same = ran == [dataset]
    caption = (
        f"{table.paper}, Table {table.paper_tables[dataset]} ({dataset}). "
        + (
            "Same dataset as the runs. "
            if same
            else f"**Different dataset**: paper on {dataset}, fairbench on {', '.join(ran)}. "
        )
        + "Δ: relative change vs the table's baseline row, for the paper and for fairbench, so the direction "
        "of a claim can be compared across datasets. " + table.notes
    )
    fb = report.table
    by_keys = [table.match[c] for c in table.match]
    missing = [key for key in by_keys if key not in fb]
    if missing:
        report.notes.append(f"paper comparison skipped: the report is not grouped by {', '.join(missing)}")
        return

    def fb_row(values: dict[str, str]) -> pd.Series | None:
        """The configuration with these values; a key the baseline does not set may be unset ('-') there
        (e.g. ERM run without method.groups)."""
        hit = fb
        for column, value in values.items():
            allowed = [str(value)] if column in table.baseline else [str(value), "-"]
            hit = hit[hit[table.match[column]].astype(str).isin(allowed)]
        return hit.iloc[0] if len(hit) == 1 else None

    def paper_value(values: dict[str, str], metric: str) -> float:
        hit = rows[rows["metric"] == metric]
        for column, value in values.items():
            hit = hit[hit[column].astype(str) == str(value)]
        return float(hit["value"].iloc[0]) if len(hit) else math.nan

    out = []
    for _, row in fb.iterrows():
        values = {column: str(row[key]) for column, key in table.match.items()}
        base_values = values | table.baseline
        base = fb_row(base_values)
        label = rows
        for column, value in values.items():
            label = label[label[column].astype(str) == value]
        if label.empty:
            continue
        for metric in table.metrics:
            if metric not in fb:
                continue
            if "groups" in values and values["groups"] != "-" and "/" in metric:
                kind = {"popularity": "pop", "genre": "genre"}.get(values["groups"])
                if not metric.startswith(f"{kind}/"):
                    continue  # Table 2 reports each method on the groups it balances
            published_value, published_base = paper_value(values, metric), paper_value(base_values, metric)
            if math.isnan(published_value):
                continue
            mine = float(row[metric])
            mine_base = float(base[metric]) if base is not None else math.nan
            out.append(
                {
                    "Configuration": row["configuration"],
                    "Paper row": label["label"].iloc[0],
                    "Metric": metric,
                    f"Paper ({dataset})": f"{published_value:.4f}",
                    f"fairbench ({', '.join(ran)})": f"{mine:.4f}",
                    "Δ paper": relative(published_value, published_base),
                    "Δ fairbench": relative(mine, mine_base),
                    "Same direction": same_direction(published_value, published_base, mine, mine_base),
                }
            )
    report.paper = pd.DataFrame(out)
    report.paper_caption = caption


def relative(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    return f"{100 * (value / base - 1):+.1f}%"


def same_direction(paper: float, paper_base: float, mine: float, mine_base: float) -> str:
    if any(math.isnan(v) for v in (paper, paper_base, mine, mine_base)) or paper == paper_base:
        return "-"
    return "yes" if (paper - paper_base) * (mine - mine_base) > 0 else "no"

"""Writing a :class:`~fairbench.report.compare.Report`: report.md, report.csv, report.json, the figures,
and the table to W&B."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from fairbench.files import write_text_atomic
from fairbench.report.compare import Report
from fairbench.report.plots import group_utility_bars, pareto_scatter
from fairbench.report.results import write_csv
from fairbench.report.stats import is_signed_gap, lower_is_better


def slug(label: str) -> str:
    """A file name for a configuration label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:120] or "configuration"


def fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_p(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(frame.columns))) + "|"
    lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *lines])


def display_table(report: Report) -> pd.DataFrame:
    """The report table as printed: mean ± std per metric, the test columns, the front."""
    table, spec = report.table, report.spec
    rows = []
    for _, row in table.iterrows():
        shown = {
            "Configuration": row["configuration"]
            + (" (baseline)" if row["configuration"] == report.baseline else ""),
            "Seeds": int(row["seeds"]),
        }
        for column in report.columns:
            arrow = "" if is_signed_gap(column) else " ↓" if lower_is_better(column) else " ↑"
            std = row.get(f"{column} std", math.nan)
            shown[f"{column}{arrow}"] = fmt(row[column]) + ("" if math.isnan(std) else f" ± {fmt(std)}")
        if report.baseline is not None:
            shown[f"Δ {spec.metric}"] = "-" if math.isnan(row["delta"]) else f"{100 * row['delta']:+.1f}%"
            shown["p t-test (Holm)"] = f"{fmt_p(row['p_t'])} ({fmt_p(row['p_t_holm'])})"
            shown["p Wilcoxon (Holm)"] = f"{fmt_p(row['p_wilcoxon'])} ({fmt_p(row['p_wilcoxon_holm'])})"
        if "pareto" in table:
            shown["Pareto"] = "yes" if row["pareto"] else ""
        rows.append(shown)
    return pd.DataFrame(rows)


def write_report(report: Report, out: Path, document: Path | None = None) -> list[Path]:
    """Every output file of the report in ``out``; returns their paths. ``document``: write the markdown
    there instead of ``out/report.md`` (e.g. a results page under docs/), its figure links into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md_path = document or out / "report.md"
    link = ""  # figure links, relative to the markdown file
    if document is not None:
        link = Path(os.path.relpath(out.resolve(), document.parent.resolve())).as_posix() + "/"
    spec, table = report.spec, report.table
    written = []
    figures: list[str] = []
    x = spec.x or spec.metric
    y = spec.y or next(
        (c for c in (f"pop/cv@{spec.k}", *report.columns) if c in table and lower_is_better(c)), None
    )
    if y is not None and x in table and y in table:
        paths = [out / "pareto.png", out / "pareto.svg"]
        pareto_scatter(table, x, y, paths, title=spec.title)
        written += paths
        figures += [f"![{x} vs {y}]({link}pareto.png)", ""]
    for label, groups in report.group_utilities.items():
        if groups.empty:
            continue
        path = out / "group_utilities" / f"{slug(label)}.png"
        group_utility_bars(groups, spec.k, path, title=f"{spec.split} utility@{spec.k}: {label}")
        written.append(path)
        figures.append(
            f"- group utilities of {label}: [group_utilities/{path.name}]({link}group_utilities/{path.name})"
        )

    csv_path, json_path = out / "report.csv", out / "report.json"
    write_csv(csv_path, table)
    payload = {
        "title": spec.title,
        "metric": spec.metric,
        "split": spec.split,
        "by": spec.by,
        "baseline": report.baseline,
        "sources": [str(s) for s in report.sources],
        "commands": report.commands,
        "notes": report.notes,
        "rows": json.loads(table.to_json(orient="records")),
        "paper": None if report.paper is None else json.loads(report.paper.to_json(orient="records")),
        "failed": [{"job": str(j.path), "status": j.status, "error": j.error} for j in report.failed],
    }
    write_text_atomic(json_path, json.dumps(payload, indent=2) + "\n")
    write_text_atomic(md_path, markdown(report, figures))
    return [md_path, csv_path, json_path, *written]


def markdown(report: Report, figures: list[str]) -> str:
    """report.md: header, the sweeps' commands, the preface, the table and its notes, the paper's numbers,
    the figures, the discussion, the jobs that failed."""
    spec = report.spec
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sources = ", ".join(f"`{s}`" for s in report.sources)
    lines = [f"# {spec.title}", "", f"Generated by `fairbench report` on {when} from {sources}.", ""]
    if spec.command:
        lines += ["Report command:", "", "```", spec.command, "```", ""]
    if report.commands:
        lines += ["Sweeps:", "", "```", *report.commands, "```", ""]
    if spec.preface.strip():
        lines += [spec.preface.strip(), ""]
    n_jobs = len(report.jobs)
    lines += [
        f"{spec.split.capitalize()} split, K = {spec.k}; one row per configuration ({', '.join(spec.by)}), "
        f"mean ± sample std over its seeds ({n_jobs - len(report.failed)} of {n_jobs} jobs completed). "
        "CV: std / mean of the group utilities (lower is fairer); MIN: mean utility of the worst 25% of "
        "groups (higher is fairer)."
        + (
            " GU(g): group g's share of the top-K slots minus its share of the evaluated histories; MGU: "
            "mean |GU| over groups, DGU: max GU - min GU (IFairLRS; lower is fairer)."
            if any("gu@" in str(column) for column in report.table.columns)
            else ""
        ),
        "",
    ]
    if report.baseline is not None:
        lines += [
            f"Against the baseline `{report.baseline}`: relative change of the mean {spec.metric}, and "
            f"p-values of a paired t-test and a Wilcoxon signed-rank test over per-row {spec.metric} (a row "
            "is a user, or a next-item sample on the sequential protocol; each row's value averaged over the "
            "configuration's seeds, rows paired within the same data split), "
            "Holm-corrected over the compared configurations in parentheses.",
            "",
        ]
    lines += [markdown_table(display_table(report)), ""]
    lines += [f"Note: {note}" for note in report.notes] + ([""] if report.notes else [])
    if report.paper is not None and not report.paper.empty:
        lines += ["## Paper vs fairbench", "", report.paper_caption, "", markdown_table(report.paper), ""]
    if figures:
        lines += ["## Figures", "", *figures, ""]
        if "pareto" in report.table:
            lines += ["Filled points: the Pareto front (no other configuration is better on both axes).", ""]
    if spec.discussion.strip():
        lines += [spec.discussion.strip(), ""]
    if report.failed:
        lines += ["## Jobs that did not complete", ""]
        lines += [f"- `{job.path}`: {job.status}: {job.error}" for job in report.failed] + [""]
    return "\n".join(lines)


def log_to_wandb(report: Report, out: Path, project: str = "fairbench", entity: str | None = None) -> str:
    """The report table (and the Pareto figure) as one W&B run of job type ``report``; returns its id.

    The mode follows ``logger=wandb``: WANDB_MODE, else online with an API key, offline without one.
    """
    import wandb

    from fairbench.report.loggers import resolve_wandb_mode

    run = wandb.init(
        project=project,
        entity=entity,
        mode=resolve_wandb_mode(None),
        dir=str(out),
        job_type="report",
        name=f"report-{out.name}",
        config={"by": report.spec.by, "metric": report.spec.metric, "baseline": report.baseline},
        reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    try:
        run.log(
            {
                "report": wandb.Table(
                    dataframe=report.table.astype({"pareto": str})
                    if "pareto" in report.table
                    else report.table
                )
            }
        )
        if report.paper is not None and not report.paper.empty:
            run.log({"paper_vs_fairbench": wandb.Table(dataframe=report.paper)})
        if (out / "pareto.png").is_file():
            run.log({"pareto": wandb.Image(str(out / "pareto.png"))})
        return run.id
    finally:
        run.finish()

"""What ``fairbench report`` does, callable from ``fairbench reproduce`` and tests."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fairbench.errors import UserError
from fairbench.report.compare import Report, ReportSpec, build_report
from fairbench.report.document import display_table, log_to_wandb, markdown_table, write_report


def make_report(
    sweep_dirs: list[Path],
    spec: ReportSpec,
    out: Path | None = None,
    wandb: bool = False,
    wandb_project: str = "fairbench",
    paper_table: str | None = None,
    paper_dataset: str | None = None,
    document: Path | None = None,
) -> tuple[Report, Path]:
    """Build the report, write its files to ``out`` (default: ``<first sweep dir>/report``; the markdown to
    ``document`` instead when given), optionally add the published numbers of ``paper_table`` and log the
    table to W&B; print the table."""
    report = build_report(sweep_dirs, spec)
    if paper_table is not None:
        from fairbench.report.paper import attach_paper

        attach_paper(report, paper_table, paper_dataset)
    out = out or sweep_dirs[0] / "report"
    written = write_report(report, out, document)
    if wandb:
        log_to_wandb(report, out, project=wandb_project)
    console = Console()
    console.print(markdown_table(display_table(report)), markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {written[0]} (+ {', '.join(p.name for p in written[1:])})", highlight=False)
    return report, out


def read_markdown(path: Path | None, option: str) -> str:
    """The text of a user's markdown file given to ``option`` ("" when none)."""
    if path is None:
        return ""
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file (give a markdown file with the text to include)")
    return path.read_text(encoding="utf-8")

"""``fairbench reproduce <table>``: the table's sweep (its experiment file), then its report beside the
published numbers. The sweep directory is fixed by the table and the command line
(``<paths.output_root>/reproduce/<table>/<hash of the overrides>``), so running the same command again skips
the jobs that completed (``skip_completed``) and finishes an interrupted table."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from fairbench.config import compose_config
from fairbench.errors import UserError
from fairbench.report.compare import ReportSpec
from fairbench.report.tables import TABLES, PublishedTable


def parse(overrides: list[str]) -> list:
    """Hydra's parse of command-line overrides; a malformed one is a user error."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise UserError(str(err)) from err


def with_bundled_dataset_overrides(
    table: PublishedTable, overrides: list[str]
) -> tuple[list[str], list[str]]:
    """The command line plus the table's overrides for a bundled dataset it picks (``dataset=ml100k`` ->
    ``backbone=minilm``), except for keys the command line or the table's sweep already sets; returns
    (overrides, what was added)."""
    given = {o.get_key_element().lstrip("+~"): o for o in parse(overrides)}
    dataset = given.get("dataset")
    if dataset is None or dataset.is_sweep_override():
        return list(overrides), []
    extra = table.bundled_dataset_overrides.get(str(dataset.get_value_element_as_str()), ())
    swept = sweep_lines(table, [])
    swept_keys = {line.split("=", 1)[0] for line in swept}
    added = [line for line in extra if line.split("=", 1)[0] not in given.keys() | swept_keys]
    return [*overrides, *added], added


def sweep_arguments(table: PublishedTable, overrides: list[str]) -> list[str]:
    """``fairbench train`` arguments of the table's sweep (without the sweep directory)."""
    return ["-m", f"experiment={table.experiment}", *overrides]


def sweep_dir(table: PublishedTable, overrides: list[str]) -> Path:
    cfg = compose_config([f"experiment={table.experiment}", *fixed(overrides)])
    root = Path(str(cfg.paths.output_root)).expanduser()
    key = hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:10]
    return root / "reproduce" / table.name / key


def wandb_project(table: PublishedTable, overrides: list[str]) -> str | None:
    """The W&B project when the sweep's logger is W&B (the report is then logged there too), else None."""
    cfg = compose_config([f"experiment={table.experiment}", *fixed(overrides)])
    target = str(OmegaConf.select(cfg, "logger._target_", default=""))
    return str(cfg.logger.get("project", "fairbench")) if target.endswith("WandbLogger") else None


def fixed(overrides: list[str]) -> list[str]:
    """The overrides that set one value (those a composed config can take; sweeps are expanded later)."""
    return [o.input_line for o in parse(overrides) if not o.is_sweep_override()]


def sweep_lines(table: PublishedTable, overrides: list[str]) -> list[str]:
    """The experiment's ``hydra.sweeper.params`` merged with the command line as Hydra's basic sweeper
    merges them (a key given on the command line replaces the experiment's sweep), one line per key."""
    cfg = compose_config([f"experiment={table.experiment}", *fixed(overrides)], return_hydra_config=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    merged: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        merged[override.get_key_element()] = override.input_line
    return list(merged.values())


def planned_jobs(table: PublishedTable, overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, in the order the sweep runs them."""
    values = []
    for override in OverridesParser.create().parse_overrides(sweep_lines(table, overrides)):
        key = override.get_key_element()
        if override.is_sweep_override():
            values.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            values.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*values)]


def report_spec(table: PublishedTable) -> ReportSpec:
    return ReportSpec(
        by=list(table.by),
        metric="recall@20",
        baseline=table.report_baseline,
        columns=list(table.metrics),
        title=table.title,
    )


def describe_tables() -> list[str]:
    return [
        f"{t.name}: {t.title}\n    {t.paper}; conf/experiment/{t.experiment}.yaml; paper datasets: "
        f"{', '.join(t.paper_tables)}"
        for t in TABLES.values()
    ]

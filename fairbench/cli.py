"""The ``fairbench`` command line.

``fairbench train [overrides...]`` hands its arguments unchanged to a ``hydra.main`` application, so every
Hydra feature works (``-m`` sweeps, ``--cfg job``, ``hydra/launcher=joblib``...). The other commands compose
configs with Hydra's compose API. User mistakes end with one message and exit code 2 (``HYDRA_FULL_ERROR=1``
shows the traceback).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import typer
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from fairbench import distributed
from fairbench.config import (
    build,
    check_config,
    compose_config,
    expand_sweep,
    list_options,
    validate_config,
)
from fairbench.errors import EXIT_USER_ERROR, UserError

log = logging.getLogger("fairbench")
console = Console(stderr=True)

app = typer.Typer(
    help="Item-side fairness experiments for LLM-based and LLM-enhanced recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="List, show and validate configs.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
analyze_app = typer.Typer(help="Diagnostics of a finished run.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
# Hydra flags that take a value, and flags after which we do not pre-validate (Hydra handles them alone).
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p"}
HYDRA_SELF_SERVE_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def _user_error(err: UserError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(err)
    console.print("[bold red]error:[/] ", end="")
    console.print(str(err), markup=False, highlight=False, soft_wrap=True)  # messages may hold [brackets]
    raise SystemExit(EXIT_USER_ERROR)


def _guard(func: Callable[[], Any]) -> Any:
    try:
        return func()
    except UserError as err:
        _user_error(err)


def split_hydra_args(args: list[str]) -> tuple[list[str], bool]:
    """(overrides, whether to pre-validate) from a ``train`` command line."""
    overrides: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in HYDRA_SELF_SERVE_FLAGS or arg.split("=")[0] in HYDRA_SELF_SERVE_FLAGS:
            return [], False
        if arg in HYDRA_VALUE_FLAGS:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, True


def force_keys_of_swept_groups(args: list[str]) -> list[str]:
    """Turn ``model.loss=x`` into ``++model.loss=x`` when ``model`` is swept (``-m model=mf,lightgcn``).

    Hydra composes a multirun's base config with the default option of every swept group, where such a key
    may not exist (alpharec has no ``loss``), and stops before the sweep starts. Forcing the key is safe:
    every job is validated on its own first, so a key its option does not have is still reported.
    """
    groups = set(list_options())
    parser = OverridesParser.create()
    parsed = {}
    for arg in args:
        if not arg.startswith("-") and "=" in arg:
            try:
                parsed[arg] = parser.parse_override(arg)
            except HydraException:
                continue  # reported by the validation with its own message
    swept = {o.get_key_element() for o in parsed.values() if o.is_sweep_override()} & groups
    forced = []
    for arg in args:
        override = parsed.get(arg)
        if (
            override is not None
            and override.package is None
            and not override.is_sweep_override()
            and arg.split("=", 1)[0].split(".", 1)[0] in swept
            and "." in arg.split("=", 1)[0]
        ):
            arg = "++" + arg
        forced.append(arg)
    return forced


def with_sweeper_direction(args: list[str], overrides: list[str]) -> list[str]:
    """With ``hydra/sweeper=optuna`` and no ``hydra.sweeper.direction``, add the direction of the value a
    job returns (the validation ``trainer.monitor``: maximize, or minimize with ``trainer.monitor_mode=min``);
    Optuna's own default, minimize, would tune for the worst validation recall."""
    if "hydra/sweeper=optuna" not in args or any(a.startswith("hydra.sweeper.direction=") for a in args):
        return args
    from fairbench.report.reproduce import fixed

    chosen = [o for o in fixed(overrides) if not o.lstrip("+~").startswith("hydra")]
    mode = OmegaConf.select(compose_config(chosen), "trainer.monitor_mode", default="max")
    return [*args, f"hydra.sweeper.direction={'minimize' if mode == 'min' else 'maximize'}"]


def prevalidate(overrides: list[str]) -> None:
    """Compose and check every job of a (possibly sweeping) command line before launching anything: keys
    and types of every node, the values constructors check, model/method/post-processor compatibility,
    the logger, and the files of a local dataset. No data is loaded."""
    from fairbench.pipeline import check_before_work

    for job_overrides in expand_sweep(overrides):
        cfg = compose_config(job_overrides, return_hydra_config=True)
        check_before_work(cfg)
        if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
            raise UserError(f"ckpt_path: no checkpoint at {cfg.ckpt_path}")
        build(cfg.logger)
        dataset = build(cfg.dataset)
        if cfg.dataset.get("path"):  # a local copy: check its files now (the bundled copy is fetched later)
            dataset.locate(
                cache_dir=Path(cfg.paths.cache_dir).expanduser(),
                data_dir=Path(cfg.paths.data_dir).expanduser(),
            )


def check_sweep_configs(overrides: list[str]) -> None:
    """The config checks of :func:`prevalidate` for every value of a sweep, without looking for data."""
    from fairbench.pipeline import check_before_work

    for job_overrides in expand_sweep(overrides):
        check_before_work(compose_config(job_overrides, return_hydra_config=True))


# ------------------------------------------------------------------------------------------------- train


def run_job(cfg: DictConfig) -> float | None:
    """Hydra task: one run in its own directory, with status.json telling the sweep summary how it ended.

    Returns the validation value of ``trainer.monitor`` (what a Hydra sweeper such as Optuna optimises; a
    test metric is never returned, so tuning cannot look at test)."""
    from fairbench.pipeline import run
    from fairbench.report.loggers import RunLogger
    from fairbench.report.results import write_json
    from fairbench.resume import completed_metrics, completion_fingerprint

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    main_process = distributed.context().is_main  # data-parallel: only rank 0 writes and tracks
    if not main_process:  # status.json is rank 0's to write
        write_json = lambda *_: None  # noqa: E731
    logger: RunLogger | None = None
    failed = True
    fingerprint = None
    try:
        check_config(cfg)
        fingerprint = completion_fingerprint(cfg)
        done = completed_metrics(run_dir, fingerprint) if cfg.get("skip_completed", False) else None
        if done is not None:
            log.info(
                "skipped: %s already holds a completed run of this config (skip_completed=false reruns)",
                run_dir,
            )
            failed = False
            return done.get(f"valid/{cfg.trainer.monitor}")
        logger = build(cfg.logger) if main_process else RunLogger()
        group = Path(hydra_cfg.sweep.dir).name if multirun else None
        name = (
            f"{cfg.model._target_.rsplit('.', 1)[-1]}-{cfg.method._target_.rsplit('.', 1)[-1]}-{run_dir.name}"
        )
        logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=name, group=group)
        result = run(cfg, run_dir, logger)
        failed = False
        write_json(run_dir / "status.json", {"status": "completed", "fingerprint": fingerprint})
        return result.metrics.get(f"valid/{cfg.trainer.monitor}")  # what a sweeper optimises: never test
    except UserError as err:
        log.error("%s", err)
        write_json(run_dir / "status.json", {"status": "failed", "error": str(err)})
        if multirun:
            return None
        _user_error(err)
    except Exception as err:
        log.exception("run failed")
        write_json(run_dir / "status.json", {"status": "failed", "error": f"{type(err).__name__}: {err}"})
        if multirun:
            return None
        raise
    finally:
        if logger is not None:
            logger.finish(failed=failed)
    return None


@hydra.main(version_base="1.3", config_path="pkg://fairbench.conf", config_name="config")
def hydra_train(cfg: DictConfig) -> float | None:
    return run_job(cfg)


@app.command(context_settings=PASSTHROUGH, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train and evaluate: `fairbench train [hydra overrides...]`, e.g. `fairbench train -m seed=0,1,2`."""
    from fairbench.report import summary

    args = list(ctx.args)
    if "-m" in args or "--multirun" in args:
        args = force_keys_of_swept_groups(args)
    overrides, check = split_hydra_args(args)
    if check:
        _guard(lambda: prevalidate(overrides))
        args = _guard(lambda: distributed.launch(args, overrides))  # torchrun / accelerate launch
        args = _guard(lambda: with_sweeper_direction(args, overrides))
    summary.last_sweep_failures = 0
    sys.argv = [sys.argv[0] or "fairbench", *args]
    try:
        hydra_train()
    finally:
        distributed.shutdown()
    if summary.last_sweep_failures:
        raise SystemExit(1)


# ------------------------------------------------------------------------------------------------ config


@config_app.command("ls")
def config_ls() -> None:
    """Config groups and their options (the default in bold)."""
    choices = _guard(lambda: compose_config([], return_hydra_config=True)).hydra.runtime.choices
    for group, options in list_options().items():
        shown = [f"[bold]{o}[/] (default)" if o == choices.get(group) else o for o in options]
        Console().print(f"{group}: " + ", ".join(shown))


@config_app.command("show", context_settings=PASSTHROUGH)
def config_show(
    ctx: typer.Context, resolve: bool = typer.Option(True, help="Resolve interpolations.")
) -> None:
    """Print the composed config for the given overrides."""
    cfg = _guard(lambda: compose_config(list(ctx.args)))
    _guard(lambda: check_config(cfg))
    print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")


@config_app.command("validate")
def config_validate() -> None:
    """Compose every option of every group and check it against what it builds (nothing is run)."""
    failures = 0
    for group, options in list_options().items():
        for option in options:
            try:
                problems = validate_config(compose_config([f"{group}={option}"], return_hydra_config=True))
            except UserError as err:
                problems = [str(err)]
            status = "[green]ok[/]" if not problems else "[red]FAILED[/]"
            Console().print(f"{group}={option}: {status}")
            for problem in problems:
                Console().print(f"    {problem}", highlight=False)
            failures += bool(problems)
    if failures:
        console.print(f"[bold red]{failures} config(s) failed validation[/]")
        raise SystemExit(EXIT_USER_ERROR)


# -------------------------------------------------------------------------------------------------- data


@data_app.command("stats", context_settings=PASSTHROUGH)
def data_stats(ctx: typer.Context) -> None:
    """Users, items, interactions and density per split, protocol steps, sequential samples, bad data
    dropped from the source files, and item-group sizes: `fairbench data stats dataset=ml1m`."""
    from fairbench.data import build_item_groups, dataset_stats, load_dataset

    def work() -> None:
        cfg = compose_config(list(ctx.args))
        check_config(cfg)
        cache_dir, data_dir = Path(cfg.paths.cache_dir).expanduser(), Path(cfg.paths.data_dir).expanduser()
        data = load_dataset(cfg.dataset, cache_dir=cache_dir, data_dir=data_dir)
        groups = build_item_groups(data, cfg.dataset.groups)
        stats = dataset_stats(data, groups)
        _print_stats(stats)

    _guard(work)


def _print_stats(stats: Any) -> None:
    """Print a :class:`fairbench.data.DatasetStats` as plain text (group names may look like markup)."""
    from fairbench.data import DatasetStats

    if isinstance(stats, DatasetStats):
        print(stats, flush=True)
        return
    import pandas as pd

    out = Console()
    items = stats.items() if isinstance(stats, dict) else [("stats", stats)]
    for name, value in items:
        if isinstance(value, pd.DataFrame):
            out.print(f"[bold]{name}[/]")
            out.print(value.to_string(index=False))
        elif isinstance(value, dict):
            out.print(f"[bold]{name}[/]")
            out.print(json.dumps(value, indent=2, default=str))
        else:
            out.print(f"{name}: {value}")


# ------------------------------------------------------------------------------------------------- embed


@app.command("embed", context_settings=PASSTHROUGH)
def embed_command(ctx: typer.Context) -> None:
    """Precompute and cache a backbone's item vectors: `fairbench embed backbone=llama2-7b dataset=ml100k`.

    Takes the same overrides as `train` (backbone, dataset, device, paths). Vectors go to the cache that
    `train` reads (<paths.cache_dir>/vectors); an interrupted run resumes from its finished chunks.
    """
    from fairbench.backbones import embed
    from fairbench.data import load_dataset
    from fairbench.runtime import resolve_device

    def work() -> None:
        cfg = compose_config(list(ctx.args))
        check_config(cfg)
        cache_dir, data_dir = Path(cfg.paths.cache_dir).expanduser(), Path(cfg.paths.data_dir).expanduser()
        data = load_dataset(cfg.dataset, cache_dir=cache_dir, data_dir=data_dir)
        device = resolve_device(str(cfg.device))
        result = embed(cfg.backbone, data.items, cache_dir=cache_dir, device=device, show_progress=True)
        how = "cache hit" if result.cache_hit else f"built on {device}"
        if result.shards_reused:
            how += f", resumed from {result.shards_reused} finished chunk(s)"
        Console().print(
            f"{cfg.backbone.name} vectors for {data.name}: {result.shape[0]} items x {result.shape[1]} dims "
            f"({how}, {result.seconds:.1f}s)\n{result.path}",
            highlight=False,
            soft_wrap=True,
        )

    _guard(work)


# ----------------------------------------------------------------------------------------------- analyze


@analyze_app.command("language-bias", context_settings=PASSTHROUGH)
def analyze_language_bias(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run directory (with .hydra/ and checkpoints/)."),
    split: str = typer.Option("test", help="Samples to score: test, valid or train."),
    groups: int = typer.Option(0, help="Token groups; 0 = the run's method.n_groups (GDRT) or 4."),
    max_samples: int = typer.Option(0, help="Score the first N samples only; 0 = all."),
) -> None:
    """Mean log-probability of the target tokens with and without the user's history, per token group
    (GDRT's language bias): `fairbench analyze language-bias outputs/runs/<date>/<time> device=cpu`.
    Extra key=value arguments override the run's config; writes language_bias_<split>.csv/.json/.png."""
    from fairbench.analysis.language_bias import analyze_run

    def work() -> None:
        table, paths = analyze_run(run_dir, split, groups or None, max_samples or None, list(ctx.args))
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
        Console().print("\n".join(str(p) for p in paths), highlight=False, soft_wrap=True)

    _guard(work)


# ------------------------------------------------------------------------------------------------ report


@app.command("report")
def report_command(
    sweep_dirs: list[Path] = typer.Argument(..., help="Sweep or run directories (searched recursively)."),
    by: str = typer.Option("model,method", help="Config groups or keys that make a configuration."),
    metric: str = typer.Option("recall@20", help="Metric of the paired tests and the x axis."),
    baseline: str = typer.Option(
        None, help="Configuration to test against: its label or key=value over --by, e.g. method=erm."
    ),
    split: str = typer.Option("test", help="Split whose metrics are reported (test or valid)."),
    columns: str = typer.Option(
        None, help="Comma-separated metrics of the table (default: accuracy, CV, MIN)."
    ),
    x: str = typer.Option(None, help="Scatter x axis (default: --metric)."),
    y: str = typer.Option(None, help="Scatter y axis (default: pop/cv@K)."),
    out: Path = typer.Option(None, help="Output folder (default: <first sweep dir>/report)."),
    title: str = typer.Option("fairbench report", help="Title of report.md and the scatter."),
    paper: str = typer.Option(None, help="Published table to put beside (see `fairbench reproduce list`)."),
    paper_dataset: str = typer.Option(
        None, help="Paper dataset to compare with (default: the run's, or the table's)."
    ),
    wandb: bool = typer.Option(False, "--wandb", help="Also log the table to W&B (mode as logger=wandb)."),
    wandb_project: str = typer.Option("fairbench", help="W&B project of the report run."),
    preface: Path = typer.Option(None, help="Markdown file put before the table (protocol, budgets)."),
    discussion: Path = typer.Option(None, help="Markdown file put after the figures (the analysis)."),
    document: Path = typer.Option(
        None, help="Write report.md as this file instead (e.g. docs/results.md), figures linked into --out."
    ),
) -> None:
    """Compare configurations of finished sweeps: mean ± std over seeds, paired tests vs a baseline with
    Holm correction, accuracy-fairness Pareto front; writes report.md/.csv/.json and plots."""
    from fairbench.report.command import make_report, read_markdown
    from fairbench.report.compare import ReportSpec

    spec = _guard(
        lambda: ReportSpec(
            by=[key.strip() for key in by.split(",") if key.strip()],
            metric=metric,
            baseline=baseline,
            split=split,
            columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
            x=x,
            y=y,
            title=title,
            command=shlex.join(["fairbench", *sys.argv[1:]]),
            preface=read_markdown(preface, "--preface"),
            discussion=read_markdown(discussion, "--discussion"),
        )
    )
    _guard(
        lambda: make_report(
            list(sweep_dirs), spec, out, wandb, wandb_project, paper, paper_dataset, document=document
        )
    )


# --------------------------------------------------------------------------------------------- reproduce


@app.command("reproduce", context_settings=PASSTHROUGH)
def reproduce_command(
    ctx: typer.Context,
    table: str = typer.Argument(..., help="A published table (`list` shows them)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the sweep and the report it would run."),
) -> None:
    """Rerun a published table: its sweep (`conf/experiment/<table>.yaml`), then `fairbench report` beside
    the published numbers, e.g. `fairbench reproduce bifair-table2 dataset=ml100k` (on the bundled dataset
    a table adds the bundled text encoder, backbone=minilm, unless the command line picks a backbone)."""
    from fairbench.report import reproduce
    from fairbench.report.tables import published_table

    if table == "list":
        for line in reproduce.describe_tables():
            Console().print(line, highlight=False, soft_wrap=True)
        return
    spec = _guard(lambda: published_table(table))
    overrides, added = _guard(lambda: reproduce.with_bundled_dataset_overrides(spec, list(ctx.args)))
    if added:
        Console().print(
            f"bundled dataset: adding {' '.join(added)} (the paper's encoder needs a GPU and a model hub; "
            "set the key on the command line to choose another)",
            highlight=False,
            soft_wrap=True,
        )
    args = reproduce.sweep_arguments(spec, overrides)
    target = _guard(lambda: reproduce.sweep_dir(spec, overrides))
    command = "fairbench train " + " ".join([*args, f"hydra.sweep.dir={target}"])
    report = reproduce.report_spec(spec)
    report_line = (
        f"fairbench report {target} --by {','.join(report.by)} --metric {report.metric} "
        f"--baseline {report.baseline} --columns {','.join(report.columns or [])} --paper {spec.name}"
    )
    report = dataclasses.replace(report, command=report_line)
    if dry_run:
        jobs = _guard(lambda: reproduce.planned_jobs(spec, overrides))
        _guard(
            lambda: check_sweep_configs(
                [f"experiment={spec.experiment}", *reproduce.sweep_lines(spec, overrides)]
            )
        )
        out = Console()
        out.print(f"{spec.title}\n{spec.paper}", highlight=False, soft_wrap=True)
        out.print(f"sweep ({len(jobs)} jobs):\n  {command}", highlight=False, soft_wrap=True)
        for number, job in enumerate(jobs):
            out.print(f"  job {number}: {' '.join(job)}", highlight=False, soft_wrap=True)
        out.print(f"then:\n  {report_line}", highlight=False, soft_wrap=True)
        return
    from fairbench.report import summary
    from fairbench.report.command import make_report

    _guard(lambda: prevalidate([f"experiment={spec.experiment}", *reproduce.sweep_lines(spec, overrides)]))
    Console().print(f"running: {command}", highlight=False, soft_wrap=True)
    summary.last_sweep_failures = 0
    sys.argv = [sys.argv[0] or "fairbench", *args, f"hydra.sweep.dir={target}"]
    hydra_train()
    project = _guard(lambda: reproduce.wandb_project(spec, overrides))
    _guard(
        lambda: make_report(
            [target], report, target / "report", project is not None, project or "", paper_table=spec.name
        )
    )
    if summary.last_sweep_failures:
        raise SystemExit(1)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(message)s"
    ) if not logging.getLogger().handlers else None
    app()


if __name__ == "__main__":
    # `python -m fairbench.cli`: run the imported module's app, not this `__main__` copy, so that Hydra
    # launchers that pickle the task (joblib, submitit) send a reference to `fairbench.cli`, not the
    # `__main__` module's globals by value (which fails on its logger's lock).
    from fairbench.cli import main as imported_main

    imported_main()

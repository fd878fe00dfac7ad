"""Experiment trackers. ``logger=wandb`` (default) or ``logger=none``; both share one small interface."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Literal

import pandas as pd

log = logging.getLogger(__name__)


class RunLogger:
    """Tracker interface; the base class is the no-op used by ``logger=none``."""

    def start(self, run_dir: Path, config: dict, name: str, group: str | None) -> None:
        """Open the tracker run for one Hydra job."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Per-epoch scalars."""

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final metrics of the run."""

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        """A results table (e.g. per-group utilities)."""

    def log_image(self, name: str, path: Path) -> None:
        """An image file (e.g. the group-utility plot)."""

    def finish(self, failed: bool = False) -> None:
        """Close the tracker run, marking it failed when the job raised."""


class NullLogger(RunLogger):
    """No tracker: results stay in the run directory."""


def wandb_api_key_configured() -> bool:
    """True when WANDB_API_KEY is set or ~/.netrc (or $NETRC) has credentials for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None) -> str:
    """Explicit config value, else WANDB_MODE, else online with an API key and offline without one."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_configured() else "offline"


class WandbLogger(RunLogger):
    """Weights & Biases: one W&B run per Hydra job, files under ``<run_dir>/wandb``."""

    def __init__(
        self,
        project: str = "fairbench",
        entity: str | None = None,
        mode: Literal["online", "offline", "disabled"] | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags = list(tags or [])
        self.run = None

    def start(self, run_dir: Path, config: dict, name: str, group: str | None) -> None:
        import wandb

        mode = resolve_wandb_mode(self.mode)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=mode,
            dir=str(run_dir),
            config=config,
            name=name,
            group=self.group or group,
            tags=self.tags,
            reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        log.info("wandb run %s (mode %s) in %s", self.run.id, mode, run_dir / "wandb")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_summary(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(dataframe=frame)})

    def log_image(self, name: str, path: Path) -> None:
        if self.run is not None and path.is_file():
            import wandb

            self.run.log({name: wandb.Image(str(path))})

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None

"""Job directories of finished (or partly finished) runs and sweeps, as ``fairbench report`` reads them.

A job directory holds ``.hydra/config.yaml`` (its config), ``.hydra/hydra.yaml`` (the chosen option of every
config group), ``.hydra/overrides.yaml``, ``status.json``, and when it completed ``metrics.json``,
``groups.csv`` and ``per_user.parquet``. Logs are never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from fairbench.errors import UserError

#: override keys that never tell two configurations apart (seeds are averaged over, the rest is bookkeeping)
NOT_A_SETTING = (
    "seed",
    "hydra",
    "logger",
    "paths",
    "device",
    "ckpt_path",
    "skip_completed",
    "trainer.progress",
)


@dataclass
class Job:
    """One run directory."""

    path: Path
    config: DictConfig
    choices: dict[str, str]
    overrides: dict[str, str]
    status: str
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def seed(self) -> int | None:
        return OmegaConf.select(self.config, "seed", default=None)

    def setting(self, key: str) -> str:
        """The value of ``key`` for grouping: a config group's chosen option (``model`` -> ``alpharec``) or
        any config value (``method.groups`` -> ``popularity``)."""
        if key in self.choices:
            return str(self.choices[key])
        value = OmegaConf.select(self.config, key, default="__missing__")
        if value == "__missing__":
            groups = ", ".join(sorted(self.choices))
            raise UserError(
                f"--by {key}: neither a config group ({groups}) nor a config key of job {self.path}"
            )
        return "-" if value is None else str(value)

    def per_user(self) -> pd.DataFrame | None:
        """The job's ``per_user.parquet`` (None when the run predates it or did not finish)."""
        path = self.path / "per_user.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    def groups(self) -> pd.DataFrame | None:
        path = self.path / "groups.csv"
        return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None

    def data_key(self) -> str:
        """What decides the evaluated rows: the dataset node (source, protocol with its seed, groups) and
        what a row is (user or sample). Per-row values of two jobs are paired only when their keys match."""
        dataset = OmegaConf.to_container(self.config.get("dataset", {}), resolve=False)
        rows = OmegaConf.select(self.config, "metric.rows", default="auto")
        if rows == "auto":
            try:
                model = get_object(str(self.config.model._target_))
                rows = "sample" if getattr(model, "batch_unit", "") == "sample" else "user"
            except Exception:  # noqa: BLE001 - a model class that no longer imports: key by its name
                rows = f"auto:{self.choices.get('model')}"
        return json.dumps([dataset, rows], sort_keys=True, default=str)


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``['model=mf', '++model.loss=infonce']`` -> ``{'model': 'mf', 'model.loss': 'infonce'}``."""
    return dict(str(line).lstrip("+~").split("=", 1) for line in lines if "=" in str(line))


def load_job(path: Path) -> Job:
    hydra_dir = path / ".hydra"
    config = OmegaConf.load(hydra_dir / "config.yaml")
    choices: dict[str, str] = {}
    if (hydra_dir / "hydra.yaml").is_file():
        runtime = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices")
        if runtime is not None:
            choices = {
                str(k): str(v)
                for k, v in runtime.items()
                if v is not None and not str(k).startswith("hydra/")
            }
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = (
        parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else {}
    )
    status_file, metrics_file = path / "status.json", path / "metrics.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    job = Job(
        path,
        config,
        choices,
        overrides,
        status.get("status", "unknown"),
        status.get("error", "" if status else "no status.json: the job did not finish"),
    )
    if job.completed and metrics_file.is_file():
        job.metrics = {
            k: (float("nan") if v is None else v) for k, v in json.loads(metrics_file.read_text()).items()
        }
    elif job.completed:
        job.status, job.error = "incomplete", "completed without metrics.json"
    return job


def find_jobs(paths: list[Path]) -> list[Job]:
    """Every job directory at or below ``paths`` (sweep directories, job directories, or folders of them)."""
    jobs: list[Job] = []
    for root in paths:
        if not root.is_dir():
            raise UserError(f"fairbench report: {root} is not a directory; give sweep or run directories")
        found = sorted({p.parent.parent for p in root.glob("**/.hydra/config.yaml")}, key=_job_order)
        if not found:
            raise UserError(f"fairbench report: no job directory (holding .hydra/config.yaml) under {root}")
        jobs += [load_job(path) for path in found]
    return jobs


def _job_order(path: Path) -> tuple[str, int, str]:
    return (str(path.parent), int(path.name) if path.name.isdigit() else 1 << 30, path.name)


def sweep_command(sweep_dir: Path) -> str | None:
    """The ``fairbench train -m ...`` command line that made a sweep (from its ``multirun.yaml``)."""
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return None
    task = OmegaConf.select(OmegaConf.load(multirun), "hydra.overrides.task", default=None) or []
    return "fairbench train -m " + " ".join(str(a) for a in task)


def configuration_labels(jobs: list[Job], by: list[str]) -> list[tuple[tuple[str, ...], str]]:
    """Per job: (values of the ``by`` keys, label). The label adds the job's other overrides whose values
    differ between jobs with the same ``by`` values (never the seed), so runs that differ in more than ``by``
    are not averaged together, e.g. ``mf / erm [model.loss=infonce]``."""

    def settings(job: Job) -> dict[str, str]:
        return {
            k: v
            for k, v in job.overrides.items()
            if k not in by and not any(k == s or k.startswith(s + ".") for s in NOT_A_SETTING)
        }

    per_job = [settings(job) for job in jobs]
    values = [tuple(job.setting(key) for key in by) for job in jobs]
    keys = list(dict.fromkeys(k for s in per_job for k in s))
    # only what tells apart jobs with the same ``by`` values (other sweeps' own settings add no noise)
    same_values: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for value, own in zip(values, per_job, strict=True):
        same_values.setdefault(value, []).append(own)
    varying = {
        value: [k for k in keys if len({s.get(k) for s in same}) > 1] for value, same in same_values.items()
    }
    labels = []
    for value, own in zip(values, per_job, strict=True):
        extra = [f"{k}={own[k]}" for k in varying[value] if k in own]
        labels.append((value, " / ".join(value) + (f" [{', '.join(extra)}]" if extra else "")))
    return labels

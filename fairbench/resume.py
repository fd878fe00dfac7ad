"""Sweeps that survive: a job whose run directory already holds a completed run of the same config is
skipped when the sweep command is run again (``skip_completed``, default true), so an interrupted sweep
restarts where it stopped; failed and unfinished jobs run again.

The completion fingerprint hashes the resolved config without the keys that cannot change a finished run's
results (:data:`NOT_RESULTS`); unlike the checkpoint fingerprint it keeps the training budget
(``trainer.max_epochs``, ``trainer.patience``) and the post-processor, so a rerun with more epochs runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fairbench.config import config_hash

#: keys that do not change what a completed run measured: where files go, trackers, device, progress bars,
#: the evaluation batch size (metrics do not depend on it), checkpoint bookkeeping, resuming
NOT_RESULTS = (
    "hydra",
    "paths",
    "logger",
    "device",
    "ckpt_path",
    "skip_completed",
    "trainer.progress",
    "trainer.eval_batch_size",
    "trainer.checkpoint",
    "trainer.checkpoint_every",
)


def completion_fingerprint(cfg: DictConfig) -> str:
    """Hash of the resolved config without :data:`NOT_RESULTS`."""
    return config_hash(cfg, NOT_RESULTS)


def completed_metrics(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The metrics of a run completed in ``run_dir`` with this fingerprint, else None."""
    status_file, metrics_file = run_dir / "status.json", run_dir / "metrics.json"
    if not (status_file.is_file() and metrics_file.is_file()):
        return None
    try:
        status = json.loads(status_file.read_text())
        if status.get("status") != "completed" or status.get("fingerprint") != fingerprint:
            return None
        return json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None

"""One experiment, top to bottom.

    config -> dataset (protocol, split) -> item groups -> LM item vectors (cached)
           -> recommender trained under a fairness method (early stopping on valid)
           -> full ranking -> metrics -> run directory files + tracker

Each stage is a function with plain data in and out; this file only wires them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from fairbench.backbones import item_vectors
from fairbench.config import build, check_config
from fairbench.data import build_item_groups, load_dataset
from fairbench.errors import UserError
from fairbench.evaluation import MetricConfig, available_group_kinds, evaluate_split
from fairbench.methods.base import FairnessMethod
from fairbench.models.base import Recommender
from fairbench.report.loggers import RunLogger
from fairbench.report.results import plot_group_utilities, print_results, write_csv, write_json
from fairbench.training import TrainerConfig, fit

log = logging.getLogger(__name__)

GROUP_KIND_ALIASES = {"popularity": "pop", "pop": "pop", "genre": "genre"}


@dataclass
class RunResult:
    """Everything a run produced, also written to its directory."""

    metrics: dict[str, float]
    groups: pd.DataFrame
    history: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:N)") from err


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of what determines the trajectory of a run (everything but epochs, patience and logging)."""
    keep = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in ("dataset", "backbone", "model", "method", "metric")
    }
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    keep["trainer"] = {
        k: v for k, v in trainer.items() if k in ("batch_size", "lr", "weight_decay", "eval_every")
    }
    keep["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def method_group_kind(method_cfg: DictConfig) -> str | None:
    """The item-group kind a fairness method balances (``method.groups``), or None."""
    value = method_cfg.get("groups")
    if value is None:
        return None
    if value not in GROUP_KIND_ALIASES:
        raise UserError(f"method.groups={value!r}: choose popularity or genre")
    return GROUP_KIND_ALIASES[value]


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger | None = None) -> RunResult:
    """Run one experiment described by ``cfg``; files go to ``run_dir``."""
    check_config(cfg)
    logger = logger or RunLogger()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    cache_dir, data_dir = Path(cfg.paths.cache_dir).expanduser(), Path(cfg.paths.data_dir).expanduser()
    trainer_cfg: TrainerConfig = build(cfg.trainer)
    metric_cfg: MetricConfig = build(cfg.metric)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    data = load_dataset(cfg.dataset, cache_dir=cache_dir, data_dir=data_dir)
    groups = build_item_groups(data, cfg.dataset.groups)
    metric_cfg.group_kinds = available_group_kinds(metric_cfg, groups)
    timings["data"] = time.perf_counter() - started
    log.info(
        "dataset %s: %d users, %d items, %d train interactions",
        data.name,
        data.n_users,
        data.n_items,
        data.train.nnz,
    )

    model_cls = get_object(cfg.model._target_)
    runtime_args: dict = {"train": data.train}
    if getattr(model_cls, "uses_text_vectors", False):
        started = time.perf_counter()
        runtime_args["item_vectors"] = item_vectors(
            cfg.backbone,
            data.items,
            cache_dir=cache_dir,
            device=str(device),
            show_progress=trainer_cfg.progress,
        )
        timings["embedding"] = time.perf_counter() - started

    torch.manual_seed(cfg.seed)
    model: Recommender = build(cfg.model, **runtime_args)
    method: FairnessMethod = build(cfg.method)
    kind = method_group_kind(cfg.method)
    if kind is not None and kind not in groups:
        raise UserError(f"method.groups asks for {kind} groups but the dataset builds only {sorted(groups)}")
    method_groups = groups[kind] if kind is not None else None

    def validate(current: Recommender) -> dict[str, float]:
        return evaluate_split(current, data, "valid", groups, metric_cfg, trainer_cfg.eval_batch_size).metrics

    def on_evaluation(epoch: int, row: dict[str, float]) -> None:
        logger.log_metrics({k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch}, step=epoch)

    started = time.perf_counter()
    fitted = fit(
        model,
        method,
        data.train,
        trainer_cfg,
        validate,
        seed=cfg.seed,
        item_groups=torch.from_numpy(method_groups.membership.astype(np.float32)) if method_groups else None,
        group_names=method_groups.names if method_groups else None,
        device=device,
        checkpoint_dir=run_dir / "checkpoints",
        resume_from=Path(cfg.ckpt_path) if cfg.ckpt_path else None,
        fingerprint=config_fingerprint(cfg),
        on_evaluation=on_evaluation,
        train_timestamps=data.train_timestamps,
    )
    timings["training"] = time.perf_counter() - started
    timings["seconds_per_epoch"] = fitted.seconds_per_epoch

    started = time.perf_counter()
    final = dict(batch_size=trainer_cfg.eval_batch_size, progress=trainer_cfg.progress)
    valid = evaluate_split(model, data, "valid", groups, metric_cfg, **final)
    test = evaluate_split(model, data, "test", groups, metric_cfg, **final)
    timings["evaluation"] = time.perf_counter() - started

    metrics = {f"valid/{k}": v for k, v in valid.metrics.items()}
    metrics |= {f"test/{k}": v for k, v in test.metrics.items()}
    metrics |= {
        "train/best_epoch": fitted.best_epoch,
        "train/epochs": fitted.epochs_run,
        "train/stopped_early": float(fitted.stopped_early),
    }
    metrics |= {f"time/{k}": v for k, v in timings.items()}
    group_table = pd.concat([valid.groups.assign(split="valid"), test.groups.assign(split="test")])
    history = pd.DataFrame(fitted.history)
    write_outputs(run_dir, metrics, group_table, history, metric_cfg)
    logger.log_summary(metrics)
    logger.log_table("groups", group_table)
    logger.log_image("group_utilities", run_dir / "group_utilities.png")
    print_results(metrics, metric_cfg.ks, metric_cfg.group_kinds, run_dir)
    return RunResult(metrics=metrics, groups=group_table, history=history, timings=timings)


def write_outputs(
    run_dir: Path, metrics: dict[str, float], groups: pd.DataFrame, history: pd.DataFrame, cfg: MetricConfig
) -> None:
    """metrics.json, groups.csv, history.csv and group_utilities.png in the run directory."""
    write_json(run_dir / "metrics.json", metrics)
    write_csv(
        run_dir / "groups.csv",
        groups.reindex(columns=["split", "kind", "group", "k", "n_items", "utility", "gu"]),
    )
    write_csv(run_dir / "history.csv", history)
    k = 20 if 20 in cfg.ks else max(cfg.ks)
    if groups.empty:
        return
    plot_group_utilities(
        groups[groups["split"] == "test"],
        k,
        run_dir / "group_utilities.png",
        title=f"test utility@{k} per item group ({os.path.basename(run_dir)})",
    )

"""One experiment, top to bottom, as stage functions with plain data between them.

    prepare   config -> dataset (protocol, split) -> item groups -> model inputs (LM item vectors, cached)
              -> model, fairness method, post-processor                              (:class:`Experiment`)
    train     the model under its method, early stopping on validation            (:class:`FitResult`)
    rank      top-K lists for the validation and test rows                          (:class:`Ranking`)
    postprocess  a reranker fitted on the validation ranking, applied to both
    evaluate  metrics of each split's lists                                       (:class:`SplitResult`)
    report    metrics.json, groups.csv, history.csv, plot, tracker, printed table

:func:`run` is those calls in order; scripts and tests call the stages they need. Nothing here reaches back
up: each stage gets what it needs as arguments.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from fairbench import distributed
from fairbench.capabilities import check_compatibility
from fairbench.config import check_config, config_hash
from fairbench.data import build_item_groups, load_dataset
from fairbench.data.types import InteractionData, ItemGroups
from fairbench.errors import UserError
from fairbench.evaluation import (
    MetricConfig,
    Ranking,
    SplitResult,
    available_group_kinds,
    evaluate_ranking,
    evaluate_split,
    evaluation_rows,
    rank,
    row_unit,
)
from fairbench.methods.base import FairnessMethod
from fairbench.models.base import Recommender
from fairbench.postprocess.base import PostProcessor
from fairbench.report.loggers import RunLogger
from fairbench.report.per_user import write_per_user
from fairbench.report.results import plot_group_utilities, print_results, write_csv, write_json, write_jsonl
from fairbench.runtime import build, resolve_device, seed_everything
from fairbench.training import FitResult, TrainerConfig, fit

log = logging.getLogger(__name__)

#: config keys that do not change a run's trajectory up to where it stopped: a run may be resumed with
#: other values (e.g. more epochs); everything else must match the checkpoint's config
RESUMABLE_KEYS = (
    "ckpt_path",
    "device",
    "paths",
    "logger",
    "hydra",
    "trainer.max_epochs",
    "trainer.patience",
    "trainer.progress",
    "trainer.checkpoint",
    "trainer.checkpoint_every",
    "trainer.eval_batch_size",
    "postprocess",
    "skip_completed",
)


@dataclass
class Inputs:
    """The data side of a run: the processed dataset, its item groups and the LM item vectors (if used)."""

    data: InteractionData
    groups: dict[str, ItemGroups]
    item_vectors: np.ndarray | None = None
    #: the loaded causal LM of models that fine-tune one (it also embedded the item vectors)
    lm: Any = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Experiment:
    """Everything a run needs, built from its config by :func:`prepare`."""

    cfg: DictConfig
    inputs: Inputs
    model: Recommender
    method: FairnessMethod
    postprocessor: PostProcessor
    trainer: TrainerConfig
    metric: MetricConfig
    device: torch.device

    @property
    def data(self) -> InteractionData:
        return self.inputs.data

    @property
    def groups(self) -> dict[str, ItemGroups]:
        return self.inputs.groups

    @property
    def method_groups(self) -> ItemGroups | None:
        """The item groups the method balances, or None."""
        kind = self.method.group_kind
        return self.groups[kind] if kind is not None else None


@dataclass
class RunResult:
    """Everything a run produced, also written to its directory."""

    metrics: dict[str, float]
    groups: pd.DataFrame
    history: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)


def config_fingerprint(cfg: DictConfig) -> str:
    """Hash of the config without :data:`RESUMABLE_KEYS`: what determines the trajectory of a run."""
    resumable = list(RESUMABLE_KEYS)
    if OmegaConf.select(cfg, "trainer.lr_schedule", default="constant") != "constant":
        resumable.remove("trainer.max_epochs")  # a decaying learning rate depends on the planned length
    return config_hash(cfg, resumable)


def check_before_work(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone: keys and types of every node, the values the
    constructors check, and that model, method and post-processor fit together (no data is loaded)."""
    name = OmegaConf.select(cfg, "hydra.runtime.choices.model", default=None)
    model_cls = _importable(OmegaConf.select(cfg, "model._target_", default=None))
    if getattr(model_cls, "uses_causal_lm", False):  # first: a wrong backbone's keys would hide the cause
        from fairbench.backbones.causal_lm import CausalLMBackbone

        encoder = _importable(OmegaConf.select(cfg, "backbone.encoder._target_", default=None))
        if not (isinstance(encoder, type) and issubclass(encoder, CausalLMBackbone)):
            raise UserError(
                f"model {name or model_cls.__name__} fine-tunes a causal LM, but backbone "
                f"{cfg.backbone.get('name')} is a text encoder ({cfg.backbone.encoder._target_}); "
                "choose a causal LM backbone, e.g. backbone=smollm2-135m"
            )
    check_config(cfg)
    trainer: TrainerConfig = build(cfg.trainer)
    build(cfg.metric)
    method: FairnessMethod = build(cfg.method)
    method.group_kind  # noqa: B018 - validates method.groups
    if method.combines_gradients and trainer.custom_update:
        raise UserError(
            f"method {type(method).__name__} combines gradients in its own update step, so trainer "
            f"{', '.join(trainer.custom_update)} cannot apply; leave them at their defaults (1, 32, null)"
        )
    postprocessor: PostProcessor = build(cfg.postprocess)
    check_compatibility(get_object(cfg.model._target_), method, postprocessor, model_name=name)
    if distributed.planned_world_size() > 1:
        distributed.check_data_parallel(method)


def _importable(target: str | None) -> object | None:
    """The object a ``_target_`` names, or None when it cannot be imported (config validation says why)."""
    try:
        return get_object(str(target)) if target else None
    except Exception:  # noqa: BLE001 - reported by check_config with its own message
        return None


# ------------------------------------------------------------------------------------------------ stages


def load_inputs(cfg: DictConfig, device: str = "cpu", progress: bool = False, vectors: bool = True) -> Inputs:
    """Dataset (cached), item groups, and the LM item vectors when the model consumes them (cached;
    ``vectors=False`` skips them)."""
    cache_dir, data_dir = Path(cfg.paths.cache_dir).expanduser(), Path(cfg.paths.data_dir).expanduser()
    started = time.perf_counter()
    data = load_dataset(cfg.dataset, cache_dir=cache_dir, data_dir=data_dir)
    groups = build_item_groups(data, cfg.dataset.groups)
    inputs = Inputs(data, groups, timings={"data": time.perf_counter() - started})
    log.info(
        "dataset %s: %d users, %d items, %d train interactions",
        data.name,
        data.n_users,
        data.n_items,
        data.train.nnz,
    )
    model_cls = get_object(cfg.model._target_)
    if getattr(model_cls, "uses_causal_lm", False):
        from fairbench.backbones import build_encoder

        inputs.lm = build_encoder(cfg.backbone.encoder, device)  # loaded once: embeds, then is fine-tuned
    if vectors and getattr(model_cls, "uses_text_vectors", False):
        from fairbench.backbones import item_vectors

        started = time.perf_counter()
        inputs.item_vectors = item_vectors(
            cfg.backbone,
            data.items,
            cache_dir=cache_dir,
            device=device,
            show_progress=progress,
            encoder=inputs.lm,
        )
        inputs.timings["embedding"] = time.perf_counter() - started
    return inputs


def prepare(cfg: DictConfig, inputs: Inputs | None = None) -> Experiment:
    """Check the config, load the inputs (or reuse ``inputs``) and build model, method and post-processor."""
    check_before_work(cfg)
    seed_everything(cfg.seed)
    device = torch.device(distributed.local_device(resolve_device(cfg.device)))
    trainer: TrainerConfig = build(cfg.trainer)
    metric: MetricConfig = build(cfg.metric)
    if inputs is None:
        with distributed.main_process_first():  # one process fills the caches, the others read them
            inputs = load_inputs(cfg, str(device), trainer.progress)
    metric.group_kinds = available_group_kinds(metric, inputs.groups)
    model_cls = get_object(cfg.model._target_)
    runtime: dict = {"train": inputs.data.train}
    if model_cls.batch_unit == "sample":
        runtime = {"data": inputs.data}
    if model_cls.uses_text_vectors:
        runtime["item_vectors"] = inputs.item_vectors
    if getattr(model_cls, "uses_causal_lm", False):
        if inputs.lm is None:
            from fairbench.backbones import build_encoder

            inputs.lm = build_encoder(cfg.backbone.encoder, str(device))
        runtime["lm"] = inputs.lm
    torch.manual_seed(cfg.seed)
    model: Recommender = build(cfg.model, **runtime)
    method: FairnessMethod = build(cfg.method)
    postprocessor: PostProcessor = build(cfg.postprocess)
    for key, kind in (("method.groups", method.group_kind), ("postprocess.groups", postprocessor.group_kind)):
        if kind is not None and kind not in inputs.groups:
            raise UserError(
                f"{key} asks for {kind} groups but the dataset builds only {sorted(inputs.groups)}"
            )
    return Experiment(cfg, inputs, model, method, postprocessor, trainer, metric, device)


def train(
    exp: Experiment,
    run_dir: Path | None = None,
    logger: RunLogger | None = None,
    validate: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Fit the model under its method; validation metrics select the best state (never test).

    ``validate=False`` skips validation (benchmarks: the monitor is a constant, the last state is kept);
    ``run_dir`` None writes no checkpoint.
    """

    def validation_metrics(current: Recommender) -> dict[str, float]:
        if not validate:
            return {exp.trainer.monitor: 0.0}
        validation_loss = getattr(current, "validation_loss", None)
        if callable(validation_loss) and exp.trainer.monitor == "loss":
            return {"loss": validation_loss()}  # ranking the validation samples each epoch is not needed
        return evaluate_split(
            current, exp.data, "valid", exp.groups, exp.metric, exp.trainer.eval_batch_size
        ).metrics

    def on_evaluation(epoch: int, row: dict[str, float]) -> None:
        if logger is not None:
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch}, step=epoch)

    method_groups = exp.method_groups
    return fit(
        exp.model,
        exp.method,
        exp.data.train,
        exp.trainer,
        validation_metrics,
        seed=exp.cfg.seed,
        item_groups=torch.from_numpy(method_groups.membership.astype(np.float32)) if method_groups else None,
        group_names=method_groups.names if method_groups else None,
        device=exp.device,
        checkpoint_dir=run_dir / "checkpoints" if run_dir is not None else None,
        resume_from=Path(exp.cfg.ckpt_path) if exp.cfg.ckpt_path else None,
        fingerprint=config_fingerprint(exp.cfg),
        on_evaluation=on_evaluation,
        on_epoch_end=on_epoch_end,
        train_timestamps=exp.data.train_timestamps,
        samples=(exp.data.samples or {}).get("train"),
    )


def rank_splits(exp: Experiment) -> dict[str, Ranking]:
    """Test (and validation: for ``metric.final_valid`` or a post-processor fitted on it) rankings, deep
    enough for the post-processor."""
    depth = exp.postprocessor.candidates(max(exp.metric.ks))
    unit = row_unit(exp.model, exp.metric)
    splits = ["valid", "test"] if exp.metric.final_valid or exp.postprocessor.fits_on_validation else ["test"]
    return {
        split: rank(
            exp.model,
            evaluation_rows(exp.data, split, unit),
            depth,
            exp.trainer.eval_batch_size,
            exp.trainer.progress,
        )
        for split in splits
    }


def postprocess(exp: Experiment, rankings: dict[str, Ranking]) -> dict[str, Ranking]:
    """Fit the post-processor on the validation ranking, then rerank every split."""
    if exp.postprocessor.fits_on_validation:
        exp.postprocessor.fit(rankings["valid"], exp.groups, exp.metric)
    k = max(exp.metric.ks)
    return {split: exp.postprocessor.apply(ranking, k) for split, ranking in rankings.items()}


def evaluate(exp: Experiment, rankings: dict[str, Ranking]) -> dict[str, SplitResult]:
    """Metrics of every split's lists."""
    return {split: evaluate_ranking(ranking, exp.groups, exp.metric) for split, ranking in rankings.items()}


def collect_metrics(
    exp: Experiment, results: dict[str, SplitResult], fitted: FitResult, timings: dict[str, float]
) -> dict[str, float]:
    """The run's flat metrics: ``valid/*``, ``test/*``, ``train/*``, ``postprocess/*``, ``time/*``."""
    metrics: dict[str, float] = {}
    for split, result in results.items():
        metrics |= {f"{split}/{k}": v for k, v in result.metrics.items()}
    metrics |= {
        "train/best_epoch": fitted.best_epoch,
        "train/epochs": fitted.epochs_resumed + fitted.epochs_run,
        "train/stopped_early": float(fitted.stopped_early),
    }
    metrics |= {f"postprocess/{k}": v for k, v in exp.postprocessor.chosen().items()}
    return metrics | {f"time/{k}": v for k, v in timings.items()}


def report(
    run_dir: Path,
    metrics: dict[str, float],
    results: dict[str, SplitResult],
    fitted: FitResult,
    metric: MetricConfig,
    logger: RunLogger,
) -> RunResult:
    """metrics.json, groups.csv, history.csv and group_utilities.png; the tracker; the printed table."""
    group_table = pd.concat([result.groups.assign(split=split) for split, result in results.items()])
    history = pd.DataFrame(fitted.history)
    write_outputs(run_dir, metrics, group_table, history, metric)
    logger.log_summary(metrics)
    logger.log_table("groups", group_table)
    logger.log_image("group_utilities", run_dir / "group_utilities.png")
    print_results(metrics, metric.ks, metric.group_kinds, run_dir)
    return RunResult(metrics=metrics, groups=group_table, history=history)


def run(cfg: DictConfig, run_dir: Path, logger: RunLogger | None = None) -> RunResult:
    """Run one experiment described by ``cfg``; files go to ``run_dir``."""
    logger = logger or RunLogger()
    exp = prepare(cfg)
    timings = dict(exp.inputs.timings)

    started = time.perf_counter()
    fitted = train(exp, run_dir, logger)
    timings["training"] = time.perf_counter() - started
    timings["seconds_per_epoch"] = fitted.seconds_per_epoch
    if not distributed.context().is_main:  # data-parallel: rank 0 alone ranks, evaluates and reports
        return RunResult(metrics={}, groups=pd.DataFrame(), history=pd.DataFrame(fitted.history))

    started = time.perf_counter()
    rankings = postprocess(exp, rank_splits(exp))
    results = evaluate(exp, rankings)
    timings["evaluation"] = time.perf_counter() - started

    metrics = collect_metrics(exp, results, fitted, timings)
    write_per_user(run_dir / "per_user.parquet", rankings, exp.groups, exp.metric)
    if rankings["test"].details is not None:
        write_jsonl(run_dir / "generations.jsonl", rankings["test"].details)
    result = report(run_dir, metrics, results, fitted, exp.metric, logger)
    result.timings = timings
    return result


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

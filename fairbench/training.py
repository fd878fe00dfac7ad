"""The training loop: batches from the model's batch source, method-defined updates, early stopping on
validation.

What one sample is comes from the model (:mod:`fairbench.batches`: interaction pairs with negatives, whole
users, or next-item samples). A loss-combining method returns an objective and the trainer does backward
and step, with gradient accumulation (``accumulate_grad_batches``: micro-batch losses are scaled by their
share of the accumulated samples, so the step equals the one of a single batch of all of them), mixed
precision (``precision``: ``32``, ``bf16`` autocast on CPU or GPU, ``16-mixed`` autocast with a gradient
scaler on CUDA) and gradient clipping (``gradient_clip``, max global L2 norm). A gradient-combining method
owns its step (:meth:`fairbench.methods.base.FairnessMethod.training_step`) and the three options must stay
at their defaults.

Model selection: ``monitor`` (a validation metric or loss) is maximised or minimised (``monitor_mode``);
the best state, and every checkpoint, hold what the model declares trainable
(:meth:`fairbench.models.base.Recommender.trainable_state_dict`), never a frozen LLM.

Determinism: the order of the training samples and the sampled negatives of epoch ``e`` come from a
generator seeded with (seed, e) alone, and a model's own randomness (SGL views, XSimGCL noise, MultVAE
dropout) from a second seed of (seed, e) passed to ``model.on_epoch_start``; so a run resumed from a
checkpoint reproduces the uninterrupted run exactly.

Data-parallel (several processes under torchrun / accelerate, :mod:`fairbench.distributed`): one optimiser
step covers ``accumulate_grad_batches x world size`` micro-batches dealt out over the processes, with
gradients summed before the step, so the run takes the single-process steps with that accumulation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from fairbench.batches import NegativeSampler, batch_source
from fairbench.data.types import SequentialSamples
from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod, TrainContext
from fairbench.models.base import Batch, Recommender

__all__ = ["FitResult", "NegativeSampler", "TrainerConfig", "epoch_generator", "fit", "model_seed"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
Precision = Literal[32, "32", "bf16", "16-mixed"]


@dataclass
class TrainerConfig:
    """Training-loop settings (documented in conf/trainer/default.yaml)."""

    max_epochs: int = 500
    patience: int = 20
    eval_every: int = 1
    monitor: str = "recall@20"
    monitor_mode: Literal["max", "min"] = "max"
    batch_size: int = 4096
    lr: float = 5e-4
    weight_decay: float = 0.0
    accumulate_grad_batches: int = 1
    precision: Precision = "32"
    gradient_clip: float | None = None
    lr_schedule: Literal["constant", "linear"] = "constant"
    warmup_steps: int = 0
    eval_batch_size: int = 1024
    progress: bool = True
    checkpoint: bool = True
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        for name in (
            "max_epochs",
            "patience",
            "eval_every",
            "batch_size",
            "eval_batch_size",
            "accumulate_grad_batches",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"trainer.lr must be > 0, got {self.lr}")
        if self.monitor_mode not in ("max", "min"):
            raise UserError(f"trainer.monitor_mode must be max or min, got {self.monitor_mode!r}")
        self.precision = str(self.precision)  # type: ignore[assignment]
        if self.precision not in ("32", "bf16", "16-mixed"):
            raise UserError(f"trainer.precision must be 32, bf16 or 16-mixed, got {self.precision!r}")
        if self.gradient_clip is not None and self.gradient_clip <= 0:
            raise UserError(f"trainer.gradient_clip must be > 0 or null, got {self.gradient_clip}")
        if self.lr_schedule not in ("constant", "linear"):
            raise UserError(f"trainer.lr_schedule must be constant or linear, got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            raise UserError(f"trainer.warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def custom_update(self) -> list[str]:
        """The options a method that owns its step cannot honour, when set away from their defaults."""
        changed = []
        if self.accumulate_grad_batches != 1:
            changed.append(f"accumulate_grad_batches={self.accumulate_grad_batches}")
        if self.precision != "32":
            changed.append(f"precision={self.precision}")
        if self.gradient_clip is not None:
            changed.append(f"gradient_clip={self.gradient_clip}")
        if self.lr_schedule != "constant" or self.warmup_steps:
            changed.append(f"lr_schedule={self.lr_schedule}, warmup_steps={self.warmup_steps}")
        return changed

    def lr_factor(self, step: int, total: int) -> float:
        """Learning-rate multiplier of the ``step``-th optimiser step (0-based) of ``total``.

        Warm-up: step / warmup_steps while step < warmup_steps (the first step has lr 0, as in the
        Hugging Face Trainer's ``get_linear_schedule_with_warmup``, which BIGRec uses); then 1 (constant) or
        (total - step) / (total - warmup_steps) (linear decay to 0).
        """
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - self.warmup_steps))

    def improved(self, score: float, best: float) -> bool:
        """Whether ``score`` beats ``best`` in the direction of ``monitor_mode``."""
        return score > best if self.monitor_mode == "max" else score < best

    @property
    def worst_score(self) -> float:
        return -math.inf if self.monitor_mode == "max" else math.inf


@dataclass
class FitResult:
    """Outcome of :func:`fit`; ``history`` has one row per evaluation."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    epochs_run: int = 0
    #: epochs trained before this call, by the run it resumed (0 for a fresh run)
    epochs_resumed: int = 0
    stopped_early: bool = False
    seconds_per_epoch: float = 0.0
    #: mean training loss of the samples of every optimiser step taken by this call (all processes'
    #: samples; a resumed run lists its own steps only)
    step_losses: list[float] = field(default_factory=list)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch, a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def model_seed(seed: int, epoch: int) -> int:
    """Seed of a model's own random stream in one epoch, a function of (seed, epoch) only.

    Independent of :func:`epoch_generator`, so models that use it do not change the pair order or negatives.
    """
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0])


class Updater:
    """Backward, accumulation, precision, clipping and optimiser steps for loss-combining methods.

    Micro-batch ``j`` of an accumulation window of samples N_w contributes (n_j / N_w) * loss_j, so a
    window's gradient is that of the mean loss over all its samples, whatever the micro-batch sizes. With
    ``world_size`` W > 1 a window is ``accumulate_grad_batches x W`` micro-batches dealt out over the
    processes (:mod:`fairbench.distributed`); N_w counts the whole window and :meth:`finish_window` sums the
    gradients over the processes before the step, so every process takes the single-process step.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        optimizers: dict[str, torch.optim.Optimizer],
        device: torch.device,
        batch_sizes: list[int],
        world_size: int = 1,
    ) -> None:
        self.cfg, self.optimizers, self.device = cfg, optimizers, device
        if cfg.precision == "16-mixed" and device.type != "cuda":
            raise UserError("trainer.precision=16-mixed needs a CUDA device; use bf16 (or 32) on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "16-mixed" else None
        # samples in the accumulation window of every micro-batch of an epoch
        self.window = window = cfg.accumulate_grad_batches * world_size
        sizes = np.asarray(batch_sizes, dtype=np.float64)
        totals = np.add.reduceat(sizes, np.arange(0, len(sizes), window)) if len(sizes) else sizes
        self.window_shares = sizes / np.repeat(totals, window)[: len(sizes)]  # n_j / N_w per micro-batch
        self.n_steps = len(sizes)
        self.windows_per_epoch = len(totals)
        self.total_windows = self.windows_per_epoch * cfg.max_epochs
        self.base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers.values()]
        seen: set[int] = set()
        self.params = [  # every trainable parameter once, in the same order in every process
            p
            for opt in optimizers.values()
            for g in opt.param_groups
            for p in g["params"]
            if p.requires_grad and not (id(p) in seen or seen.add(id(p)))
        ]
        self.loss_sum = 0.0  # sum of n_j * loss_j over this process's micro-batches of the current window
        self.samples = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self.cfg.precision == "16-mixed":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def set_learning_rates(self, epoch: int, step: int) -> None:
        """lr = base lr x ``lr_factor`` of this window's optimiser step (a function of epoch and step, so a
        resumed run follows the same schedule)."""
        index = epoch * self.windows_per_epoch + step // self.window
        factor = self.cfg.lr_factor(index, self.total_windows)
        for optimizer, base in zip(self.optimizers.values(), self.base_lrs, strict=True):
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * factor

    def starts_window(self, step: int) -> bool:
        return step % self.window == 0

    def ends_window(self, step: int) -> bool:
        return (step + 1) % self.window == 0 or step + 1 == self.n_steps

    def backward(self, method: FairnessMethod, model: Recommender, batch: Batch, step: int, n: int) -> dict:
        """Forward and backward of micro-batch ``step`` of ``n`` samples (its loss scaled by its share of
        the window)."""
        with self.autocast():
            objective = method.objective(model, batch)
        loss = objective.loss.float() * float(self.window_shares[step])
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.loss_sum += float(objective.stats["loss"]) * n
        self.samples += n
        return objective.stats

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.loss_sum, self.samples = 0.0, 0

    def finish_window(self, epoch: int, step: int) -> tuple[float, int]:
        """The optimiser step of the window that ends at micro-batch ``step``: gradients summed over the
        processes, unscaled, clipped, stepped. Returns (sum of sample losses, samples) of the whole window."""
        from fairbench import distributed

        loss_sum, samples = self.loss_sum, self.samples
        if distributed.context().enabled:
            # which parameters got a gradient in any process: the others stay without one, as in one
            # process (an optimiser skips them rather than stepping on zeros)
            had = [float(p.grad is not None) for p in self.params]
            loss_sum, samples, *had = distributed.all_reduce_sum([loss_sum, samples, *had], self.device)
            distributed.all_reduce_gradients(self.params)
            for param, got in zip(self.params, had, strict=True):
                if not got:
                    param.grad = None
        if self.scaler is not None:
            for optimizer in self.optimizers.values():
                self.scaler.unscale_(optimizer)
        if self.cfg.lr_schedule != "constant" or self.cfg.warmup_steps:
            self.set_learning_rates(epoch, step)
        if self.cfg.gradient_clip is not None:
            groups = [g for optimizer in self.optimizers.values() for g in optimizer.param_groups]
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], self.cfg.gradient_clip)
        for optimizer in self.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        return loss_sum, int(samples)


def fit(
    model: Recommender,
    method: FairnessMethod,
    train: sp.csr_matrix,
    cfg: TrainerConfig,
    evaluate: Callable[[Recommender], dict[str, float]],
    *,
    seed: int,
    item_groups: torch.Tensor | None = None,
    group_names: list[str] | None = None,
    device: torch.device | str = "cpu",
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    fingerprint: str = "",
    on_evaluation: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    train_timestamps: np.ndarray | None = None,
    samples: SequentialSamples | None = None,
) -> FitResult:
    """Train ``model`` with ``method`` and restore the trainable state with the best validation monitor.

    ``evaluate(model)`` returns validation metrics (keys such as ``recall@20``); it must not look at test.
    ``fingerprint`` identifies the run's config; resuming from a checkpoint of another config is refused.
    ``train_timestamps`` (aligned with ``train.indices``) reach methods that need them (``needs_timestamps``);
    ``samples`` are the training samples of models with ``batch_unit = "sample"``.
    ``on_epoch_end(epoch)`` is called after every epoch's updates (timing, before any evaluation).

    Data-parallel when a process group is initialised (:mod:`fairbench.distributed`): every process calls
    ``fit`` with the same arguments and takes the same steps; each optimiser step covers
    ``accumulate_grad_batches x world size`` micro-batches; rank 0 alone evaluates (the others receive its
    metrics) and writes checkpoints.
    """
    from fairbench import distributed

    dist_ctx = distributed.context()
    device = torch.device(device)
    result = FitResult(best_score=cfg.worst_score)
    if not model.needs_training:
        model.to(device).eval()
        return result
    batch_size = cfg.batch_size if model.batch_unit != "user" else (model.users_per_batch or cfg.batch_size)
    source = batch_source(
        model.batch_unit,
        batch_size,
        train,
        num_negatives=model.num_negatives,
        timestamps=train_timestamps,
        samples=samples,
    )
    steps_per_epoch = source.steps_per_epoch
    if method.combines_gradients and cfg.custom_update:
        raise UserError(
            f"{type(method).__name__} combines gradients in its own update step, so trainer "
            f"{', '.join(cfg.custom_update)} cannot apply; leave them at their defaults (1, 32, null)"
        )
    if dist_ctx.enabled:
        distributed.check_data_parallel(method)
    if method.needs_groups and item_groups is None:
        raise UserError(f"{type(method).__name__} needs item groups (set method.groups)")
    if method.needs_groups and source.sample_items is None:
        raise UserError(
            f"{type(method).__name__} needs the item group of every training sample, but "
            f"{type(model).__name__} trains on whole users (one sample = one user's row, no positive item); "
            "use it with a method that needs no groups (e.g. method=erm) or choose a pair-based model"
        )
    if method.needs_timestamps and source.sample_timestamps is None:
        raise UserError(
            f"{type(method).__name__} needs the timestamp of every training interaction, which this "
            "dataset (or a model trained on whole users or samples) does not provide"
        )
    groups_on_device = item_groups.to(device) if item_groups is not None else None

    model.to(device)
    method.setup(
        model,
        TrainContext(
            n_users=train.shape[0],
            n_items=train.shape[1],
            item_groups=groups_on_device,
            group_names=group_names,
            item_train_counts=torch.from_numpy(np.asarray(train.sum(axis=0)).ravel()).to(device),
            steps_per_epoch=steps_per_epoch,
            max_epochs=cfg.max_epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            train_items=source.sample_items.to(device) if source.sample_items is not None else None,
            train_timestamps=source.sample_timestamps,
            train_histories=getattr(source, "history", None),  # next-item samples only
        ),
    )
    optimizers = method.configure_optimizers(model)
    sizes = [min(batch_size, source.n_samples - s * batch_size) for s in range(steps_per_epoch)]
    updater = (
        None if method.combines_gradients else Updater(cfg, optimizers, device, sizes, dist_ctx.world_size)
    )

    best_state = trainable_copy(model)
    bad_evaluations, start_epoch = 0, 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, fingerprint)
        model.load_trainable_state_dict(state["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        method.load_state_dict(state["method"])
        best_state = state["best_model"]
        result.history = state["history"]
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        bad_evaluations, start_epoch = state["bad_evaluations"], state["epoch"] + 1
        result.epochs_resumed = start_epoch
        log.info("resumed from %s at epoch %d", resume_from, start_epoch)
        if bad_evaluations >= cfg.patience:
            start_epoch = cfg.max_epochs  # that run had already stopped early
            result.stopped_early = True
    distributed.broadcast_parameters(p for group in model.parameter_sets().values() for p in group)

    def checkpoint(epoch: int, improved: bool) -> None:
        save_checkpoint(
            checkpoint_dir,
            {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": trainable_copy(model),
                "best_model": best_state,
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "method": method.state_dict(),
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_score": result.best_score,
                "bad_evaluations": bad_evaluations,
            },
            improved=improved,
        )

    train_seconds = 0.0
    evaluations = 0
    epochs = tqdm(
        range(start_epoch, cfg.max_epochs),
        desc="epochs",
        disable=not (cfg.progress and dist_ctx.is_main),
        dynamic_ncols=True,
    )
    window = updater.window if updater is not None else 1
    for epoch in epochs:
        started = time.perf_counter()
        model.train()
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(source.n_samples, generator=generator)
        model.on_epoch_start(epoch, model_seed(seed, epoch))
        loss_sum = 0.0
        own = lambda s: distributed.owns_step(s, window, dist_ctx)  # noqa: E731 - all steps in one process
        for step, batch in enumerate(_batches(source, order, generator, device, own)):
            if updater is not None and updater.starts_window(step):
                updater.zero_grad()
            if batch is not None:  # this process's micro-batch
                index = batch.pop("_index")
                if groups_on_device is not None and "pos_items" in batch:
                    batch["groups"] = groups_on_device[batch["pos_items"]]
                if method.needs_timestamps and source.sample_timestamps is not None:
                    batch["timestamps"] = source.sample_timestamps[index].to(device)
                model.on_train_step(epoch * steps_per_epoch + step)
                if updater is not None:
                    stats = updater.backward(method, model, batch, step, len(index))
                else:
                    stats = method.training_step(model, batch, optimizers)
                    loss_sum += stats["loss"] * len(index)
                    result.step_losses.append(stats["loss"])
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch}, step {step}")
            if updater is not None and updater.ends_window(step):
                window_loss, window_samples = updater.finish_window(epoch, step)
                loss_sum += window_loss
                result.step_losses.append(window_loss / window_samples)
        method.on_epoch_end(epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        train_seconds += time.perf_counter() - started
        result.epochs_run += 1

        last_epoch = epoch == cfg.max_epochs - 1
        if (epoch + 1) % cfg.eval_every and not last_epoch:
            continue
        model.eval()
        # rank 0 evaluates; every process gets its metrics and so makes the same decisions below
        metrics = distributed.broadcast_object(evaluate(model) if dist_ctx.is_main else None)
        if cfg.monitor not in metrics:
            raise UserError(
                f"trainer.monitor '{cfg.monitor}' is not a validation metric; choose from: "
                + ", ".join(sorted(metrics))
            )
        score = metrics[cfg.monitor]
        improved = cfg.improved(score, result.best_score)
        if improved:
            result.best_score, result.best_epoch, bad_evaluations = score, epoch, 0
            best_state = trainable_copy(model)
        else:
            bad_evaluations += 1
        if bad_evaluations >= cfg.patience and method.start_next_phase(epoch):
            model.load_trainable_state_dict(best_state)  # the next phase starts from the best state so far
            bad_evaluations = 0
        row = {"epoch": epoch, "train/loss": loss_sum / source.n_samples} | {
            f"valid/{k}": v for k, v in metrics.items()
        }
        result.history.append(row)
        epochs.set_postfix({"train loss": f"{row['train/loss']:.4f}", f"valid {cfg.monitor}": f"{score:.4f}"})
        if not cfg.progress and dist_ctx.is_main:  # without progress bars, a line per evaluation
            log.info(
                "epoch %d: train loss %.4f, valid %s %.4f (best %.4f at epoch %d), %.1f s/epoch",
                epoch,
                row["train/loss"],
                cfg.monitor,
                score,
                result.best_score,
                result.best_epoch,
                train_seconds / result.epochs_run,
            )
        if on_evaluation is not None:
            on_evaluation(epoch, row)
        stopping = bad_evaluations >= cfg.patience
        evaluations += 1
        due = improved or evaluations % cfg.checkpoint_every == 0 or stopping or last_epoch
        if checkpoint_dir is not None and cfg.checkpoint and due and dist_ctx.is_main:
            checkpoint(epoch, improved)
        if stopping:
            result.stopped_early = True
            log.info("early stop at epoch %d (best epoch %d)", epoch, result.best_epoch)
            break
    epochs.close()
    model.load_trainable_state_dict(best_state)
    model.eval()
    result.seconds_per_epoch = train_seconds / max(result.epochs_run, 1)
    return result


def _batches(
    source,
    order: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
    own: Callable[[int], bool] = lambda step: True,
) -> Iterator[Batch | None]:
    """The epoch's batches in ``order``, on ``device``; ``_index`` holds the samples' indices (on CPU).

    Micro-batches another process computes (``own(step)`` false) are None, but still drawn, so that the
    epoch's random stream (negatives) reaches every micro-batch as in a single process.
    """
    for step in range(source.steps_per_epoch):
        index = order[step * source.batch_size : (step + 1) * source.batch_size]
        batch = source.batch(index, generator)
        if not own(step):
            yield None
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["_index"] = index
        yield batch


def trainable_copy(model: Recommender) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's trainable state (what checkpoints and the best state hold)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.trainable_state_dict().items()}


def save_checkpoint(directory: Path, state: dict, improved: bool) -> None:
    """Write ``last.ckpt`` (everything needed to resume) and, on improvement, ``best.safetensors``."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "last.ckpt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / "last.ckpt")
    if improved:
        tmp = directory / "best.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in state["best_model"].items()}, str(tmp))
        os.replace(tmp, directory / "best.safetensors")


def load_checkpoint(path: Path, fingerprint: str) -> dict:
    """Load a ``last.ckpt`` safely (weights_only) and check it belongs to the same configuration."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ckpt_path: no checkpoint at {path}; pass a run's checkpoints/last.ckpt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserError(f"ckpt_path: {path} is not a readable fairbench checkpoint ({err})") from err
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"ckpt_path: {path} has checkpoint format {state.get('format')}, expected {CHECKPOINT_FORMAT}"
        )
    if fingerprint and state.get("fingerprint") != fingerprint:
        raise UserError(
            f"ckpt_path: {path} was written by a run with a different dataset/backbone/model/method/seed "
            "config; resume with the same overrides as the interrupted run (trainer.max_epochs may differ)"
        )
    return state

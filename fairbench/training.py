"""The training loop: batches of (user, positive) pairs, method-owned updates, early stopping on validation.

A model with ``batch_unit = "user"`` (MultVAE) is trained on batches of users instead: every user with at
least one training item is one sample, batches carry ``users`` only and the per-sample loss is per user.

Determinism: the order of the training samples and the sampled negatives of epoch ``e`` come from a
generator seeded with (seed, e) alone, and a model's own randomness (SGL views, XSimGCL noise, MultVAE
dropout) from a second seed of (seed, e) passed to ``model.on_epoch_start``; so a run resumed from a
checkpoint reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod, TrainContext
from fairbench.models.base import Batch, Recommender

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class TrainerConfig:
    """Training-loop settings (documented in conf/trainer/default.yaml)."""

    max_epochs: int = 500
    patience: int = 20
    eval_every: int = 1
    monitor: str = "recall@20"
    batch_size: int = 4096
    lr: float = 5e-4
    weight_decay: float = 0.0
    eval_batch_size: int = 1024
    progress: bool = True
    checkpoint: bool = True

    def __post_init__(self) -> None:
        for name in ("max_epochs", "patience", "eval_every", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"trainer.lr must be > 0, got {self.lr}")


@dataclass
class FitResult:
    """Outcome of :func:`fit`; ``history`` has one row per evaluation."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    epochs_run: int = 0
    stopped_early: bool = False
    seconds_per_epoch: float = 0.0


class NegativeSampler:
    """Uniform negatives excluding each user's training items, by vectorised rejection sampling.

    A candidate (u, i) is rejected when it is a training pair; rejected slots are redrawn until none is left
    (AlphaRec samples negatives uniformly outside the user's items). Membership is looked up in a dense
    [U, I] bitmap when that fits in ``dense_limit`` cells, else by binary search over the sorted keys u*I + i.
    """

    def __init__(self, train: sp.csr_matrix, max_rounds: int = 100, dense_limit: int = 1 << 26) -> None:
        coo = train.tocoo()
        n_users, self.n_items = train.shape
        self.max_rounds = max_rounds
        self.dense: torch.Tensor | None = None
        if n_users * self.n_items <= dense_limit:
            self.dense = torch.zeros(n_users, self.n_items, dtype=torch.bool)
            self.dense[
                torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))
            ] = True
        keys = coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64)
        self.keys = torch.from_numpy(np.sort(keys))

    def is_training_pair(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[users, items]
        keys = users * self.n_items + items
        position = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[position] == keys

    def sample(self, users: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """Negatives [B, n] for users [B]."""
        negatives = torch.randint(0, self.n_items, (len(users), n), generator=generator)
        flat = negatives.view(-1)
        owners = users.repeat_interleave(n)
        pending = torch.arange(flat.numel())
        for _ in range(self.max_rounds):
            pending = pending[self.is_training_pair(owners[pending], flat[pending])]
            if pending.numel() == 0:
                break
            flat[pending] = torch.randint(0, self.n_items, (pending.numel(),), generator=generator)
        return negatives


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch, a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def model_seed(seed: int, epoch: int) -> int:
    """Seed of a model's own random stream in one epoch, a function of (seed, epoch) only.

    Independent of :func:`epoch_generator`, so models that use it do not change the pair order or negatives.
    """
    return int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0])


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
    train_timestamps: np.ndarray | None = None,
) -> FitResult:
    """Train ``model`` with ``method`` and restore the parameters with the best validation ``cfg.monitor``.

    ``evaluate(model)`` returns validation metrics (keys such as ``recall@20``); it must not look at test.
    ``fingerprint`` identifies the run's config; resuming from a checkpoint of another config is refused.
    ``train_timestamps`` (aligned with ``train.indices``) reach methods that need them (``needs_timestamps``).
    """
    device = torch.device(device)
    sample_items: torch.Tensor | None
    if model.batch_unit == "user":
        sample_users = torch.from_numpy(np.flatnonzero(train.getnnz(axis=1) > 0).astype(np.int64))
        sample_items = None
        batch_size = model.users_per_batch or cfg.batch_size
    else:
        coo = train.tocoo()
        sample_users = torch.from_numpy(coo.row.astype(np.int64))
        sample_items = torch.from_numpy(coo.col.astype(np.int64))
        batch_size = cfg.batch_size
    n_samples = len(sample_users)
    steps_per_epoch = math.ceil(n_samples / batch_size)
    sampler = NegativeSampler(train) if model.num_negatives > 0 and sample_items is not None else None
    groups_on_device = item_groups.to(device) if item_groups is not None else None
    if method.needs_groups and item_groups is None:
        raise UserError(f"{type(method).__name__} needs item groups (set method.groups)")
    if method.needs_groups and sample_items is None:
        raise UserError(
            f"{type(method).__name__} needs the item group of every training sample, but "
            f"{type(model).__name__} trains on whole users (one sample = one user's row, no positive item); "
            "use it with a method that needs no groups (e.g. method=erm) or choose a pair-based model"
        )
    pair_timestamps = None
    if train_timestamps is not None and sample_items is not None:
        pair_timestamps = torch.from_numpy(np.asarray(train_timestamps, dtype=np.float64))
    if method.needs_timestamps and pair_timestamps is None:
        raise UserError(
            f"{type(method).__name__} needs the timestamp of every training interaction, which this "
            "dataset (or a model trained on whole users) does not provide"
        )

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
            train_items=sample_items.to(device) if sample_items is not None else None,
            train_timestamps=pair_timestamps,
        ),
    )
    optimizers = method.configure_optimizers(model)

    result = FitResult()
    best_state = _copy_state(model)
    bad_evaluations, start_epoch = 0, 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, fingerprint)
        model.load_state_dict(state["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        method.load_state_dict(state["method"])
        best_state = state["best_model"]
        result.history = state["history"]
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        bad_evaluations, start_epoch = state["bad_evaluations"], state["epoch"] + 1
        log.info("resumed from %s at epoch %d", resume_from, start_epoch)
        if bad_evaluations >= cfg.patience:
            start_epoch = cfg.max_epochs  # that run had already stopped early

    train_seconds = 0.0
    epochs = tqdm(
        range(start_epoch, cfg.max_epochs), desc="epochs", disable=not cfg.progress, dynamic_ncols=True
    )
    for epoch in epochs:
        started = time.perf_counter()
        model.train()
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(n_samples, generator=generator)
        model.on_epoch_start(epoch, model_seed(seed, epoch))
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            users = sample_users[index]
            batch: Batch = {"users": users}
            if sample_items is not None:
                batch["pos_items"] = sample_items[index]
            if sampler is not None:
                batch["neg_items"] = sampler.sample(users, model.num_negatives, generator)
            batch = {k: v.to(device) for k, v in batch.items()}
            if groups_on_device is not None and sample_items is not None:
                batch["groups"] = groups_on_device[batch["pos_items"]]
            if method.needs_timestamps and pair_timestamps is not None:
                batch["timestamps"] = pair_timestamps[index].to(device)
            model.on_train_step(epoch * steps_per_epoch + step)
            stats = method.training_step(model, batch, optimizers)
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}, step {step}")
            loss_sum += stats["loss"] * len(index)
        method.on_epoch_end(epoch)
        train_seconds += time.perf_counter() - started
        result.epochs_run += 1

        last_epoch = epoch == cfg.max_epochs - 1
        if (epoch + 1) % cfg.eval_every and not last_epoch:
            continue
        model.eval()
        metrics = evaluate(model)
        if cfg.monitor not in metrics:
            raise UserError(
                f"trainer.monitor '{cfg.monitor}' is not a validation metric; choose from: "
                + ", ".join(sorted(metrics))
            )
        score = metrics[cfg.monitor]
        if score > result.best_score:
            result.best_score, result.best_epoch, bad_evaluations = score, epoch, 0
            best_state = _copy_state(model)
        else:
            bad_evaluations += 1
        if bad_evaluations >= cfg.patience and method.start_next_phase(epoch):
            model.load_state_dict(best_state)  # the next phase starts from the best parameters so far
            bad_evaluations = 0
        row = {"epoch": epoch, "train/loss": loss_sum / n_samples} | {
            f"valid/{k}": v for k, v in metrics.items()
        }
        result.history.append(row)
        epochs.set_postfix(loss=f"{row['train/loss']:.4f}", **{cfg.monitor: f"{score:.4f}"})
        if not cfg.progress:  # without progress bars, one log line per evaluation shows the run is alive
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
        if checkpoint_dir is not None and cfg.checkpoint:
            save_checkpoint(
                checkpoint_dir,
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": _copy_state(model),
                    "best_model": best_state,
                    "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                    "method": method.state_dict(),
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                    "bad_evaluations": bad_evaluations,
                },
                improved=result.best_epoch == epoch,
            )
        if bad_evaluations >= cfg.patience:
            result.stopped_early = True
            log.info("early stop at epoch %d (best epoch %d)", epoch, result.best_epoch)
            break
    epochs.close()
    model.load_state_dict(best_state)
    model.eval()
    result.seconds_per_epoch = train_seconds / max(result.epochs_run, 1)
    return result


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(model.state_dict()).items()}


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

"""A data-parallel BIGRec run on CPU (gloo) in spawned processes, for tests/test_distributed.py.

:func:`spawn_training` starts ``world_size`` processes with the variables torchrun sets; each initialises
the process group through :mod:`fairbench.distributed`, runs the ``prepare`` and ``train`` stages on the
same overrides, and saves its step losses, history and final adapter to ``out/rank<r>.pt``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_rank(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives process ``rank`` of ``world_size`` (one torch thread each)."""
    os.environ.update(
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def train_one_rank(rank: int, world_size: int, port: int, overrides: list[str], out: str) -> None:
    """Body of one process (``torch.multiprocessing.spawn`` passes ``rank`` first)."""
    as_rank(rank, world_size, port)
    from fairbench import distributed
    from fairbench.config import compose_config
    from fairbench.pipeline import prepare, train

    distributed.init_process_group("cpu")
    try:
        exp = prepare(compose_config(overrides))
        fitted = train(exp, Path(out) / "run")
        state = {k: v.detach().cpu().clone() for k, v in exp.model.trainable_state_dict().items()}
        torch.save(
            {"step_losses": fitted.step_losses, "history": fitted.history, "state": state},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        distributed.shutdown()


def spawn_training(world_size: int, overrides: list[str], out: Path) -> list[dict]:
    """Run :func:`train_one_rank` in ``world_size`` fresh processes; returns what each rank saved."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(train_one_rank, args=(world_size, free_port(), overrides, str(out)), nprocs=world_size)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def alpharec_fit(accumulate: int) -> dict:
    """ERM training of a small AlphaRec (uniform negatives) on random interactions, in this process."""
    import numpy as np

    from fairbench.methods.erm import ERM
    from fairbench.models.alpharec import AlphaRec
    from fairbench.training import TrainerConfig, fit
    from tests.helpers.toy import random_train

    train = random_train(20, 25, seed=4)
    torch.manual_seed(0)
    vectors = np.random.default_rng(0).normal(size=(25, 6)).astype(np.float32)
    model = AlphaRec(train, vectors, hidden_dim=8, embed_dim=4, num_negatives=4)
    cfg = TrainerConfig(max_epochs=2, batch_size=8, accumulate_grad_batches=accumulate, lr=1e-2)
    cfg.progress = False
    fitted = fit(model, ERM(), train, cfg, lambda m: {"recall@20": 0.0}, seed=0)
    state = {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}
    return {"step_losses": fitted.step_losses, "state": state}


def alpharec_one_rank(rank: int, world_size: int, port: int, out: str) -> None:
    """:func:`alpharec_fit` in one of ``world_size`` processes (2 micro-batches each per step)."""
    as_rank(rank, world_size, port)
    from fairbench import distributed

    distributed.init_process_group("cpu")
    try:
        torch.save(alpharec_fit(accumulate=2), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def spawn_alpharec(world_size: int, out: Path) -> list[dict]:
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(alpharec_one_rank, args=(world_size, free_port(), str(out)), nprocs=world_size)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world_size)]

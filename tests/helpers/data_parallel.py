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


def train_one_rank(rank: int, world_size: int, port: int, overrides: list[str], out: str) -> None:
    """Body of one process (``torch.multiprocessing.spawn`` passes ``rank`` first)."""
    os.environ.update(
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
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

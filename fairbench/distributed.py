"""Data-parallel training across processes started by ``torchrun`` or ``accelerate launch``.

A launcher starts one process per device with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment. :func:`launch` (called by ``fairbench train`` before Hydra starts)
initialises ``torch.distributed`` from them (nccl for CUDA, gloo for CPU; each process on
``cuda:LOCAL_RANK``) and gives every process rank 0's run directory. Everything else reads
:func:`context`, which is the single process (rank 0 of 1) unless a process group is initialised.

What one optimiser step is: the single-process run's step with ``accumulate_grad_batches`` multiplied by the
world size. Its window of ``A x W`` micro-batches (``trainer.batch_size`` samples each, in the epoch's order)
is dealt out in turn (:func:`owns_step`: micro-batch ``k`` of the window goes to rank ``k mod W``), every
micro-batch loss is scaled by its share of the whole window's samples, and the gradients are summed over
the processes (:func:`all_reduce_gradients`), so each step is exactly the one of the single process over
the same samples, and every process takes it. Global batch = batch_size x accumulate_grad_batches x W.

Rank 0 alone evaluates (and sends the validation metrics to the others, so every process makes the same
early-stopping decision), writes the run directory, checkpoints, logs and prints; after training the other
processes end and rank 0 ranks, evaluates and reports the test split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fairbench.errors import UserError

#: how long a process waits for the others at a collective call; rank 0 evaluates the validation split
#: while the others wait, so this bounds one validation pass
TIMEOUT = timedelta(hours=3)
#: gradients are summed in flat buffers of at most this many elements
BUCKET_ELEMENTS = 1 << 25
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``world_size`` processes, this one is ``rank`` (``local_rank`` on its
    machine)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> DistContext:
    """The launcher's view from the environment (single process when ``WORLD_SIZE`` is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    missing = [name for name in LAUNCH_VARIABLES if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start multi-process training with "
            "torchrun or accelerate launch (see the README, Multi-GPU)"
        )
    return DistContext(world, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]))


def context() -> DistContext:
    """This process's place in the initialised process group, or the single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    rank = dist.get_rank()
    return DistContext(dist.get_world_size(), rank, int(os.environ.get("LOCAL_RANK", rank)))


def planned_world_size() -> int:
    """World size of the initialised group, else the one the launcher announced (checks before work)."""
    ctx = context()
    return ctx.world_size if ctx.enabled else launch_env().world_size


def init_process_group(device: str) -> DistContext:
    """Initialise ``torch.distributed`` from the launcher's environment: nccl and ``cuda:LOCAL_RANK`` for a
    CUDA ``device``, gloo for ``cpu``. A no-op in a single process or when already initialised."""
    import torch
    import torch.distributed as dist

    env = launch_env()
    if not env.enabled or dist.is_initialized():
        return context()
    if device.startswith("cuda"):
        if device != "cuda":
            raise UserError(
                f"device={device}: a multi-process launch puts each process on cuda:LOCAL_RANK; use "
                "device=cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        if env.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process with LOCAL_RANK={env.local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "launch at most one process per GPU"
            )
        torch.cuda.set_device(env.local_rank)
        backend = "nccl"
    elif device == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"device={device}: multi-process training runs on cuda or cpu")
    dist.init_process_group(backend, timeout=TIMEOUT)
    return context()


def shutdown() -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process run."""
    ctx = context()
    return f"cuda:{ctx.local_rank}" if ctx.enabled and device == "cuda" else device


def launch(args: list[str], overrides: Sequence[str]) -> list[str]:
    """Join the process group for ``fairbench train`` under a launcher; returns ``args`` for Hydra.

    All processes get rank 0's run directory (Hydra's default name holds the time of composition, which
    differs between processes); the others write neither Hydra's ``.hydra/`` nor ``train.log``. A sweep
    (``-m``) is refused: one launch trains one job.
    """
    from fairbench.config import compose_config
    from fairbench.runtime import resolve_device

    if not launch_env().enabled:
        return args
    if "-m" in args or "--multirun" in args:
        raise UserError(
            "a multi-process launch (torchrun / accelerate launch) trains one job; run one launch per job "
            "instead of a sweep (-m)"
        )
    cfg = compose_config(list(overrides), return_hydra_config=True)
    ctx = init_process_group(resolve_device(str(cfg.device)))
    run_dir = broadcast_object(str(cfg.hydra.run.dir) if ctx.is_main else None)
    extra = ["hydra.run.dir=" + _quoted(run_dir)]
    if not ctx.is_main:  # the run directory's files are rank 0's
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
        _quiet()
    replaced = tuple(e.split("=", 1)[0] + "=" for e in extra)
    return [a for a in args if not a.startswith(replaced)] + extra


def _quiet() -> None:
    """Silence a non-main process: its warnings and progress bars repeat rank 0's (errors still show)."""
    import warnings

    warnings.simplefilter("ignore")
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _quoted(value: str) -> str:
    """A Hydra override value in single quotes (any path survives the override grammar)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_data_parallel(method: Any) -> None:
    """Refuse methods whose update cannot be split across processes: gradient-combining ones (they own
    their step) and stateful loss weights (GroupDRO's q would follow each process's own micro-batches)."""
    from fairbench.methods.base import FairnessMethod

    name = type(method).__name__
    if method.combines_gradients:
        raise UserError(
            f"method {name} combines per-group gradients in its own update step, which fairbench does not "
            "split across processes; train it in one process (without torchrun / accelerate launch)"
        )
    if type(method).state_dict is not FairnessMethod.state_dict:
        raise UserError(
            f"method {name} updates its own state from every batch, so processes that see different "
            "micro-batches would drift apart; multi-process training supports methods with stateless loss "
            "weights (erm, reweight); train this one in one process"
        )


# -------------------------------------------------------------------------------- splitting the work


def owns_step(step: int, window: int, ctx: DistContext) -> bool:
    """Whether micro-batch ``step`` (0-based, in the epoch's order) is computed by this process: in each
    window of ``window`` micro-batches (``accumulate_grad_batches x world_size``), micro-batch ``k`` goes
    to rank ``k mod world_size``, so every rank gets ``accumulate_grad_batches`` of a full window and a
    short last window is shared as evenly as it can be."""
    return (step % window) % ctx.world_size == ctx.rank


def rank_steps(n_steps: int, accumulate: int, ctx: DistContext) -> list[list[int]]:
    """The micro-batches this process computes, per optimiser step (a list per window; possibly empty in a
    short last window)."""
    window = accumulate * ctx.world_size
    return [
        [s for s in range(start, min(start + window, n_steps)) if owns_step(s, window, ctx)]
        for start in range(0, n_steps, window)
    ]


# --------------------------------------------------------------------------------------- collectives


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` of rank ``src`` on every process (picklable plain data; unchanged in one process)."""
    import torch.distributed as dist

    if not context().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_parameters(params: Iterable[Any]) -> None:
    """Copy rank 0's values of ``params`` to every process (the start state of data-parallel training)."""
    import torch.distributed as dist

    if not context().enabled:
        return
    for param in params:
        dist.broadcast(param.data, src=0)


def all_reduce_gradients(params: Sequence[Any]) -> None:
    """Sum the gradients of ``params`` over all processes, in place (a missing gradient counts as zeros and
    is created, so a process without a micro-batch in a short window still takes part)."""
    import torch
    import torch.distributed as dist

    if not context().enabled:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    for bucket in _buckets(params):
        grads = [p.grad for p in bucket]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def _buckets(params: Sequence[Any]) -> Iterator[list[Any]]:
    """Consecutive runs of parameters of one dtype and device, each of at most :data:`BUCKET_ELEMENTS`."""
    bucket: list[Any] = []
    size = 0
    for param in params:
        if bucket and (
            size + param.numel() > BUCKET_ELEMENTS
            or (param.dtype, param.device) != (bucket[0].dtype, bucket[0].device)
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(param)
        size += param.numel()
    if bucket:
        yield bucket


def all_reduce_sum(values: Sequence[float], device: Any = "cpu") -> list[float]:
    """Sums of ``values`` over all processes (float64; ``device`` must suit the backend: CUDA for nccl)."""
    import torch
    import torch.distributed as dist

    if not context().enabled:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches: processed data, item vectors, downloads), then the
    others, which then read what it wrote instead of writing the same files at the same time."""
    import torch.distributed as dist

    ctx = context()
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if ctx.enabled and ctx.is_main:
            dist.barrier()

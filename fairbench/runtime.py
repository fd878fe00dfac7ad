"""Process-level helpers every stage shares: the one device resolver, seeding, and the one builder.

Kept free of heavy imports at module level (torch and Hydra are imported where used), so that the data
layer and the config commands can use them without importing torch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, TypeVar

from fairbench.errors import UserError

T = TypeVar("T")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` are checked.

    A CUDA device without CUDA, or a string that is not a torch device, is a :class:`UserError`. ``cpu``
    returns without importing torch, so a cached CPU run stays light.
    """
    name = str(name)
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available here; use device=cpu or device=auto")
    return name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (warning where it has none)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build(node: Any, expected: type[T] | None = None, where: str | None = None, **runtime: Any) -> Any:
    """Build an object from its ``_target_`` config node (``hydra.utils.instantiate``), keeping user errors.

    - ``node`` may already be an ``expected`` instance (returned as is), a DictConfig or a plain mapping.
    - A :class:`UserError` raised by a constructor (e.g. ``trainer.lr must be > 0``) reaches the caller as
      is, not wrapped in Hydra's ``InstantiationException``, so it still ends as one message and exit 2.
    - With ``where`` (the node's config path), any other build failure and a result that is not an
      ``expected`` become a :class:`UserError` naming that path.
    ``runtime`` keyword arguments go to the constructor unchanged (data that only exists at run time, such
    as an :class:`~fairbench.data.types.InteractionData`); Hydra options such as ``_convert_`` are passed
    to ``instantiate``.
    """
    if expected is not None and isinstance(node, expected):
        return node
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    if where is not None and not (isinstance(node, (DictConfig, Mapping)) and "_target_" in node):
        raise UserError(f"{where}: expected a config node with _target_, got {node!r}")
    options = {k: v for k, v in runtime.items() if k.startswith("_") and k.endswith("_")}
    runtime = {k: v for k, v in runtime.items() if k not in options}
    try:
        if runtime:  # run-time objects go to the constructor as they are, never through OmegaConf
            built = instantiate(node, _partial_=True, **options)(**runtime)
        else:
            built = instantiate(node, **options)
    except InstantiationException as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        if where is None:
            raise
        raise UserError(f"{where} could not be built: {err}") from err
    if expected is not None and not isinstance(built, expected):
        raise UserError(
            f"{where or 'config'}._target_ builds a {type(built).__name__}, expected a {expected.__name__}"
        )
    return built

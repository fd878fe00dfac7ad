"""AlphaRec building blocks against hand computation and autograd."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fairbench.models.alpharec import AlphaRec, alpharec_hidden_multiplier
from fairbench.models.base import info_nce, normalized_adjacency, propagate
from fairbench.models.linear import Linear


def small_train() -> sp.csr_matrix:
    rows = [0, 0, 1, 2, 2, 2]
    cols = [0, 1, 1, 0, 2, 3]
    return sp.csr_matrix((np.ones(6, dtype=np.float32), (rows, cols)), shape=(3, 4))


def test_normalized_adjacency_matches_dense_formula():
    train = small_train()
    r = train.toarray()
    a = np.block([[np.zeros((3, 3)), r], [r.T, np.zeros((4, 4))]])
    d = a.sum(1)
    expected = a / np.sqrt(np.outer(d, d))
    got = normalized_adjacency(train).to_dense().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_propagate_is_mean_over_layers():
    train = small_train()
    adj = normalized_adjacency(train)
    e = torch.randn(7, 5)
    dense = adj.to_dense()
    expected = (e + dense @ e + dense @ dense @ e) / 3
    torch.testing.assert_close(propagate(adj, e, 2), expected)


def test_info_nce_equals_cross_entropy_on_cosine_logits():
    torch.manual_seed(0)
    u, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 5, 8)
    tau = 0.2
    un, pn, nn_ = (torch.nn.functional.normalize(x, dim=-1) for x in (u, p, n))
    logits = torch.cat([(un * pn).sum(-1, keepdim=True), torch.einsum("bd,bnd->bn", un, nn_)], 1) / tau
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long), reduction="none")
    torch.testing.assert_close(info_nce(u, p, n, tau), expected)
    # the AlphaRec form -log(exp(pos)/(exp(pos)+sum exp(neg)))
    pos = logits[:, 0].exp()
    alpharec = -torch.log(pos / (pos + logits[:, 1:].exp().sum(1)))
    torch.testing.assert_close(info_nce(u, p, n, tau), alpharec)


def test_user_vectors_are_means_of_training_items():
    train = small_train()
    z = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    got, items = Linear(train, z.numpy(), embed_dim=2).text_vectors()
    torch.testing.assert_close(got[0], (z[0] + z[1]) / 2)
    torch.testing.assert_close(got[2], (z[0] + z[2] + z[3]) / 3)
    torch.testing.assert_close(items, z)


@pytest.mark.parametrize("model_class", [AlphaRec, Linear])
@pytest.mark.parametrize("trainable", [False, True])
def test_encoding_equals_the_projector_applied_to_user_and_item_vectors(model_class, trainable):
    """encode() computes the users' first layer as M (Z W1^T) + b1; it must equal projector([z_u; z_i])."""
    torch.manual_seed(0)
    train = small_train()
    vectors = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    kwargs = {"hidden_dim": 8} if model_class is AlphaRec else {}
    model = model_class(train, vectors, embed_dim=4, trainable_text_vectors=trainable, **kwargs)
    expected = model.projector(torch.cat(model.text_vectors()))
    torch.testing.assert_close(model.encode(), expected, rtol=1e-5, atol=1e-6)
    batch = {
        "users": torch.tensor([0, 2]),
        "pos_items": torch.tensor([1, 3]),
        "neg_items": torch.tensor([[2], [1]]),
    }
    torch.testing.assert_close(model.sample_losses(batch), model.losses_from_encoding(model.encode(), batch))


def test_hidden_multiplier_follows_alpharec_table():
    assert alpharec_hidden_multiplier(768) == 8
    assert alpharec_hidden_multiplier(1536) == 2
    assert alpharec_hidden_multiplier(3072) == 0.5
    assert alpharec_hidden_multiplier(4096) == 9 / 32


def test_alpharec_scores_are_cosines_of_propagated_embeddings_and_loss_backprops():
    torch.manual_seed(0)
    train = small_train()
    model = AlphaRec(
        train,
        np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32),
        hidden_dim=8,
        embed_dim=4,
        num_negatives=2,
    )
    users, items = model.embeddings()
    scores = model.scorer()(torch.tensor([0, 2]))
    expected = torch.nn.functional.cosine_similarity(users[[0, 2], None, :], items[None, :, :], dim=-1)
    torch.testing.assert_close(scores, expected.detach())
    batch = {
        "users": torch.tensor([0, 1]),
        "pos_items": torch.tensor([1, 1]),
        "neg_items": torch.tensor([[2, 3], [0, 2]]),
    }
    losses = model.sample_losses(batch)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    losses.mean().backward()
    assert all(p.grad is not None for p in model.parameter_sets()["projector"])
    assert set(model.state_dict()) == {f"projector.{k}" for k in model.projector.state_dict()}

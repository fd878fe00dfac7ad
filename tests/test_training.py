"""Negative sampling and the training loop's determinism and resume."""

import logging

import numpy as np
import torch

from fairbench.methods.erm import ERM
from fairbench.models.alpharec import AlphaRec
from fairbench.training import NegativeSampler, TrainerConfig, epoch_generator, fit
from tests.helpers.toy import random_train


def test_negatives_never_hit_training_items_and_are_deterministic():
    train = random_train()
    sampler = NegativeSampler(train)
    users = torch.arange(30).repeat_interleave(3)
    negatives = sampler.sample(users, 50, epoch_generator(1, 0))
    dense = train.toarray()
    assert not dense[users.numpy()[:, None], negatives.numpy()].any()
    again = sampler.sample(users, 50, epoch_generator(1, 0))
    assert torch.equal(negatives, again)
    # every non-training item is reachable: the sampler is uniform over the complement
    counts = np.bincount(
        sampler.sample(torch.zeros(20000, dtype=torch.long), 1, epoch_generator(2, 0)).ravel(), minlength=40
    )
    allowed = dense[0] == 0
    assert (counts[~allowed] == 0).all() and (counts[allowed] > 0).all()


def toy_fit(tmp_path, max_epochs, resume_from=None):
    train = random_train()
    valid = random_train(seed=1)
    torch.manual_seed(0)
    model = AlphaRec(
        train,
        np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32),
        hidden_dim=16,
        embed_dim=8,
        num_negatives=8,
    )
    cfg = TrainerConfig(max_epochs=max_epochs, patience=50, batch_size=64, lr=1e-2, progress=False)

    def evaluate(m):
        scores = m.scorer()(torch.arange(30))
        top = scores.topk(5).indices.numpy()
        return {"recall@20": float(valid.toarray()[np.arange(30)[:, None], top].mean())}

    result = fit(
        model,
        ERM(),
        train,
        cfg,
        evaluate,
        seed=3,
        checkpoint_dir=tmp_path,
        resume_from=resume_from,
        fingerprint="toy",
    )
    return model, result


def test_fit_is_deterministic_and_resume_reaches_the_same_result(tmp_path):
    model_a, result_a = toy_fit(tmp_path / "a", 6)
    model_b, result_b = toy_fit(tmp_path / "b", 6)
    assert result_a.history == result_b.history
    # interrupted after 3 epochs, resumed to 6
    toy_fit(tmp_path / "c", 3)
    model_c, result_c = toy_fit(tmp_path / "c2", 6, resume_from=tmp_path / "c" / "last.ckpt")
    assert [r["train/loss"] for r in result_c.history] == [r["train/loss"] for r in result_a.history]
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_c.state_dict()[key], value, rtol=0, atol=0)
    assert (tmp_path / "a" / "best.safetensors").is_file()


def test_dense_bitmap_and_binary_search_membership_agree():
    train = random_train(n_users=50, n_items=70)
    dense = NegativeSampler(train)
    searched = NegativeSampler(train, dense_limit=0)
    assert dense.dense is not None and searched.dense is None
    users = torch.randint(0, 50, (5000,))
    items = torch.randint(0, 70, (5000,))
    expected = torch.from_numpy(train.toarray()[users.numpy(), items.numpy()] > 0)
    assert torch.equal(dense.is_training_pair(users, items), expected)
    assert torch.equal(searched.is_training_pair(users, items), expected)
    assert torch.equal(
        dense.sample(users, 7, epoch_generator(0, 1)), searched.sample(users, 7, epoch_generator(0, 1))
    )


def test_each_evaluation_is_logged_when_progress_bars_are_off(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fairbench.training"):
        _, result = toy_fit(tmp_path, 3)
    lines = [r.getMessage() for r in caplog.records if "valid recall@20" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1", "epoch 2"]
    last = result.history[-1]
    assert f"train loss {last['train/loss']:.4f}" in lines[-1]
    assert f"valid recall@20 {last['valid/recall@20']:.4f}" in lines[-1]

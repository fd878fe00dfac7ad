"""Sequential baselines (SASRec, MostPop) on next-item samples: shapes, causality and padding,
losses against hand computation, learning a synthetic next-item rule, popularity ranking, configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fairbench.config import compose_config
from fairbench.data.types import InteractionData, SequentialSamples
from fairbench.errors import UserError
from fairbench.metrics import full_ranking_topk
from fairbench.models.mostpop import MostPop
from fairbench.models.sasrec import SASRec
from fairbench.runtime import build

N_USERS, N_ITEMS, LENGTH = 6, 15, 5


def random_samples(n: int, n_users: int, n_items: int, length: int, rng: np.random.Generator):
    """n samples with 0..length history items each (left-padded with -1) and random targets."""
    real = rng.integers(0, length + 1, n)
    history = rng.integers(0, n_items, (n, length)).astype(np.int32)
    history[np.arange(length)[None, :] < (length - real)[:, None]] = -1
    return SequentialSamples(
        user=rng.integers(0, n_users, n).astype(np.int64),
        history=history,
        target=rng.integers(0, n_items, n).astype(np.int64),
        timestamp=np.zeros(n),
    )


def pairs_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
    matrix.data[:] = 1  # duplicates summed: binary again
    matrix.sort_indices()
    return matrix


def sequential_data(
    n_users: int = N_USERS,
    n_items: int = N_ITEMS,
    length: int = LENGTH,
    n: int = 40,
    with_samples: bool = True,
) -> InteractionData:
    """A small dataset as the sequential protocol builds it: train = the train samples' targets and history
    items, valid / test = their samples' (user, target) pairs."""
    rng = np.random.default_rng(0)
    samples = {
        split: random_samples(n, n_users, n_items, length, rng) for split in ("train", "valid", "test")
    }
    train = samples["train"]
    in_history = train.history >= 0
    users = np.concatenate([train.user, np.repeat(train.user, in_history.sum(1))])
    items = np.concatenate([train.target, train.history[in_history]])
    shape = (n_users, n_items)
    matrices = {"train": pairs_matrix(users, items, shape)}
    for split in ("valid", "test"):
        matrices[split] = pairs_matrix(samples[split].user, samples[split].target, shape)
    items_df = pd.DataFrame(
        {"item_id": [str(i) for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]}
    )
    return InteractionData(
        name="synthetic",
        user_ids=np.array([str(u) for u in range(n_users)]),
        items=items_df,
        samples=samples if with_samples else None,
        **matrices,
    )


def sample_batch(samples: SequentialSamples) -> dict[str, torch.Tensor]:
    return {
        "users": torch.from_numpy(samples.user),
        "history": torch.from_numpy(samples.history.astype(np.int64)),
        "pos_items": torch.from_numpy(samples.target),
    }


def build_sasrec(data: InteractionData | None = None, **kwargs) -> SASRec:
    torch.manual_seed(0)
    return SASRec(data or sequential_data(), hidden_dim=kwargs.pop("hidden_dim", 16), **kwargs)


# ------------------------------------------------------------------------------------------------ SASRec


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_gives_finite_scores_and_per_sample_losses_even_for_empty_histories(loss):
    data = sequential_data()
    model = build_sasrec(data, loss=loss)
    assert (model.batch_unit, model.needs_training, model.max_len) == ("sample", True, LENGTH)
    batch = sample_batch(data.samples["train"])
    batch["history"][0] = -1  # a history of padding only
    assert (batch["history"] < 0).all(1).any() and (batch["history"] >= 0).all(1).any()
    scores = model.score_histories(batch["history"])
    assert scores.shape == (40, N_ITEMS) and torch.isfinite(scores).all() and not scores.requires_grad
    losses = model.sample_losses(batch)
    assert losses.shape == (40,) and torch.isfinite(losses).all() and (losses > 0).all()
    losses.mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.item_embedding.weight.grad[0].abs().sum() == 0  # the padding row never learns
    sets = model.parameter_sets()
    assert set(sets) == {"item_embeddings", "encoder"}
    assert sorted(id(p) for ps in sets.values() for p in ps) == sorted(id(p) for p in model.parameters())


def test_sasrec_is_causal_and_padding_does_not_reach_item_positions():
    model = build_sasrec(n_blocks=2, n_heads=2).eval()
    history = torch.tensor([[3, 7, 1, 9, 4], [2, 2, 5, 0, 14]])
    base = model.hidden_states(history, drop=False)
    for position in range(LENGTH):
        changed = history.clone()
        changed[:, position] = (changed[:, position] + 1) % N_ITEMS
        out = model.hidden_states(changed, drop=False)
        torch.testing.assert_close(out[:, :position], base[:, :position], rtol=0, atol=0)
        assert (out[:, position:] - base[:, position:]).abs().amax(-1).min() > 0  # later positions all move
    # the same items with more, less or no padding, or cut to the last max_len items: the same scores
    padded = torch.tensor([[-1, -1, 3, 4, 5]])
    expected = model.score_histories(padded)
    for same in ([[3, 4, 5]], [[-1, -1, -1, -1, -1, -1, 3, 4, 5]], [[8, 8, 8, 8, -1, -1, 3, 4, 5]]):
        torch.testing.assert_close(model.score_histories(torch.tensor(same)), expected)
    # max_len beyond the history: positions are counted from the newest item
    longer = build_sasrec(max_len=8).eval()
    torch.testing.assert_close(
        longer.score_histories(torch.tensor([[3, 4, 5]])), longer.score_histories(padded)
    )
    assert longer.score_histories(torch.full((2, 12), -1)).isfinite().all()


def test_sasrec_ce_is_the_cross_entropy_of_the_scores_and_dropout_follows_the_epoch_seed():
    data = sequential_data()
    model = build_sasrec(data, dropout=0.3)
    batch = sample_batch(data.samples["train"])
    model.eval()
    scores = model.score_histories(batch["history"])
    targets = batch["pos_items"]
    by_hand = torch.logsumexp(scores, dim=1) - scores[torch.arange(len(targets)), targets]
    torch.testing.assert_close(model.sample_losses(batch).detach(), by_hand)
    torch.testing.assert_close(torch.nn.functional.cross_entropy(scores, targets, reduction="none"), by_hand)
    model.train()  # dropout: drawn from the generator the trainer seeds for each epoch
    model.on_epoch_start(0, 11)
    first = model.sample_losses(batch)
    model.on_epoch_start(0, 11)
    torch.testing.assert_close(model.sample_losses(batch), first)
    model.on_epoch_start(1, 12)
    assert not torch.allclose(model.sample_losses(batch), first)
    assert not torch.allclose(first.detach(), by_hand)


def test_sasrec_bce_is_the_original_all_position_loss_with_negatives_outside_the_sample():
    data = sequential_data(n_items=40)
    model = build_sasrec(data, loss="bce").eval()
    batch = sample_batch(data.samples["train"])
    history, target = batch["history"], batch["pos_items"]
    model.on_epoch_start(0, 5)
    losses = model.sample_losses(batch)
    model.on_epoch_start(0, 5)
    sequence = torch.cat([history, target[:, None]], dim=1)
    negatives = model.sample_negatives(sequence, history.shape)
    assert not (negatives[:, :, None] == sequence[:, None, :]).any()
    hidden = model.hidden_states(history, drop=False)
    table = model.item_embedding.weight[1:]
    expected = []
    for n in range(len(target)):  # loop by hand: every item position predicts the next item
        items = history[n].tolist() + [int(target[n])]
        terms = []
        for t in range(LENGTH):
            if items[t] < 0 and t < LENGTH - 1:
                continue
            pos = torch.sigmoid(hidden[n, t] @ table[items[t + 1]])
            neg = torch.sigmoid(hidden[n, t] @ table[negatives[n, t]])
            terms.append(-torch.log(pos) - torch.log(1 - neg))
        expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(losses, torch.stack(expected))


@pytest.mark.parametrize("back", [1, 2])
def test_sasrec_learns_a_deterministic_next_item_rule(back):
    """target = (back-th newest history item + 1) mod I; back = 2 needs attention to an earlier position."""
    n_items, length = 30, 6
    rng = np.random.default_rng(0)
    data = sequential_data(n_items=n_items, length=length)

    def rule_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        samples = random_samples(n, N_USERS, n_items, length, rng)
        history = torch.from_numpy(samples.history.astype(np.int64))
        history[:, -back:] = torch.from_numpy(rng.integers(0, n_items, (n, back)))  # at least `back` items
        return history, (history[:, -back] + 1) % n_items

    torch.manual_seed(0)
    model = SASRec(data, hidden_dim=32, dropout=0.1)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for step in range(100):
        model.on_epoch_start(step, step)
        history, target = rule_batch(128)
        loss = model.sample_losses(
            {"users": torch.zeros(128, dtype=torch.long), "history": history, "pos_items": target}
        )
        optimiser.zero_grad()
        loss.mean().backward()
        optimiser.step()
    model.eval()
    history, target = rule_batch(500)
    accuracy = (model.score_histories(history).argmax(1) == target).float().mean().item()
    assert accuracy > 0.95


def test_sasrec_config_mistakes_are_user_errors():
    data = sequential_data()
    with pytest.raises(UserError, match="dataset/protocol=sequential"):
        SASRec(sequential_data(with_samples=False))
    with pytest.raises(UserError, match="model.loss"):
        SASRec(data, loss="bpr")
    with pytest.raises(UserError, match="multiple of model.n_heads"):
        SASRec(data, hidden_dim=10, n_heads=3)
    with pytest.raises(UserError, match="model.dropout"):
        SASRec(data, dropout=1.0)
    with pytest.raises(UserError, match="model.max_len"):
        SASRec(data, max_len=0)


# ------------------------------------------------------------------------------------------------ MostPop


def test_mostpop_ranks_by_training_counts_with_ties_by_item_index():
    data = sequential_data()
    model = MostPop(data)
    assert (model.batch_unit, model.needs_training, list(model.parameters())) == ("sample", False, [])
    counts = np.asarray(data.train.sum(axis=0)).ravel()
    history = torch.from_numpy(data.samples["test"].history.astype(np.int64))
    scores = model.score_histories(history)
    assert scores.shape == (40, N_ITEMS) and scores.dtype == torch.float32
    np.testing.assert_array_equal(scores.numpy(), np.tile(counts, (40, 1)))
    np.testing.assert_array_equal(model.scorer()(torch.tensor([0, 3])).numpy(), np.tile(counts, (2, 1)))
    # through the evaluator's top-K: count descending, equal counts by the lower item index
    nothing = sp.csr_matrix((40, N_ITEMS))
    topk = full_ranking_topk(
        lambda rows: model.score_histories(history[rows]), np.arange(40), nothing, N_ITEMS
    )
    expected = sorted(range(N_ITEMS), key=lambda i: (-counts[i], i))
    assert len(set(counts)) < N_ITEMS  # there are ties to break
    assert (topk == np.array(expected)).all()
    by_target = MostPop(data, popularity="targets").score_histories(history[:2])
    target_counts = np.bincount(data.samples["train"].target, minlength=N_ITEMS)
    np.testing.assert_array_equal(by_target.numpy(), np.tile(target_counts, (2, 1)))
    with pytest.raises(UserError, match="dataset/protocol=sequential"):
        MostPop(sequential_data(with_samples=False), popularity="targets")
    with pytest.raises(UserError, match="model.popularity"):
        MostPop(data, popularity="views")
    assert MostPop(sequential_data(with_samples=False)).scorer()(torch.tensor([1])).shape == (1, N_ITEMS)


# ------------------------------------------------------------------------------------------------ configs


def test_shipped_configs_instantiate_both_models_with_runtime_data():
    data = sequential_data()
    sasrec = build(compose_config(["model=sasrec"]).model, data=data)
    assert isinstance(sasrec, SASRec) and sasrec.max_len == LENGTH and sasrec.loss == "ce"
    assert (sasrec.hidden_dim, len(sasrec.blocks), sasrec.blocks[0].n_heads, sasrec.dropout) == (
        64,
        2,
        1,
        0.2,
    )
    cfg = compose_config(["model=sasrec", "model.loss=bce", "model.max_len=3"])
    assert build(cfg.model, data=data).max_len == 3
    assert (cfg.trainer.lr, cfg.trainer.batch_size) == (1e-3, 128)
    mostpop = build(compose_config(["model=mostpop", "model.popularity=targets"]).model, data=data)
    assert isinstance(mostpop, MostPop) and mostpop.popularity == "targets"
    # a plain hydra instantiate would hand the model a DictConfig copy of the dataclass: a clear error
    plain = OmegaConf.create({"_target_": "fairbench.models.mostpop.MostPop"})
    with pytest.raises(Exception, match="InteractionData"):
        instantiate(plain, data=data)

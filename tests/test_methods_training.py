"""Every fairness method through the real training loop: updates, resume, errors, and the CLI sweep."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hydra.utils import instantiate

from fairbench.config import compose_config
from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod
from fairbench.methods.bifair import BiFair, BiFairSeparate
from fairbench.methods.popdro import PopDRO
from fairbench.models.alpharec import AlphaRec
from fairbench.models.base import Recommender, sampled_info_nce
from fairbench.training import TrainerConfig, fit
from tests.helpers.cli import fairbench as run_cli

METHODS = ["erm", "reweight", "groupdro", "drorec", "popdro", "multifr", "itfr", "bifair", "bifair_separate"]
N_USERS, N_ITEMS = 24, 30


def toy_data(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.3).astype(np.float32)
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = 1
    train = sp.csr_matrix(dense)
    return train, rng.normal(size=(N_ITEMS, 10)).astype(np.float32), rng.uniform(0, 1e6, train.nnz)


def toy_groups(kind: str) -> torch.Tensor:
    """pop: head / tail partition; genre: three overlapping groups and two items in no group."""
    membership = torch.zeros(N_ITEMS, 3 if kind == "genre" else 2)
    if kind == "pop":
        membership[:5, 0] = 1
        membership[5:, 1] = 1
    else:
        membership[:12, 0] = 1
        membership[10:20, 1] = 1
        membership[18:28, 2] = 1
    return membership


def build_method(name: str, **overrides: object) -> FairnessMethod:
    cfg = compose_config([f"method={name}"])
    return instantiate(cfg.method, **overrides)


def toy_model(train: sp.csr_matrix, vectors: np.ndarray) -> AlphaRec:
    torch.manual_seed(0)
    return AlphaRec(train, vectors, hidden_dim=16, embed_dim=8, num_negatives=8)


def run_fit(
    method: FairnessMethod,
    max_epochs: int,
    kind: str = "pop",
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    evaluate: Callable | None = None,
    patience: int = 50,
    on_evaluation: Callable | None = None,
) -> tuple[AlphaRec, object]:
    train, vectors, stamps = toy_data()
    model = toy_model(train, vectors)
    cfg = TrainerConfig(max_epochs=max_epochs, patience=patience, batch_size=64, lr=1e-2, progress=False)
    result = fit(
        model,
        method,
        train,
        cfg,
        evaluate or (lambda m: {"recall@20": float(m.scorer()(torch.arange(N_USERS)).std())}),
        seed=1,
        item_groups=toy_groups(kind),
        group_names=[f"g{i}" for i in range(toy_groups(kind).shape[1])],
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        fingerprint="toy",
        on_evaluation=on_evaluation,
        train_timestamps=stamps,
    )
    return model, result


@pytest.mark.parametrize("kind", ["pop", "genre"])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_changes_parameters(name, kind):
    train, vectors, stamps = toy_data()
    model = toy_model(train, vectors)
    projector = [p.detach().clone() for p in model.projector.parameters()]
    text = model.item_text_vectors.detach().clone()
    cfg = TrainerConfig(max_epochs=1, batch_size=64, lr=1e-2, progress=False, checkpoint=False)
    result = fit(
        model,
        build_method(name),
        train,
        cfg,
        lambda m: {"recall@20": 0.0},
        seed=0,
        item_groups=toy_groups(kind),
        group_names=None,
        train_timestamps=stamps,
    )
    assert np.isfinite(result.history[0]["train/loss"])
    changed = [not torch.equal(p, q) for p, q in zip(model.projector.parameters(), projector, strict=True)]
    assert all(changed), name
    if name == "bifair":
        assert "item_text_vectors" in model.parameter_sets()
        assert not torch.equal(model.item_text_vectors.detach(), text)


@pytest.mark.parametrize("name", ["groupdro", "drorec", "popdro", "multifr", "itfr", "bifair"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, name):
    interrupted = tmp_path / "after_epoch_1.ckpt"

    def keep_checkpoint(epoch: int, row: dict) -> None:  # runs before the epoch's own checkpoint is written
        if epoch == 2:
            shutil.copy(tmp_path / "a" / "last.ckpt", interrupted)

    model_a, result_a = run_fit(
        build_method(name), 4, checkpoint_dir=tmp_path / "a", on_evaluation=keep_checkpoint
    )
    model_c, result_c = run_fit(build_method(name), 4, resume_from=interrupted)
    assert [r["train/loss"] for r in result_c.history] == [r["train/loss"] for r in result_a.history]
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_c.state_dict()[key], value, rtol=0, atol=0)


def test_bifair_learning_rates_decay_polynomially():
    method = BiFair(theta_lr=0.01, z_lr=0.001)
    rates: list[tuple[float, float]] = []
    original_end = method.on_epoch_end

    def record(epoch: int) -> None:
        original_end(epoch)
        optimizers = method.optimizers
        rates.append(
            (optimizers["theta"].param_groups[0]["lr"], optimizers["item_text_vectors"].param_groups[0]["lr"])
        )

    method.on_epoch_end = record  # type: ignore[method-assign]
    run_fit(method, 4)
    steps = method.context.steps_per_epoch
    total = 4 * steps  # T = max_epochs x steps per epoch
    for epoch, (theta_lr, z_lr) in enumerate(rates):
        factor = (1 - (epoch + 1) * steps / total) ** 0.9  # lr_t = lr_0 (1 - t / T)^0.9
        assert theta_lr == pytest.approx(0.01 * factor, abs=1e-12)
        assert z_lr == pytest.approx(0.001 * factor, abs=1e-12)
    assert rates[-1] == (pytest.approx(0.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))


def test_bifair_separate_trains_theta_then_z(tmp_path):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.9, 0.1, 0.1, 0.1])  # phase theta plateaus after epoch 0
    method = BiFairSeparate()
    states: list[dict[str, torch.Tensor]] = []

    def evaluate(model: Recommender) -> dict[str, float]:
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"recall@20": next(scores)}

    model, result = run_fit(method, 8, evaluate=evaluate, patience=2)
    assert method.phase == "z"
    # theta trained in epochs 0-2, restored to its best (epoch 0) and frozen; Z trained from epoch 3 on
    first, theta_end, z_start, z_later = states[0], states[2], states[3], states[4]
    assert not torch.equal(theta_end["projector.0.weight"], first["projector.0.weight"])
    assert torch.equal(theta_end["item_text_vectors"], first["item_text_vectors"])
    for key in ("projector.0.weight", "projector.2.bias"):
        torch.testing.assert_close(z_start[key], first[key], rtol=0, atol=0)
        torch.testing.assert_close(z_later[key], first[key], rtol=0, atol=0)
    assert not torch.equal(z_start["item_text_vectors"], first["item_text_vectors"])
    assert not torch.equal(z_later["item_text_vectors"], z_start["item_text_vectors"])
    assert result.best_epoch == 4 and result.stopped_early


def test_bifair_separate_resumes_across_its_phase_switch(tmp_path):
    scores = [0.5, 0.4, 0.3, 0.6, 0.7, 0.2]  # phase z starts after epoch 2

    def scripted(start: int) -> Callable:
        remaining = iter(scores[start:])
        return lambda model: {"recall@20": next(remaining)}

    interrupted = tmp_path / "after_epoch_3.ckpt"

    def keep_checkpoint(epoch: int, row: dict) -> None:
        if epoch == 4:
            shutil.copy(tmp_path / "a" / "last.ckpt", interrupted)

    run_a = dict(evaluate=scripted(0), patience=2)
    model_a, result_a = run_fit(
        BiFairSeparate(), 6, checkpoint_dir=tmp_path / "a", on_evaluation=keep_checkpoint, **run_a
    )
    method = BiFairSeparate()
    model_c, result_c = run_fit(method, 6, resume_from=interrupted, evaluate=scripted(4), patience=2)
    assert method.phase == "z" and result_c.history == result_a.history
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_c.state_dict()[key], value, rtol=0, atol=0)


class TinyMF(Recommender):
    """A minimal ID-embedding model: no LM vectors, no score-adjustment hook."""

    num_negatives = 4

    def __init__(self) -> None:
        super().__init__()
        self.users = torch.nn.Parameter(torch.randn(N_USERS, 4))
        self.items = torch.nn.Parameter(torch.randn(N_ITEMS, 4))

    def sample_losses(self, batch):
        return sampled_info_nce(
            self.users, self.items, batch["users"], batch["pos_items"], batch["neg_items"], 0.2
        )

    def scorer(self):
        return lambda users: self.users[users].detach() @ self.items.detach().T


def fit_tiny(method: FairnessMethod, stamps: bool = True) -> None:
    train, _, timestamps = toy_data()
    cfg = TrainerConfig(max_epochs=1, batch_size=64, progress=False, checkpoint=False)
    fit(
        TinyMF(),
        method,
        train,
        cfg,
        lambda m: {"recall@20": 0.0},
        seed=0,
        item_groups=toy_groups("pop"),
        train_timestamps=timestamps if stamps else None,
    )


def test_unsupported_combinations_fail_with_a_user_error():
    with pytest.raises(UserError, match="bifair needs a model with trainable LM item vectors"):
        fit_tiny(BiFair())
    with pytest.raises(UserError, match="bifair_separate needs a model with trainable LM item vectors"):
        fit_tiny(BiFairSeparate())
    with pytest.raises(UserError, match="popularity_scores=false"):
        fit_tiny(PopDRO())
    with pytest.raises(UserError, match="timestamp"):
        fit_tiny(PopDRO(popularity_scores=False), stamps=False)
    fit_tiny(PopDRO(popularity_scores=False))  # the DRO part works with any pair-based model
    for name in ("groupdro", "drorec", "multifr", "itfr", "reweight"):
        fit_tiny(build_method(name))


@pytest.mark.parametrize(
    "model_name,options",
    [
        ("linear", {}),
        ("linear", {"gradient_space": "representation", "fd_scheme": "forward"}),
        ("alpharec", {"gradient_space": "representation", "fd_scheme": "forward"}),
        ("alpharec", {"gradient_space": "representation"}),
    ],
)
@pytest.mark.parametrize("method_name", ["bifair", "bifair_separate", "popdro"])
def test_text_vector_methods_train_linear_and_alpharec(model_name, options, method_name):
    """BiFair (both cost options) and PopDRO's score adjustment work on every LM-vector model."""
    if method_name != "bifair" and options.get("fd_scheme"):
        pytest.skip("fd_scheme is a bifair option")
    if method_name == "popdro" and options:
        pytest.skip("gradient_space is a bifair option")
    train, vectors, stamps = toy_data()
    torch.manual_seed(0)
    model = instantiate(compose_config([f"model={model_name}"]).model, train=train, item_vectors=vectors)
    projector = [p.detach().clone() for p in model.projector.parameters()]
    text = model.item_text_vectors.detach().clone()
    cfg = TrainerConfig(max_epochs=2, patience=5, batch_size=64, lr=1e-2, progress=False, checkpoint=False)
    method = build_method(method_name, **options)
    result = fit(
        model,
        method,
        train,
        cfg,
        lambda m: {"recall@20": 0.0},
        seed=0,
        item_groups=toy_groups("genre"),
        train_timestamps=stamps,
    )
    assert all(np.isfinite(row["train/loss"]) for row in result.history)
    assert all(not torch.equal(p, q) for p, q in zip(model.projector.parameters(), projector, strict=True))
    assert torch.equal(model.item_text_vectors.detach(), text) != (method_name == "bifair")


def test_trainable_text_vectors_keep_alpharec_values_and_reach_z_through_users():
    train, vectors, _ = toy_data()
    model = toy_model(train, vectors)
    users_before, items_before = model.embeddings()
    assert set(model.parameter_sets()) == {"projector"} and "item_text_vectors" not in model.state_dict()
    model.set_text_vectors_trainable(True)
    users_after, items_after = model.embeddings()
    torch.testing.assert_close(users_after, users_before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items_after, items_before, rtol=1e-5, atol=1e-6)
    assert set(model.parameter_sets()) == {"projector", "item_text_vectors"}
    assert "item_text_vectors" in model.state_dict()
    # an item that is no positive or negative in the batch still gets a gradient through its users' means
    batch = {"users": torch.tensor([0]), "pos_items": torch.tensor([int(train[0].indices[0])])}
    batch["neg_items"] = torch.tensor([[i for i in range(N_ITEMS) if train[0, i] == 0][:2]])
    model.sample_losses(batch).sum().backward()
    other = [i for i in train[0].indices if i != int(batch["pos_items"][0])]
    assert other and model.item_text_vectors.grad[other].abs().sum() > 0


@pytest.mark.slow
def test_cli_sweep_over_all_methods(tmp_path):
    args = [
        "-m",
        "method=" + ",".join(METHODS),
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "logger=none",
    ]
    result = run_cli("train", *args, out=tmp_path, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = tmp_path.glob("multiruns/*/*/summary.csv")
    summary = pd.read_csv(summary_path)
    assert "sweep summary" in result.stdout
    assert len(summary) == len(METHODS) and (summary["status"] == "completed").all()
    assert summary["test/recall@20"].notna().all()
    assert sorted(summary["overrides"].str.extract(r"method=(\w+)")[0]) == sorted(METHODS)


def test_itfr_logs_its_group_weights_each_epoch(caplog):
    method = build_method("itfr")
    with caplog.at_level(logging.INFO, logger="fairbench.methods.itfr"):
        run_fit(method, 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("itfr epoch")]
    assert [line.split(":")[0] for line in lines] == ["itfr epoch 0", "itfr epoch 1"]
    logged = [float(w) for w in lines[-1].split("group weights [")[1].split("]")[0].split(",")]
    assert logged == [round(w, 3) for w in method.weights.tolist()]
    assert sum(logged) == pytest.approx(1.0, abs=2e-3)

"""The seams of one run: stage functions, evaluation rows and the ranker seam, the trainer contract
(accumulation, precision, clipping, monitor mode, trainable state), capability checks before any work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.capabilities import check_compatibility
from fairbench.config import compose_config, config_groups, list_options, validate_config
from fairbench.data.types import InteractionData, SequentialSamples
from fairbench.errors import UserError
from fairbench.evaluation import MetricConfig, evaluation_rows, rank
from fairbench.methods.bifair import BiFair
from fairbench.methods.erm import ERM
from fairbench.methods.itfr import ITFR
from fairbench.methods.popdro import PopDRO
from fairbench.models.alpharec import AlphaRec
from fairbench.models.base import Recommender, model_capabilities
from fairbench.models.mf import MF
from fairbench.models.multvae import MultVAE
from fairbench.pipeline import config_fingerprint
from fairbench.training import TrainerConfig, fit
from tests.helpers.cli import fairbench, run_quick_job
from tests.helpers.toy import random_train

# ------------------------------------------------------------------------------------- a transparent model


class PairRegression(Recommender):
    """score(u, i) = <P_u, Q_i>; per-sample loss (1 - score)^2 on positives; no negatives, no randomness,
    so any partition of a batch into micro-batches sees exactly the same samples."""

    def __init__(self, train: sp.csr_matrix, dim: int = 4, frozen_items: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.users = nn.Parameter(torch.randn(train.shape[0], dim, generator=generator) * 0.3)
        self.items = nn.Parameter(torch.randn(train.shape[1], dim, generator=generator) * 0.3)
        self.items.requires_grad_(not frozen_items)

    def sample_losses(self, batch):
        score = (self.users[batch["users"]] * self.items[batch["pos_items"]]).sum(-1)
        return (1.0 - score) ** 2

    def scorer(self):
        return lambda users: self.users[users] @ self.items.T

    def trainable_state_dict(self):
        return {"users": self.users} if not self.items.requires_grad else super().trainable_state_dict()

    def load_trainable_state_dict(self, state):
        if self.items.requires_grad:
            super().load_trainable_state_dict(state)
        else:
            self.users.data.copy_(state["users"])


class SGDERM(ERM):
    def configure_optimizers(self, model):
        params = [p for group in model.parameter_sets().values() for p in group]
        return {"model": torch.optim.SGD(params, lr=1.0)}


def train_pairs(cfg: TrainerConfig, method=None, **kwargs) -> PairRegression:
    train = random_train(20, 25, seed=4)
    model = PairRegression(train, **kwargs)
    fit(model, method or ERM(), train, cfg, lambda m: {"recall@20": 0.0}, seed=0)
    return model


def test_gradient_accumulation_equals_one_batch_of_all_samples():
    # 20 users x 25 items at density 0.3: ~160 pairs; windows of 4 x 8 = 32, the last one partial
    one = train_pairs(TrainerConfig(max_epochs=2, batch_size=32, lr=1e-2, progress=False))
    accumulated = train_pairs(
        TrainerConfig(max_epochs=2, batch_size=8, accumulate_grad_batches=4, lr=1e-2, progress=False)
    )
    plain_small = train_pairs(TrainerConfig(max_epochs=2, batch_size=8, lr=1e-2, progress=False))
    torch.testing.assert_close(accumulated.users, one.users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accumulated.items, one.items, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain_small.users, one.users, atol=1e-4)


def test_gradient_clipping_bounds_the_update():
    cfg = dict(max_epochs=1, batch_size=1000, lr=1.0, progress=False)
    before = PairRegression(random_train(20, 25, seed=4))
    start = torch.cat([before.users.detach().ravel(), before.items.detach().ravel()])
    clipped = train_pairs(TrainerConfig(**cfg, gradient_clip=0.01), method=SGDERM())
    free = train_pairs(TrainerConfig(**cfg), method=SGDERM())
    step = lambda m: torch.cat([m.users.detach().ravel(), m.items.detach().ravel()]) - start  # noqa: E731
    assert step(clipped).norm() == pytest.approx(0.01, rel=1e-4)  # SGD lr 1: step = clipped gradient
    assert step(free).norm() > 0.05


def test_bf16_precision_trains_in_float32_parameters():
    model = train_pairs(TrainerConfig(max_epochs=2, batch_size=16, lr=1e-2, precision="bf16", progress=False))
    assert model.users.dtype == torch.float32 and torch.isfinite(model.users).all()
    with pytest.raises(UserError, match="16-mixed needs a CUDA device"):
        train_pairs(TrainerConfig(max_epochs=1, precision="16-mixed", progress=False))


def test_methods_that_combine_gradients_refuse_trainer_update_options():
    with pytest.raises(UserError, match="accumulate_grad_batches=2"):
        train_pairs(TrainerConfig(max_epochs=1, accumulate_grad_batches=2, progress=False), method=ITFR())


def test_monitor_mode_min_selects_the_lowest_value_and_restores_it(tmp_path):
    train = random_train(20, 25, seed=4)
    model = PairRegression(train)
    losses = iter([0.9, 0.5, 0.7, 0.8])
    snapshots = []

    def evaluate(m):
        snapshots.append(m.users.detach().clone())
        return {"loss": next(losses)}

    cfg = TrainerConfig(max_epochs=4, patience=5, monitor="loss", monitor_mode="min", lr=1e-2, progress=False)
    result = fit(model, ERM(), train, cfg, evaluate, seed=0, checkpoint_dir=tmp_path)
    assert (result.best_epoch, result.best_score) == (1, 0.5)
    torch.testing.assert_close(model.users.detach(), snapshots[1], rtol=0, atol=0)


def test_checkpoints_hold_the_trainable_state_only_and_resume_exactly(tmp_path):
    train = random_train(20, 25, seed=4)
    cfg = dict(patience=50, batch_size=16, lr=1e-2, progress=False)

    def run(max_epochs, out, resume_from=None):
        model = PairRegression(train, frozen_items=True)
        fit(
            model,
            ERM(),
            train,
            TrainerConfig(max_epochs=max_epochs, **cfg),
            lambda m: {"recall@20": float(m.users.detach().sum())},
            seed=1,
            checkpoint_dir=out,
            resume_from=resume_from,
        )
        return model

    full = run(4, tmp_path / "full")
    run(2, tmp_path / "half")
    state = torch.load(tmp_path / "half" / "last.ckpt", weights_only=True)
    assert set(state["model"]) == {"users"} and set(state["best_model"]) == {"users"}
    resumed = run(4, tmp_path / "resumed", resume_from=tmp_path / "half" / "last.ckpt")
    torch.testing.assert_close(resumed.users, full.users, rtol=0, atol=0)


def test_checkpoint_every_writes_fewer_resume_points(tmp_path):
    train = random_train(20, 25, seed=4)
    written = []
    cfg = TrainerConfig(max_epochs=5, patience=50, checkpoint_every=3, lr=1e-2, progress=False)
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])  # only the first evaluation improves

    def evaluate(m):
        path = tmp_path / "last.ckpt"
        written.append(torch.load(path, weights_only=True)["epoch"] if path.exists() else None)
        return {"recall@20": next(scores)}

    fit(PairRegression(train), ERM(), train, cfg, evaluate, seed=0, checkpoint_dir=tmp_path)
    final = torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"]
    # seen by each evaluation: none yet; epoch 0 (written as an improvement); 0; epoch 2 (the third
    # evaluation); 2; and the end of training writes the last epoch
    assert written == [None, 0, 0, 2, 2] and final == 4


# -------------------------------------------------------------------------------------- evaluation rows


def sequential_data(n_users=6, n_items=9) -> InteractionData:
    rng = np.random.default_rng(0)

    def samples(n):
        history = rng.integers(-1, n_items, size=(n, 3)).astype(np.int32)
        return SequentialSamples(
            user=rng.integers(0, n_users, n).astype(np.int64),
            history=history,
            target=rng.integers(0, n_items, n).astype(np.int64),
            timestamp=np.zeros(n),
        )

    train = random_train(n_users, n_items, seed=1)
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    import pandas as pd

    items = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "title": list("abcdefghi")})
    return InteractionData(
        name="toy",
        user_ids=np.array([str(u) for u in range(n_users)]),
        items=items,
        train=train,
        valid=empty,
        test=empty,
        samples={"train": samples(10), "valid": samples(7), "test": samples(5)},
    )


class HistoryScorer(Recommender):
    batch_unit = "sample"

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.table = torch.randn(n_items + 1, n_items, generator=torch.Generator().manual_seed(3))

    def score_histories(self, history):
        return self.table[history[:, -1] + 1]


def test_sample_rows_have_one_target_each_and_histories_as_reference():
    data = sequential_data()
    rows = evaluation_rows(data, "test", "sample")
    samples = data.samples["test"]
    assert rows.truth.shape == (5, 9) and (rows.truth.getnnz(axis=1) == 1).all()
    np.testing.assert_array_equal(rows.truth.indices, samples.target)
    assert rows.exclude.nnz == 0
    for r in range(5):
        expected = sorted(set(samples.history[r][samples.history[r] >= 0].tolist()))
        assert rows.reference[r].indices.tolist() == expected


def test_full_ranking_of_sample_rows_equals_brute_force():
    data = sequential_data()
    model = HistoryScorer(data.n_items)
    rows = evaluation_rows(data, "valid", "sample")
    ranking = rank(model, rows, k=4, batch_size=3)
    scores = model.score_histories(torch.from_numpy(rows.history)).numpy()
    expected = np.lexsort((np.tile(np.arange(9), (7, 1)), -scores), axis=1)[:, :4]
    np.testing.assert_array_equal(ranking.items, expected)


def test_a_user_model_ranks_sample_rows_by_their_users():
    data = sequential_data()
    model = PairRegression(data.train)
    rows = evaluation_rows(data, "test", "sample")
    ranking = rank(model, rows, k=3)
    scores = model.scorer()(torch.from_numpy(rows.users)).detach().numpy()
    np.testing.assert_array_equal(ranking.items, np.argsort(-scores, axis=1, kind="stable")[:, :3])


def test_metric_rows_auto_follows_the_model():
    from fairbench.evaluation import row_unit

    assert row_unit(HistoryScorer, MetricConfig()) == "sample"
    assert row_unit(MF, MetricConfig()) == "user"
    assert row_unit(MF, MetricConfig(rows="sample")) == "sample"


# ------------------------------------------------------------------------------- checks before any work


def test_capabilities_are_declared_by_the_classes():
    assert {"trainable_text_vectors", "encoding_split", "full_ranking"} <= model_capabilities(AlphaRec)
    assert "trainable_text_vectors" not in model_capabilities(MF)
    assert "pair_samples" not in model_capabilities(MultVAE)
    assert "sequential" in model_capabilities(HistoryScorer)


def test_incompatible_model_and_method_are_named_with_the_models_that_fit():
    with pytest.raises(
        UserError, match=r"BiFair does not work with model MF.*models that fit: alpharec, linear"
    ):
        check_compatibility(MF, BiFair())
    check_compatibility(AlphaRec, BiFair())
    with pytest.raises(UserError, match="score_adjustment"):
        check_compatibility(MF, PopDRO())
    check_compatibility(MF, PopDRO(popularity_scores=False))
    with pytest.raises(UserError, match="pair_samples"):
        check_compatibility(MultVAE, PopDRO(popularity_scores=False))


def test_config_groups_come_from_the_tree():
    groups = config_groups()
    assert "dataset/protocol" in groups and "postprocess" in groups and "hydra" not in groups
    assert list_options()["dataset/protocol"] == ["general", "sequential"]


def test_nested_target_nodes_and_backbone_keys_are_validated():
    cfg = compose_config(["+backbone.encoder.poolng=mean"])
    assert any("backbone.encoder.poolng" in p for p in validate_config(cfg))
    cfg = compose_config(["+backbone.foo=1"])
    assert any("unknown key(s) ['foo']" in p for p in validate_config(cfg))


def test_fingerprint_ignores_budget_and_logging_but_not_the_trajectory():
    base = config_fingerprint(compose_config([]))
    assert config_fingerprint(compose_config(["trainer.max_epochs=3", "logger=none"])) == base
    assert config_fingerprint(compose_config(["trainer.lr=0.01"])) != base
    assert config_fingerprint(compose_config(["model.tau=0.2"])) != base


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["+backbone.encoder.poolng=mean"], "backbone.encoder.poolng: unknown key"),
        (["method=bifair", "model=mf"], "BiFair does not work with model mf"),
        (["method=itfr", "trainer.precision=bf16"], "precision=bf16 cannot apply"),
    ],
)
def test_cli_refuses_before_loading_any_data(tmp_path, args, expected):
    cache = tmp_path / "cache"
    result = fairbench("train", *args, out=tmp_path, env={"FAIRBENCH_CACHE": str(cache)})
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not cache.exists()  # no dataset was read, nothing was cached


# ------------------------------------------------------------------------------------------ sweep value


def test_the_value_returned_to_a_sweeper_is_a_validation_metric(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value = run_quick_job(tmp_path / "job")
    metrics = json.loads(Path(tmp_path / "job" / "metrics.json").read_text())
    assert value == metrics["valid/recall@20"] and math.isfinite(value)
    assert value != metrics["test/recall@20"]


def test_a_finished_run_is_post_processed_from_its_checkpoint_without_training(tmp_path):
    from fairbench.pipeline import run

    base = ["trainer=quick", "trainer.max_epochs=1", "trainer.progress=false", "logger=none"]
    trained = run(compose_config(base), tmp_path / "trained")
    ckpt = tmp_path / "trained" / "checkpoints" / "last.ckpt"
    # postprocess is not part of the training fingerprint: the run resumes after its last epoch
    reranked = run(
        compose_config([*base, "postprocess=ifairlrs", "postprocess.lambdas=[0]", f"ckpt_path={ckpt}"]),
        tmp_path / "reranked",
    )
    assert reranked.metrics["postprocess/lambda"] == 0.0
    assert reranked.history.equals(trained.history)
    for key in ("train/epochs", "train/best_epoch", "train/stopped_early"):
        assert reranked.metrics[key] == trained.metrics[key] == (1 if key == "train/epochs" else 0), key
    tests = {k: v for k, v in trained.metrics.items() if k.startswith("test/")}
    assert tests and all(reranked.metrics[k] == pytest.approx(v, abs=1e-12) for k, v in tests.items())

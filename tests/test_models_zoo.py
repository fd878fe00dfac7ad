"""The recommender zoo (MF, MultVAE, LightGCN, SGL, XSimGCL, Linear): loss formulas against hand computation,
scoring and masking, deterministic and resumable training, and the whole zoo through the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.methods.erm import ERM
from fairbench.metrics import full_ranking_topk
from fairbench.models.alpharec import AlphaRec
from fairbench.models.base import info_nce, normalized_adjacency
from fairbench.models.lightgcn import LightGCN
from fairbench.models.linear import Linear
from fairbench.models.mf import MF, bpr_losses
from fairbench.models.multvae import MultVAE, multvae_losses
from fairbench.models.sgl import SGL, contrastive_shares, edge_dropout_adjacency
from fairbench.models.xsimgcl import XSimGCL
from fairbench.training import TrainerConfig, fit, model_seed
from tests.helpers.toy import random_train as toy_train

N_USERS, N_ITEMS = 12, 15


def random_train(n_users: int = N_USERS, n_items: int = N_ITEMS, density: float = 0.3, seed: int = 0):
    return toy_train(n_users, n_items, density, seed)


def item_vectors(n_items: int = N_ITEMS, dim: int = 10) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n_items, dim)).astype(np.float32)


def pair_batch(train: sp.csr_matrix, n_negatives: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """All training pairs of ``train`` with random negatives (any item: the formulas do not care)."""
    coo = train.tocoo()
    gen = torch.Generator().manual_seed(seed)
    return {
        "users": torch.from_numpy(coo.row.astype(np.int64)),
        "pos_items": torch.from_numpy(coo.col.astype(np.int64)),
        "neg_items": torch.randint(0, train.shape[1], (coo.nnz, n_negatives), generator=gen),
    }


def build(name: str, train: sp.csr_matrix, **kwargs):
    torch.manual_seed(0)
    classes = {"mf": MF, "lightgcn": LightGCN, "sgl": SGL, "xsimgcl": XSimGCL, "multvae": MultVAE}
    if name == "linear":
        return Linear(train, item_vectors(train.shape[1]), embed_dim=8, **kwargs)
    if name == "alpharec":
        return AlphaRec(train, item_vectors(train.shape[1]), hidden_dim=16, embed_dim=8, **kwargs)
    if name == "multvae":
        return MultVAE(train, hidden_dim=16, latent_dim=4, users_per_batch=5, **kwargs)
    return classes[name](train, embed_dim=8, **kwargs)


ZOO = ["mf", "lightgcn", "sgl", "xsimgcl", "multvae", "linear"]


# ------------------------------------------------------------------------------------------ loss formulas


def test_bpr_is_minus_log_sigmoid_of_the_score_difference_averaged_over_negatives():
    pos = torch.tensor([2.0, -1.0, 0.5])
    neg = torch.tensor([[1.0, 3.0], [-1.0, -2.0], [40.0, 0.5]])
    expected = torch.tensor(
        [
            [-math.log(1 / (1 + math.exp(-(p - n)))) for n in row]
            for p, row in zip(pos.tolist(), neg.tolist(), strict=True)
        ]
    ).mean(1)
    torch.testing.assert_close(bpr_losses(pos, neg), expected)
    assert torch.isfinite(bpr_losses(torch.tensor([0.0]), torch.tensor([[1e4]]))).all()  # no overflow


@pytest.mark.parametrize("cls", [MF, LightGCN])
def test_bpr_sample_losses_are_the_formula_on_the_final_embeddings_plus_l2(cls):
    train = random_train()
    model = cls(train, embed_dim=6, reg_weight=0.01) if cls is MF else cls(train, 6, 2, reg_weight=0.01)
    batch = pair_batch(train)
    users, items = model.embeddings()
    if cls is LightGCN:  # the propagated representation is the layer mean of E, AE, A^2E
        a = normalized_adjacency(train).to_dense()
        e = torch.cat([model.user_embedding, model.item_embedding])
        mean = (e + a @ e + a @ a @ e) / 3
        torch.testing.assert_close(torch.cat([users, items]), mean)
    u, p, n = users[batch["users"]], items[batch["pos_items"]], items[batch["neg_items"][:, 0]]
    rec = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1)))
    u0 = model.user_embedding[batch["users"]]
    p0 = model.item_embedding[batch["pos_items"]]
    n0 = model.item_embedding[batch["neg_items"][:, 0]]
    reg = 0.005 * (u0.pow(2).sum(1) + p0.pow(2).sum(1) + n0.pow(2).sum(1))
    losses = model.sample_losses(batch)
    torch.testing.assert_close(losses, rec + reg)
    losses.mean().backward()
    assert model.user_embedding.grad is not None and model.item_embedding.grad is not None
    assert set(model.parameter_sets()) == {"user_embeddings", "item_embeddings"}


def test_mf_infonce_uses_cosine_softmax_and_cosine_scores():
    train = random_train()
    model = MF(train, embed_dim=6, loss="infonce", reg_weight=0.0, tau=0.2)
    assert model.num_negatives == 256
    batch = pair_batch(train, n_negatives=5)
    u, i = model.user_embedding, model.item_embedding
    expected = info_nce(u[batch["users"]], i[batch["pos_items"]], i[batch["neg_items"]], 0.2)
    torch.testing.assert_close(model.sample_losses(batch), expected)
    scores = model.scorer()(torch.tensor([0, 3]))
    cos = nn.functional.cosine_similarity(u[[0, 3], None, :], i[None, :, :], dim=-1)
    torch.testing.assert_close(scores, cos.detach())
    dot = MF(train, embed_dim=6).scorer()
    assert dot(torch.tensor([1])).shape == (1, N_ITEMS)


def test_contrastive_shares_average_to_the_infonce_over_distinct_nodes():
    torch.manual_seed(0)
    view1, view2 = torch.randn(7, 4), torch.randn(7, 4)
    nodes = torch.tensor([3, 1, 3, 5, 3, 1])
    tau = 0.3
    distinct = torch.tensor([1, 3, 5])
    a = nn.functional.normalize(view1[distinct], dim=-1)
    b = nn.functional.normalize(view2[distinct], dim=-1)
    per_node = nn.functional.cross_entropy(a @ b.T / tau, torch.arange(3), reduction="none")
    shares = contrastive_shares(view1, view2, nodes, tau)
    torch.testing.assert_close(shares.mean(), per_node.mean())
    # node 3 appears 3 times out of 6 samples over 3 distinct nodes: each share is l_3 * 6 / (3 * 3)
    torch.testing.assert_close(shares[0], per_node[1] * 6 / 9)
    torch.testing.assert_close(shares[1], per_node[0] * 6 / 6)


def test_edge_dropout_keeps_the_right_number_of_edges_and_renormalises():
    train = sp.coo_matrix(random_train(30, 40, density=0.2))
    gen = torch.Generator().manual_seed(0)
    adj = edge_dropout_adjacency(train, 0.25, gen).to_dense().numpy()
    kept = adj[:30, 30:] > 0
    assert kept.sum() == int(train.nnz * 0.75) and not kept[train.toarray() == 0].any()
    degree = np.concatenate([kept.sum(1), kept.sum(0)])
    nz = np.nonzero(kept)
    np.testing.assert_allclose(
        adj[nz[0], 30 + nz[1]], 1 / np.sqrt(degree[nz[0]] * degree[30 + nz[1]]), rtol=1e-6
    )
    again = edge_dropout_adjacency(train, 0.25, torch.Generator().manual_seed(0)).to_dense().numpy()
    np.testing.assert_array_equal(adj, again)


def test_sgl_loss_is_rec_plus_weighted_contrast_between_the_epoch_views():
    train = random_train()
    model = SGL(train, embed_dim=6, cl_weight=0.3, cl_tau=0.5, reg_weight=0.0)
    model.on_epoch_start(0, 123)
    views = [v.to_dense() for v in model.views]
    assert not torch.equal(views[0], views[1])
    batch = pair_batch(train)
    e = torch.cat([model.user_embedding, model.item_embedding])

    def lightgcn(a):
        return (e + a @ e + a @ a @ e) / 3

    full = lightgcn(normalized_adjacency(train).to_dense())
    v1, v2 = lightgcn(views[0]), lightgcn(views[1])
    u, i = full[:N_USERS], full[N_USERS:]
    rec = bpr_losses(
        (u[batch["users"]] * i[batch["pos_items"]]).sum(1),
        torch.einsum("bd,bnd->bn", u[batch["users"]], i[batch["neg_items"]]),
    )
    contrast = contrastive_shares(v1[:N_USERS], v2[:N_USERS], batch["users"], 0.5)
    contrast = contrast + contrastive_shares(v1[N_USERS:], v2[N_USERS:], batch["pos_items"], 0.5)
    torch.testing.assert_close(model.sample_losses(batch), rec + 0.3 * contrast)
    model.on_epoch_start(0, 123)  # the same seed gives the same views
    assert torch.equal(model.views[0].to_dense(), views[0])


def test_xsimgcl_noise_has_norm_eps_per_row_and_contrasts_output_with_layer_one():
    train = random_train()
    model = XSimGCL(train, embed_dim=6, n_layers=1, eps=0.3)
    model.on_epoch_start(0, 7)
    perturbed, layer = model.perturbed_propagation(perturb=True)
    clean = normalized_adjacency(train).to_dense() @ torch.cat([model.user_embedding, model.item_embedding])
    torch.testing.assert_close((perturbed - clean).norm(dim=1), torch.full((len(clean),), 0.3))
    assert ((perturbed - clean) * clean >= 0).all()  # the noise keeps the sign of each coordinate
    assert torch.equal(perturbed, layer)
    # the output is the mean of layers 1..L without E^0; ranking uses it unperturbed
    two = XSimGCL(train, embed_dim=6, n_layers=2, eps=0.0, cl_weight=0.4, cl_tau=0.2, reg_weight=0.0)
    two.on_epoch_start(0, 7)
    a = normalized_adjacency(train).to_dense()
    e = torch.cat([two.user_embedding, two.item_embedding])
    expected = (a @ e + a @ a @ e) / 2
    torch.testing.assert_close(torch.cat(two.embeddings()), expected)
    batch = pair_batch(train)
    users, items = expected[:N_USERS], expected[N_USERS:]
    layer1 = a @ e
    rec = bpr_losses(
        (users[batch["users"]] * items[batch["pos_items"]]).sum(1),
        torch.einsum("bd,bnd->bn", users[batch["users"]], items[batch["neg_items"]]),
    )
    contrast = contrastive_shares(users, layer1[:N_USERS], batch["users"], 0.2)
    contrast = contrast + contrastive_shares(items, layer1[N_USERS:], batch["pos_items"], 0.2)
    torch.testing.assert_close(two.sample_losses(batch), rec + 0.4 * contrast)


def test_xsimgcl_noise_of_each_layer_feeds_the_next_as_in_selfrec():
    """SELFRec ``XSimGCL_Encoder.forward``: E^k = A E^(k-1) + eps sign(A E^(k-1)) normalize(U[0, 1)), the
    perturbed layer is propagated further, the output is the mean of the perturbed layers 1..L (no E^0) and
    the contrast layer l* is the perturbed layer l*; the noise is drawn layer by layer from the epoch
    generator."""
    train = random_train()
    model = XSimGCL(train, embed_dim=6, n_layers=3, eps=0.2, cl_layer=2)
    model.on_epoch_start(0, 11)
    final, contrast_layer = model.perturbed_propagation(perturb=True)
    a = normalized_adjacency(train).to_dense()
    gen = torch.Generator().manual_seed(11)
    layer, layers = torch.cat([model.user_embedding, model.item_embedding]), []
    for _ in range(3):
        layer = a @ layer
        noise = torch.rand(layer.shape, generator=gen)
        layer = layer + torch.sign(layer) * nn.functional.normalize(noise, dim=-1) * 0.2
        layers.append(layer)
    torch.testing.assert_close(final, sum(layers) / 3)
    torch.testing.assert_close(contrast_layer, layers[1])


def test_multvae_loss_is_the_annealed_negative_elbo():
    torch.manual_seed(0)
    logits, mu, logvar = torch.randn(3, 5), torch.randn(3, 2), torch.randn(3, 2)
    rows = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]])
    log_pi = torch.log(torch.softmax(logits, dim=1))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    expected = -(rows * log_pi).sum(1) + 0.15 * kl
    torch.testing.assert_close(multvae_losses(logits, rows, mu, logvar, 0.15), expected)


def test_multvae_annealing_schedule_dropout_and_deterministic_scores():
    train = random_train()
    model = MultVAE(train, hidden_dim=16, latent_dim=4, anneal_cap=0.2, total_anneal_steps=100)
    for step, beta in [(0, 0.0), (10, 0.1), (20, 0.2), (1000, 0.2)]:
        model.on_train_step(step)
        assert model.beta == pytest.approx(beta)
    users = torch.tensor([0, 4, 7])
    rows = torch.from_numpy(train[[0, 4, 7]].toarray())
    torch.testing.assert_close(model.rows(users), rows)
    # ranking: z = mu of the undropped, L2-normalised row
    mu, _ = model.encode(rows, drop=False)
    h = nn.functional.tanh(model.encoder[0](nn.functional.normalize(rows, dim=1)))
    torch.testing.assert_close(mu, model.encoder[2](h)[:, :4])
    scores = model.scorer()(users)
    torch.testing.assert_close(scores, model.decoder(mu).detach())
    torch.testing.assert_close(model.scorer()(torch.tensor([4])), scores[1:2])  # batch independent
    # training draws dropout and epsilon from the epoch's generator: same seed, same loss
    batch = {"users": users}
    model.on_epoch_start(0, 5)
    first = model.sample_losses(batch)
    model.on_epoch_start(0, 5)
    torch.testing.assert_close(model.sample_losses(batch), first)
    model.on_epoch_start(0, 6)
    assert not torch.allclose(model.sample_losses(batch), first)
    assert set(model.parameter_sets()) == {"encoder", "decoder"}


def test_linear_is_a_bias_free_map_with_cosine_scores_and_infonce():
    train = random_train()
    z = item_vectors()
    model = Linear(train, z, embed_dim=4, tau=0.2, num_negatives=3)
    assert model.projector.bias is None and set(model.state_dict()) == {"projector.weight"}
    w = model.projector.weight
    z_items = torch.from_numpy(z)
    z_users = torch.from_numpy(train.toarray()) @ z_items / torch.from_numpy(train.sum(1).A)
    scores = model.scorer()(torch.arange(N_USERS))
    expected = nn.functional.cosine_similarity((z_users @ w.T)[:, None], (z_items @ w.T)[None], dim=-1)
    torch.testing.assert_close(scores, expected.detach(), rtol=1e-5, atol=1e-5)
    batch = pair_batch(train, n_negatives=3)
    e_u, e_i = z_users @ w.T, z_items @ w.T
    want = info_nce(e_u[batch["users"]], e_i[batch["pos_items"]], e_i[batch["neg_items"]], 0.2)
    torch.testing.assert_close(model.sample_losses(batch), want, rtol=1e-5, atol=1e-5)


def test_bad_hyperparameters_are_user_errors():
    train = random_train()
    with pytest.raises(UserError, match="model.loss"):
        MF(train, loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="model.cl_layer"):
        XSimGCL(train, n_layers=2, cl_layer=3)
    with pytest.raises(UserError, match="model.drop_ratio"):
        SGL(train, drop_ratio=1.0)
    with pytest.raises(UserError, match="model.dropout"):
        MultVAE(train, dropout=1.0)


# ------------------------------------------------------------------------------------ scoring and training


@pytest.mark.parametrize("name", ZOO)
def test_scores_cover_all_items_and_ranking_never_returns_training_items(name):
    train = random_train(20, 30, density=0.4)
    model = build(name, train)
    model.eval()
    scores = model.scorer()(torch.arange(20))
    assert scores.shape == (20, 30) and torch.isfinite(scores).all()
    topk = full_ranking_topk(model.scorer(), np.arange(20), train, k=10, batch_size=7)
    dense = train.toarray()
    returned = topk >= 0
    assert not dense[np.nonzero(returned)[0], topk[returned]].any()
    # every user gets min(10, its number of untrained items) items
    np.testing.assert_array_equal(returned.sum(1), np.minimum(10, 30 - dense.sum(1)))


def toy_fit(
    name: str, out: Path, max_epochs: int, resume_from: Path | None = None, method=None, precision: str = "32"
):
    train = random_train(30, 40, seed=2)
    valid = random_train(30, 40, seed=3)
    negatives = name in ("linear", "mf", "sgl", "alpharec")
    model = build(name, train, num_negatives=4) if negatives else build(name, train)
    cfg = TrainerConfig(
        max_epochs=max_epochs, patience=50, batch_size=64, lr=1e-2, progress=False, precision=precision
    )

    def evaluate(m):
        top = m.scorer()(torch.arange(30)).topk(5).indices.numpy()
        return {"recall@20": float(valid.toarray()[np.arange(30)[:, None], top].mean())}

    result = fit(
        model,
        method or ERM(),
        train,
        cfg,
        evaluate,
        seed=3,
        checkpoint_dir=out,
        resume_from=resume_from,
        fingerprint="toy",
    )
    return model, result


@pytest.mark.parametrize("name", ZOO)
def test_training_is_deterministic_and_resume_is_exact(tmp_path, name):
    model_a, result_a = toy_fit(name, tmp_path / "a", 4)
    _, result_b = toy_fit(name, tmp_path / "b", 4)
    assert result_a.history == result_b.history
    assert result_a.history[-1]["train/loss"] < result_a.history[0]["train/loss"]
    toy_fit(name, tmp_path / "c", 2)
    model_c, result_c = toy_fit(name, tmp_path / "c2", 4, resume_from=tmp_path / "c" / "last.ckpt")
    assert result_c.history == result_a.history
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_c.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", [*ZOO, "alpharec"])
def test_bf16_autocast_trains_every_model_in_float32_parameters(tmp_path, name):
    """trainer.precision=bf16: sparse graph products (LightGCN propagation, AlphaRec user means) stay float32
    while dense layers run in bf16; parameters stay float32, losses finite and falling."""
    model, result = toy_fit(name, tmp_path, 3, precision="bf16")
    losses = [row["train/loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_user_batches_cover_every_user_once_per_epoch_and_anneal_per_step(tmp_path):
    dense = random_train(30, 40, seed=2).toarray()
    dense[5] = 0  # a user without training items is not a sample
    train = sp.csr_matrix(dense)
    seen: list[torch.Tensor] = []
    steps: list[int] = []

    class RecordingVAE(MultVAE):
        def on_train_step(self, global_step: int) -> None:
            steps.append(global_step)
            super().on_train_step(global_step)

        def sample_losses(self, batch):
            assert set(batch) == {"users"}
            seen.append(batch["users"])
            return super().sample_losses(batch)

    torch.manual_seed(0)
    model = RecordingVAE(train, hidden_dim=8, latent_dim=2, users_per_batch=8, total_anneal_steps=100)
    cfg = TrainerConfig(max_epochs=2, patience=5, batch_size=4096, lr=1e-3, progress=False)
    fit(model, ERM(), train, cfg, lambda m: {"recall@20": 0.0}, seed=0)
    assert steps == list(range(8))  # 29 users / 8 per batch = 4 steps per epoch
    first_epoch = torch.cat(seen[:4])
    assert sorted(first_epoch.tolist()) == [u for u in range(30) if u != 5]
    assert model.beta == pytest.approx(0.07)  # beta of the last step: min(0.2, 7 / 100)


def test_methods_that_need_item_groups_are_refused_for_user_batches():
    class NeedsGroups(ERM):
        needs_groups = True

    train = random_train()
    groups = torch.ones(N_ITEMS, 1)
    cfg = TrainerConfig(max_epochs=1, progress=False)
    with pytest.raises(UserError, match="MultVAE trains on whole users"):
        fit(build("multvae", train), NeedsGroups(), train, cfg, lambda m: {}, seed=0, item_groups=groups)


def test_model_seed_is_a_function_of_seed_and_epoch():
    assert model_seed(0, 3) == model_seed(0, 3)
    assert len({model_seed(0, 0), model_seed(0, 1), model_seed(1, 0)}) == 3


# ------------------------------------------------------------------------------------------------ CLI

FAIRBENCH = str(Path(sys.executable).parent / "fairbench")
ALL_MODELS = "mf,multvae,lightgcn,sgl,xsimgcl,linear,alpharec"


def fairbench(*args: str, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    full_env = os.environ | {"FAIRBENCH_OUTPUTS": str(out), "HYDRA_FULL_ERROR": "0"} | (env or {})
    return subprocess.run(
        [FAIRBENCH, *args], env=full_env, capture_output=True, text=True, timeout=900, cwd=out
    )


@pytest.mark.slow
def test_every_model_trains_through_the_cli_in_one_sweep(tmp_path):
    result = fairbench(
        "train",
        "-m",
        f"model={ALL_MODELS}",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "logger=none",
        out=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = tmp_path.glob("multiruns/*/*/summary.csv")
    summary = pd.read_csv(summary_path)
    assert list(summary["status"]) == ["completed"] * 7
    models = [dict(token.split("=", 1) for token in o.split())["model"] for o in summary["overrides"]]
    assert models == ALL_MODELS.split(",")
    assert summary["test/recall@20"].between(0, 1).all() and summary["test/pop/cv@20"].notna().all()


@pytest.mark.slow
def test_embed_command_builds_the_vector_cache_that_train_reads(tmp_path):
    real_cache = Path(os.environ.get("FAIRBENCH_CACHE", Path.home() / ".cache" / "fairbench"))
    cache = tmp_path / "cache"
    for sub in ("raw", "downloads"):  # the dataset without any vectors
        if (real_cache / sub).exists():
            shutil.copytree(real_cache / sub, cache / sub)
    env = {"FAIRBENCH_CACHE": str(cache)}
    built = fairbench("embed", "backbone=minilm", "dataset=ml100k", "device=cpu", out=tmp_path, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "1433 items x 384 dims" in built.stdout and "built on cpu" in built.stdout
    (vectors,) = (cache / "vectors").glob("*.npy")
    assert np.load(vectors).shape == (1433, 384)
    assert json.loads(vectors.with_suffix(".json").read_text())["name"] == "minilm"
    again = fairbench("embed", out=tmp_path, env=env)
    assert again.returncode == 0 and "cache hit" in again.stdout
    missing = fairbench("embed", "backbone=nonexistent", out=tmp_path, env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr

"""BiFair's group weighting (issue 14): the entropy vector's sign, Eq. 10 as a linear program, gradient
normalisation, the weight floor, and the weights logged while training."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

from fairbench.errors import UserError
from fairbench.methods import solvers
from fairbench.methods.bifair import (
    BiFair,
    BiFairSeparate,
    entropy_vector_coefficients,
    fair_group_weights,
    normalized_gram,
)
from fairbench.methods.grouping import entropy_coefficients, flat_gradient, group_losses
from fairbench.models.alpharec import AlphaRec
from fairbench.training import TrainerConfig, fit
from tests.helpers.toy import tiny_alpharec

SIGNS = ["paper", "true_gradient"]


def simplex_grid(n: int, steps: int) -> np.ndarray:
    """All points of the simplex in R^n with coordinates k / steps."""
    points = [c for c in itertools.product(range(steps + 1), repeat=n - 1) if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in points], dtype=float) / steps


def random_problem(rng: np.random.Generator, n: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Group losses [n] and correlated group gradients [n, dim] (a shared part plus noise)."""
    base = rng.normal(size=dim)
    grads = base + rng.normal(size=(n, dim)) * rng.uniform(0.3, 1.5)
    return torch.tensor(rng.uniform(1, 6, size=n)), torch.tensor(grads)


def entropy_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """theta, losses l(theta) [4] (with graph), their Jacobian [4, 5] and the autograd gradient of
    H_s(l) = -sum_n p_n log p_n, p = softmax(l)."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, 5, dtype=torch.float64)
    losses = torch.nn.functional.softplus(a @ torch.tanh(theta)) * 3
    p = torch.softmax(losses, 0)
    (grad_h,) = torch.autograd.grad(-(p * p.log()).sum(), theta, retain_graph=True)
    jacobian = torch.stack([torch.autograd.grad(losses[n], theta, retain_graph=True)[0] for n in range(4)])
    return theta, losses, jacobian, grad_h


# ------------------------------------------------------------------------------------ entropy sign


def test_true_gradient_sign_is_minus_the_autograd_entropy_gradient():
    """``true_gradient`` puts -grad H_s into Algorithm 2's set: sum_n e_n grad l_n = -grad H_s."""
    _, losses, jacobian, grad_h = entropy_problem()
    e = entropy_vector_coefficients(losses.detach(), "true_gradient")
    torch.testing.assert_close(e @ jacobian, -grad_h)
    assert float(e.sum()) == pytest.approx(0.0, abs=1e-12)


def test_the_papers_printed_vector_is_minus_the_true_gradient():
    """App. A / Eq. 12 print grad H_s = sum_n grad l_n [p_n log p_n - p_n sum_i p_i log p_i]: that is
    -(true grad H_s); Algorithm 2's -grad H_s with the printed sign is therefore the true +grad H_s."""
    _, losses, jacobian, grad_h = entropy_problem()
    p = torch.softmax(losses.detach(), 0)
    bracket = p * p.log() - p * (p * p.log()).sum()  # the bracket of Eq. 10 and Eq. 12, as printed
    printed = bracket @ jacobian
    torch.testing.assert_close(printed, -grad_h)
    torch.testing.assert_close(entropy_coefficients(losses.detach()), bracket)
    e = entropy_vector_coefficients(losses.detach(), "paper")
    torch.testing.assert_close(e @ jacobian, -printed)
    torch.testing.assert_close(e @ jacobian, grad_h)
    with pytest.raises(UserError, match="entropy_sign"):
        entropy_vector_coefficients(losses.detach(), "minus")  # type: ignore[arg-type]


def test_the_issues_two_group_example_follows_the_sign():
    """Two correlated gradients, head loss 3.2 < tail loss 5.4: the paper's sign weights the tail (as Eq. 10
    does), the true-gradient sign the head."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=50)
    grads = torch.tensor(np.stack([base + 0.5 * rng.normal(size=50), base + 0.5 * rng.normal(size=50)]))
    losses = torch.tensor([3.2, 5.4], dtype=torch.float64)
    paper = fair_group_weights(losses, grads, 100)  # the default sign
    true = fair_group_weights(losses, grads, 100, entropy_sign="true_gradient")
    lp = fair_group_weights(losses, grads, 100, weighting="eq10_lp")
    assert paper[1] > 0.95 and true[0] > 0.95
    torch.testing.assert_close(lp, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------ Frank-Wolfe


@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("n", [2, 3])
def test_frank_wolfe_finds_the_min_norm_point_of_the_set_with_either_sign(sign, n):
    """Algorithm 2's set {g_1..g_N, sum_n e_n g_n}: Frank-Wolfe's min-norm point against a brute-force grid
    over the simplex of its N + 1 vectors."""
    rng = np.random.default_rng(n)
    for _ in range(2):
        losses, grads = random_problem(rng, n)
        e = entropy_vector_coefficients(losses, sign)
        vectors = torch.cat([grads, (e @ grads)[None]])
        gram = (vectors @ vectors.T).numpy()
        grid = simplex_grid(n + 1, 60 if n == 2 else 30)
        best = grid[np.argmin(np.einsum("ij,jk,ik->i", grid, gram, grid))]
        w = solvers.frank_wolfe_weights(gram, 3000)
        value, best_value = float(w @ gram @ w), float(best @ gram @ best)
        assert value <= best_value * (1 + 5e-3) + 1e-9  # FW converges as O(1 / T)
        exact = solvers.min_norm_weights(gram, 5000)
        assert value == pytest.approx(float(exact @ gram @ exact), rel=5e-3, abs=1e-9)
        # the min-norm point itself is unique (w need not be: the entropy vector is in the groups' span)
        point, best_point = w @ vectors.numpy(), best @ vectors.numpy()
        assert np.linalg.norm(point - best_point) <= 0.1 * max(np.linalg.norm(best_point), 1.0)
        # and fair_group_weights' min_norm direction is that point
        min_norm = fair_group_weights(losses, grads, 3000, direction="min_norm", entropy_sign=sign)
        np.testing.assert_allclose((min_norm @ grads).numpy(), point, atol=1e-6)


@pytest.mark.parametrize("sign", SIGNS)
def test_two_group_weights_rank_the_groups_as_eq_10s_objective(sign):
    """On random two-group sets, Algorithm 2's group weights never rank the groups against Eq. 10's
    objective w^T K (-e) (per group: g_n^T sum_m (-e_m) g_m); the only exception is the tie when FW puts all
    weight on the entropy vector (uniform weights). With the paper's sign that objective always ranks the
    higher-loss group first (g_hi^T (g_hi - g_lo) > g_lo^T (g_hi - g_lo)); with the other sign the lower."""
    rng = np.random.default_rng(7)
    ties = 0
    for _ in range(100):
        losses, grads = random_problem(rng, 2)
        weights = fair_group_weights(losses, grads, 200, entropy_sign=sign).numpy()
        objective = (grads @ grads.T).numpy() @ -entropy_vector_coefficients(losses, sign).numpy()
        favoured = int(torch.argmax(losses)) if sign == "paper" else int(torch.argmin(losses))
        assert int(np.argmax(objective)) == favoured
        if abs(weights[0] - weights[1]) < 1e-12:
            ties += 1
            continue
        assert int(np.argmax(weights)) == favoured
    assert ties < 20


# ------------------------------------------------------------------------------------ Eq. 10 LP


@pytest.mark.parametrize("sign", SIGNS)
@pytest.mark.parametrize("n", [2, 3])
def test_eq10_lp_matches_a_brute_force_grid(sign, n):
    """max_w w^T K (-e) s.t. K w >= 0, w in the simplex: the LP's optimum against a grid over the simplex."""
    rng = np.random.default_rng(10 + n)
    grid = simplex_grid(n, 1000 if n == 2 else 150)
    for trial in range(6):
        losses, grads = random_problem(rng, n)
        if trial % 2:  # conflicting gradients: the descent constraints bind
            grads[0] = -0.8 * grads[1] + 0.3 * torch.tensor(rng.normal(size=grads.shape[1]))
        gram = (grads @ grads.T).numpy()
        target = -entropy_vector_coefficients(losses, sign).numpy()
        w, solved = solvers.eq10_lp_weights(gram, target)
        assert solved and w.min() >= 0 and w.sum() == pytest.approx(1.0)
        assert (gram @ w).min() >= -1e-7 * np.abs(gram).max()  # d(w)^T g_n >= 0
        feasible = grid[(grid @ gram).min(axis=1) >= 0]
        assert len(feasible)
        best = float((feasible @ gram @ target).max())
        value = float(w @ gram @ target)
        assert value >= best - 1e-9
        assert value <= best + 0.02 * np.abs(gram @ target).max()  # the grid's resolution
        weights = fair_group_weights(losses, grads, 10, entropy_sign=sign, weighting="eq10_lp")
        np.testing.assert_allclose(weights.numpy(), w, atol=1e-9)


def test_eq10_lp_falls_back_to_the_min_norm_point_when_the_solver_fails(monkeypatch):
    gram = np.array([[2.0, 0.5], [0.5, 1.0]])

    class Failed:
        status, x = 2, None

    monkeypatch.setattr(solvers, "linprog", lambda *args, **kwargs: Failed())
    w, solved = solvers.eq10_lp_weights(gram, np.array([1.0, -1.0]))
    assert not solved
    np.testing.assert_allclose(w, solvers.min_norm_weights(gram / 2.0))
    assert (gram @ w).min() >= 0  # a feasible point of Eq. 10


# ------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("kind", ["none", "l2", "loss", "loss+"])
def test_gradient_normalizers_by_hand(kind):
    grads = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 2.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)
    norms = torch.tensor([5.0, 1.0, 8.0**0.5], dtype=torch.float64)
    by_hand = {"none": torch.ones(3), "l2": norms, "loss": losses, "loss+": losses * norms}[kind]
    normalized = grads / by_hand.double()[:, None]
    torch.testing.assert_close(normalized_gram(grads, losses, kind), normalized @ normalized.T)
    # the weights are those of Algorithm 2 on the normalised gradients (entropy vector built from them)
    for sign in SIGNS:
        torch.testing.assert_close(
            fair_group_weights(losses, grads, 100, entropy_sign=sign, normalization=kind),
            fair_group_weights(losses, normalized, 100, entropy_sign=sign),
        )
    with pytest.raises(UserError, match="gradient_normalization"):
        normalized_gram(grads, losses, "l1")  # type: ignore[arg-type]


def test_weight_floor_keeps_every_group_above_it():
    rng = np.random.default_rng(3)
    losses, grads = random_problem(rng, 3)
    raw = fair_group_weights(losses, grads, 100)
    floored = fair_group_weights(losses, grads, 100, floor=0.1)
    torch.testing.assert_close(floored, 0.7 * raw + 0.1)
    assert float(floored.min()) >= 0.1 - 1e-12 and float(floored.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(  # a floor above 1 / N gives the uniform weights
        fair_group_weights(losses, grads, 100, floor=0.9), torch.full((3,), 1 / 3, dtype=torch.float64)
    )


def test_invalid_weighting_options_are_user_errors():
    with pytest.raises(UserError, match="entropy_sign"):
        BiFair(entropy_sign="negative")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="weighting"):
        BiFairSeparate(weighting="lp")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="gradient_normalization"):
        BiFair(gradient_normalization="l1")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="weight_floor"):
        BiFair(weight_floor=1.0)
    with pytest.raises(UserError, match="min_norm"):
        BiFair(update_direction="min_norm", weighting="eq10_lp")


# ------------------------------------------------------------------------------------ in the method


@pytest.mark.parametrize("space", ["parameters", "representation"])
@pytest.mark.parametrize("cls", [BiFair, BiFairSeparate])
@pytest.mark.parametrize("sign", SIGNS)
def test_both_methods_and_gradient_spaces_use_the_configured_options(sign, cls, space):
    model, batch = tiny_alpharec()
    options = {"entropy_sign": sign, "normalization": "l2", "floor": 0.05}
    method = cls(gradient_space=space, entropy_sign=sign, gradient_normalization="l2", weight_floor=0.05)
    method.theta, method.z = list(model.projector.parameters()), [model.item_text_vectors]
    inner = method.inner_step(model, batch)
    if space == "parameters":
        values = group_losses(model.sample_losses(batch), batch["groups"]).values
        grads = torch.stack([flat_gradient(v, method.theta) for v in values])
    else:
        encoding = model.encode()
        values = group_losses(model.losses_from_encoding(encoding, batch), batch["groups"]).values
        grads = torch.stack([flat_gradient(v, [encoding]) for v in values])
    expected = fair_group_weights(values.detach(), grads, 100, **options)
    torch.testing.assert_close(inner.weights, expected)
    other = "true_gradient" if sign == "paper" else "paper"
    assert not torch.allclose(
        inner.weights, fair_group_weights(values.detach(), grads, 100, entropy_sign=other)
    )


def skewed_data() -> tuple[sp.csr_matrix, np.ndarray, torch.Tensor]:
    """40 users, 30 items; the 3 head items are in most users' histories, the 27 tail items in few, so the
    head group's InfoNCE loss is the lower one."""
    rng = np.random.default_rng(0)
    dense = np.zeros((40, 30), dtype=np.float32)
    dense[:, :3] = rng.random((40, 3)) < 0.9
    dense[:, 3:] = rng.random((40, 27)) < 0.08
    dense[np.arange(40), 3 + np.arange(40) % 27] = 1
    membership = torch.zeros(30, 2)
    membership[:3, 0] = 1
    membership[3:, 1] = 1
    return sp.csr_matrix(dense), rng.normal(size=(30, 10)).astype(np.float32), membership


def train_skewed(method: BiFair, epochs: int = 3) -> list[dict]:
    train, vectors, membership = skewed_data()
    torch.manual_seed(0)
    model = AlphaRec(train, vectors, hidden_dim=16, embed_dim=8, num_negatives=8)
    cfg = TrainerConfig(max_epochs=epochs, batch_size=64, lr=1e-2, progress=False, checkpoint=False)
    fit(model, method, train, cfg, lambda m: {"recall@20": 0.0}, seed=0, item_groups=membership)
    return method.weight_log


def test_logged_group_weights_favour_the_higher_loss_group_with_the_papers_sign(caplog):
    """Acceptance of issue 14: ``method=bifair`` (default options) weights the higher-loss (tail) group up in
    the first epochs; the old sign weights the lower-loss head group up."""
    with caplog.at_level(logging.INFO, logger="fairbench.methods.bifair"):
        paper = train_skewed(BiFair())
    assert len(paper) == 3 and "bifair epoch 0: mean group weights" in caplog.text
    for epoch in paper:
        head_loss, tail_loss = epoch["losses"]
        assert head_loss < tail_loss  # the premise: the head group's loss is the lower one
        assert sum(epoch["weights"]) == pytest.approx(1.0)
    assert paper[0]["weights"][1] > 0.6 and paper[1]["weights"][1] > 0.6
    true = train_skewed(BiFair(entropy_sign="true_gradient"))
    assert true[0]["weights"][0] > 0.6
    separate = train_skewed(BiFairSeparate(), epochs=2)
    assert separate[0]["weights"][1] > 0.6


def test_weights_script_collects_the_logged_epochs(tmp_path):
    """scripts/bifair_weights.py: the per-epoch lines of each job's train.log -> CSV and plot."""
    sweep = tmp_path / "sweep"
    lines = {
        ("pop", 0): "bifair epoch 0: mean group weights [0.2, 0.8], mean group losses [4.1, 5.2]\n"
        "bifair epoch 1: mean group weights [0.3, 0.7], mean group losses [4.0, 5.0]\n",
        (
            "genre",
            1,
        ): "bifair epoch 0: mean group weights [0.5, 0.3, 0.2], mean group losses [5.0, 4.0, None]\n",
    }
    for job, ((groups, seed), text) in enumerate(lines.items()):
        hydra_dir = sweep / str(job) / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(
            yaml.safe_dump([f"seed={seed}", "method=bifair", "method.weighting=eq10_lp"])
        )
        method = {"_target_": "x", "groups": "popularity" if groups == "pop" else "genre"}
        (hydra_dir / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "method": method}))
        (sweep / str(job) / "train.log").write_text("[x][fairbench.methods.bifair][INFO] - " + text)
    out = tmp_path / "weights.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "bifair_weights.py"
    subprocess.run([sys.executable, str(script), "--sweep-dir", str(sweep), "--out", str(out)], check=True)
    frame = pd.read_csv(out.with_suffix(".csv"))
    assert out.exists() and len(frame) == 2 * 2 + 3
    assert set(frame["method"]) == {"bifair [weighting=eq10_lp]"}
    tail = frame[(frame["groups"] == "pop") & (frame["group"] == 1)]
    assert tail["weight"].tolist() == [0.8, 0.7] and tail["loss"].tolist() == [5.2, 5.0]
    assert frame[frame["groups"] == "genre"]["loss"].isna().sum() == 1

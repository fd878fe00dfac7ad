"""Fairness-method numerics against closed forms, brute force and autograd."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fairbench.methods.bifair import BiFair, fair_group_weights, finite_difference_hvp
from fairbench.methods.drorec import DRORec
from fairbench.methods.groupdro import GroupDRO
from fairbench.methods.grouping import (
    entropy_coefficients,
    flat_gradient,
    group_losses,
    group_weighted_sample_weights,
    parameter_vector,
)
from fairbench.methods.itfr import collaborative_update, cosine_relation
from fairbench.methods.multifr import MultiFR, gradient_normalizers
from fairbench.methods.popdro import PopDRO, StageClock, predicted_popularity, stage_popularity
from fairbench.methods.reweight import inverse_frequency_weights
from fairbench.methods.solvers import frank_wolfe_weights, line_search_step, min_norm_2, min_norm_weights
from tests.helpers.toy import tiny_alpharec

# ------------------------------------------------------------------------------------------------ solvers


def brute_force_min_norm(gram: np.ndarray) -> float:
    """min_w w^T K w over the simplex by enumerating supports (KKT of the equality-constrained QP)."""
    n, best = len(gram), np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            k = gram[np.ix_(support, support)]
            kkt = np.block([[2 * k, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            rhs = np.r_[np.zeros(size), 1.0]
            solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if (solution >= -1e-12).all() and abs(solution.sum() - 1) < 1e-9:
                best = min(best, float(solution @ k @ solution))
    return best


def random_gram(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(n, dim)) + rng.normal(size=dim)  # a shared component: interior optima
    return vectors @ vectors.T


def test_two_point_closed_form_and_the_sources_vertex_clipping():
    x1, x2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    c, cost = min_norm_2(x1 @ x1, x1 @ x2, x2 @ x2)
    assert c == pytest.approx(0.8) and cost == pytest.approx(np.linalg.norm(0.8 * x1 + 0.2 * x2) ** 2)
    assert min_norm_2(1.0, 1.5, 4.0) == (0.999, 1.0)  # x1 is the min-norm point: clipped at 0.999
    assert min_norm_2(4.0, 1.5, 1.0) == (0.001, 1.0)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_min_norm_solver_matches_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        gram = random_gram(rng, n, dim=6)
        w = min_norm_weights(gram)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
        best = brute_force_min_norm(gram)
        # at a vertex the source's 0.999 / 0.001 clipping costs at most ~0.002 max_i ||g_i||^2
        assert best - 1e-9 <= w @ gram @ w <= best + 2e-3 * gram.diagonal().max()
        if w.min() > 0.01:  # an interior solution is exact
            assert w @ gram @ w == pytest.approx(best, rel=1e-6)


def test_min_norm_solver_finds_a_vertex_and_zero():
    # one short vector inside the others' cone: the min-norm point is (almost) that vertex
    vectors = np.array([[0.1, 0.0], [1.0, 1.0], [1.0, -1.0]])
    w = min_norm_weights(vectors @ vectors.T)
    assert w @ (vectors @ vectors.T) @ w == pytest.approx(0.01, rel=1e-2)
    # opposite gradients: 0 is in the hull
    vectors = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    w = min_norm_weights(vectors @ vectors.T)
    assert np.linalg.norm(w @ vectors) < 1e-2


def test_frank_wolfe_line_search_is_exact():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 200001)
    for _ in range(20):
        gram = random_gram(rng, 4, dim=3)
        w = rng.dirichlet(np.ones(4))
        t = int(rng.integers(4))
        gamma = line_search_step(gram, w, t)
        e = np.eye(4)[t]
        points = (1 - grid)[:, None] * w + grid[:, None] * e
        values = np.einsum("ki,ij,kj->k", points, gram, points)
        mix = (1 - gamma) * w + gamma * e
        assert mix @ gram @ mix == pytest.approx(values.min(), rel=1e-9, abs=1e-12)
        assert abs(gamma - grid[values.argmin()]) < 1e-4


def test_frank_wolfe_converges_to_the_min_norm_point():
    rng = np.random.default_rng(1)
    for _ in range(10):
        gram = random_gram(rng, 4, dim=8)
        w = frank_wolfe_weights(gram, iterations=2000)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
        assert w @ gram @ w == pytest.approx(brute_force_min_norm(gram), rel=1e-3)
    assert np.allclose(frank_wolfe_weights(np.eye(3), iterations=0), 1 / 3)


# ------------------------------------------------------------------------------------- group losses


def test_group_losses_are_membership_weighted_means_with_absent_groups():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    membership = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    grouped = group_losses(losses, membership)
    torch.testing.assert_close(grouped.values, torch.tensor([1.5, 2.5, 0.0, 1.0]))
    torch.testing.assert_close(grouped.counts, torch.tensor([2.0, 2.0, 0.0, 1.0]))
    assert grouped.present.tolist() == [True, True, False, True]
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    weights = group_weighted_sample_weights(q, membership, grouped.counts)
    assert float((weights * losses).mean()) == pytest.approx(float((q * grouped.values).sum()))
    assert float(weights[3]) == 0.0  # the sample in no group enters no group loss


def test_inverse_frequency_weights_by_hand():
    counts = torch.tensor([10.0, 30.0, 60.0, 0.0])  # item training counts
    membership = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    weights = inverse_frequency_weights(counts, membership)
    # n = (10, 90, 0): group 2 has no interactions; M = 100, G' = 2
    torch.testing.assert_close(weights, torch.tensor([100 / (2 * 10), 100 / (2 * 90), 0.0]))


# ------------------------------------------------------------------------------ group DRO updates


class _Context:
    def __init__(self, membership: torch.Tensor, counts: torch.Tensor) -> None:
        self.item_groups, self.item_train_counts = membership, counts


def test_groupdro_weight_update_by_hand():
    method = GroupDRO(step_size=0.5, adjustment=2.0)
    method.setup(None, _Context(torch.eye(2), torch.tensor([4.0, 16.0])))  # type: ignore[arg-type]
    q = method.update_weights(torch.tensor([1.0, 3.0]), torch.tensor([True, True]))
    raw = 0.5 * np.exp(0.5 * np.array([1.0 + 2 / 2, 3.0 + 2 / 4]))
    np.testing.assert_allclose(q.numpy(), raw / raw.sum(), rtol=1e-6)
    # an absent group (loss 0, no adjustment) is only renormalised
    q2 = method.update_weights(torch.tensor([2.0, 0.0]), torch.tensor([True, False]))
    raw2 = q.numpy() * np.exp(0.5 * np.array([2.0 + 1.0, 0.0]))
    np.testing.assert_allclose(q2.numpy(), raw2 / raw2.sum(), rtol=1e-6)


def test_drorec_streaming_and_weight_update_by_hand():
    method = DRORec(step_size=0.1, stream_rate=0.25, loss_init=None)
    method.setup(None, _Context(torch.eye(3), torch.ones(3)))  # type: ignore[arg-type]
    w1 = method.update_weights(torch.tensor([2.0, 4.0, 0.0]), torch.tensor([True, True, False]))
    stream = np.array([2.0, 4.0, 0.0])  # first observation initialises; group 2 not observed yet
    expected = np.exp(np.log(np.full(3, 1 / 3)) + 0.1 * stream)
    np.testing.assert_allclose(w1.numpy(), expected / expected.sum(), rtol=1e-6)
    w2 = method.update_weights(torch.tensor([6.0, 0.0, 1.0]), torch.tensor([True, False, True]))
    stream = np.array([0.75 * 2.0 + 0.25 * 6.0, 4.0, 1.0])  # absent group 1 keeps its streaming loss
    np.testing.assert_allclose(method.stream_loss.numpy(), stream, rtol=1e-6)
    expected = np.exp(np.log(w1.numpy()) + 0.1 * stream)
    np.testing.assert_allclose(w2.numpy(), expected / expected.sum(), rtol=1e-6)
    fixed = DRORec(stream_rate=0.5, loss_init=1.0)
    fixed.setup(None, _Context(torch.eye(2), torch.ones(2)))  # type: ignore[arg-type]
    fixed.update_weights(torch.tensor([3.0, 0.0]), torch.tensor([True, False]))
    np.testing.assert_allclose(fixed.stream_loss.numpy(), [2.0, 1.0])


# ----------------------------------------------------------------------------------------- ITFR


def test_itfr_collaborative_update_by_hand():
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    losses = torch.tensor([1.0, 4.0], dtype=torch.float64)
    relation = torch.tensor([[1.0, 0.5], [-0.25, 1.0]], dtype=torch.float64)
    previous = torch.tensor([9.0, 16.0], dtype=torch.float64)
    new = collaborative_update(weights, losses, relation, previous, eta=0.1, gamma=2.0)
    m = np.array([[1.0, 1 * 4], [2 * 3, 4.0]]) * relation.numpy()  # sqrt(l_i) sqrt(Lbar_j), diag l_i
    wts = np.array([1.0, 16.0]) / 17
    x = 0.1 * m @ wts
    raw = 0.5 * np.exp(x - x.max())
    np.testing.assert_allclose(new.numpy(), np.maximum(raw / raw.sum(), 1e-5))
    first_epoch = collaborative_update(weights, losses, torch.eye(2, dtype=torch.float64), None, 0.1, 2.0)
    x = 0.1 * np.diag([1.0, 4.0]) @ wts
    raw = np.exp(x - x.max())
    np.testing.assert_allclose(first_epoch.numpy(), raw / raw.sum())


def test_itfr_cosine_relation():
    current = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    previous = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    relation = cosine_relation(current, previous)
    torch.testing.assert_close(relation, torch.tensor([[1.0, 1.0], [2**-0.5, 1.0]]))


# ---------------------------------------------------------------------------------------- MultiFR


def test_multifr_normalizers_and_partition_shortcut():
    grads = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    losses = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(gradient_normalizers(grads, losses, "loss+"), torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(gradient_normalizers(grads, losses, "l2"), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(gradient_normalizers(grads, losses, "none"), torch.ones(2))

    torch.manual_seed(0)
    theta = torch.randn(3, requires_grad=True)
    x = torch.randn(6, 3)
    membership = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=torch.float32)
    method = MultiFR()
    values, grads = method.objective_gradients(torch.tanh(x @ theta) ** 2, membership, [theta])
    rec = torch.autograd.grad((torch.tanh(x @ theta) ** 2).mean(), theta)[0]
    torch.testing.assert_close(grads[0], rec)
    assert values.shape == (3,) and grads.shape == (3, 3)


# ---------------------------------------------------------------------------------------- BiFair


def test_entropy_coefficients_give_the_entropy_gradient():
    torch.manual_seed(0)
    theta = torch.randn(5, requires_grad=True)
    a = torch.randn(4, 5)
    losses = torch.nn.functional.softplus(a @ torch.tanh(theta)) * 3
    p = torch.softmax(losses, 0)
    entropy = -(p * p.log()).sum()
    (grad_h,) = torch.autograd.grad(entropy, theta, retain_graph=True)
    jacobian = torch.stack([torch.autograd.grad(losses[n], theta, retain_graph=True)[0] for n in range(4)])
    c = entropy_coefficients(losses.detach())
    torch.testing.assert_close(-(c @ jacobian), grad_h)  # -grad H_s = sum_n c_n grad l_n
    assert float(c.sum()) == pytest.approx(0.0, abs=1e-6)


def test_fair_group_weights_are_the_frank_wolfe_weights_of_the_groups_eq_11():
    grads = torch.tensor([[1.0, 0.2, 0.0], [0.3, 1.0, 0.1]], dtype=torch.float64)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64)
    c = entropy_coefficients(losses)
    vectors = torch.cat([grads, (c @ grads)[None]])
    w = torch.as_tensor(frank_wolfe_weights(vectors @ vectors.T, 50))
    # Eq. 11: d = sum over the groups only, w* renormalised to the simplex over the groups (Eq. 9)
    weights = fair_group_weights(losses, grads, iterations=50, entropy_sign="true_gradient")
    torch.testing.assert_close(weights, w[:2] / w[:2].sum())
    assert (weights >= 0).all() and float(weights.sum()) == pytest.approx(1.0)
    # min_norm: the min-norm point of the whole set, entropy vector included
    min_norm = fair_group_weights(
        losses, grads, iterations=50, direction="min_norm", entropy_sign="true_gradient"
    )
    torch.testing.assert_close(min_norm @ grads, w @ vectors)
    torch.testing.assert_close(
        fair_group_weights(losses[:1], grads[:1], 50), torch.ones(1, dtype=torch.float64)
    )


def test_fair_group_weights_fall_back_to_uniform_when_only_the_entropy_vector_is_chosen():
    """Equal losses make -grad H_s = 0, the min-norm point: FW moves all weight onto it."""
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([0.7, 0.7], dtype=torch.float64)
    torch.testing.assert_close(
        fair_group_weights(losses, grads, 200), torch.full((2,), 0.5, dtype=torch.float64)
    )


def hvp_problem():
    """theta, Z, L = 0.3 l_0 + 0.7 l_1 (tiny AlphaRec), a direction v, the exact grad^2_{Z,theta} L v."""
    model, batch = tiny_alpharec()
    theta, z = list(model.projector.parameters()), [model.item_text_vectors]
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (weights * group_losses(model.sample_losses(batch), batch["groups"]).values).sum()

    n_theta = sum(p.numel() for p in theta)
    vector = torch.randn(n_theta, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad_theta = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(), theta, create_graph=True)])
    exact = flat_gradient(grad_theta @ vector, z, retain_graph=False)
    return theta, z, loss, vector, exact


def test_finite_difference_hvp_matches_double_backward():
    theta, z, loss, vector, exact = hvp_problem()
    approx = finite_difference_hvp(loss, theta, z, vector, epsilon=1e-4 / float(vector.norm()))
    torch.testing.assert_close(approx, exact, rtol=1e-5, atol=1e-8)


def test_forward_difference_hvp_matches_double_backward():
    theta, z, loss, vector, exact = hvp_problem()
    at_theta = flat_gradient(loss(), z, retain_graph=False)
    before = parameter_vector(theta)
    errors = []
    for radius in (1e-5, 1e-6):  # one-sided: the error shrinks linearly with eps
        approx = finite_difference_hvp(
            loss, theta, z, vector, epsilon=radius / float(vector.norm()), z_grad_at_theta=at_theta
        )
        errors.append(float((approx - exact).abs().max()))
    assert errors[1] < errors[0] / 5 and errors[1] < 1e-5 * float(exact.abs().max())
    assert torch.equal(parameter_vector(theta), before)  # theta restored


@pytest.mark.parametrize("space", ["parameters", "representation"])
def test_bifair_inner_step_is_the_weighted_sum_of_group_gradients(space):
    """d_theta = sum_n wt_n grad_theta l_n and z_grad = grad_Z sum_n wt_n l_n in both gradient spaces; the
    representation space takes the Gram matrix of grad_R l_n, R the projector's output."""
    model, batch = tiny_alpharec()
    method = BiFair(gradient_space=space)
    method.theta, method.z = list(model.projector.parameters()), [model.item_text_vectors]
    inner = method.inner_step(model, batch, with_z_grad=True)
    values = group_losses(model.sample_losses(batch), batch["groups"]).values
    theta_grads = torch.stack([flat_gradient(v, method.theta) for v in values])
    torch.testing.assert_close(inner.d_theta, inner.weights @ theta_grads)
    z_grads = torch.stack([flat_gradient(v, method.z) for v in values])
    torch.testing.assert_close(inner.z_grad, inner.weights @ z_grads)
    encoding = model.encode()
    space_grads = (
        theta_grads
        if space == "parameters"
        else torch.stack(
            [
                flat_gradient(v, [encoding])
                for v in group_losses(model.losses_from_encoding(encoding, batch), batch["groups"]).values
            ]
        )
    )
    torch.testing.assert_close(inner.weights, fair_group_weights(values.detach(), space_grads, 100))
    assert torch.allclose(inner.losses, model.sample_losses(batch).detach())


def test_bifair_outer_direction_is_the_gradient_of_the_unrolled_loss():
    """d_Z = grad_Z L(theta - xi grad_theta L(theta, Z), Z), the one-step unrolled objective (Eqs. 5-7)."""
    model, batch = tiny_alpharec()
    method = BiFair(xi=0.3, fd_epsilon=1e-4)
    method.theta, method.z, method.xi = list(model.projector.parameters()), [model.item_text_vectors], 0.3
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    present = torch.tensor([0, 1])
    loss_fn = method.weighted_loss(model, batch, present, weights)
    d_theta = flat_gradient(loss_fn(), method.theta, retain_graph=False)
    direction = method.outer_direction(loss_fn, d_theta)

    names = [f"model.{n}" for n, _ in model.named_parameters()]
    params = dict(
        zip(names, [p.detach().clone().requires_grad_(True) for p in model.parameters()], strict=True)
    )

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self) -> torch.Tensor:
            values = group_losses(self.model.sample_losses(batch), batch["groups"]).values
            return (weights * values).sum()

    wrapper = Wrapper()
    theta_names = [n for n in names if "projector" in n]
    inner = torch.func.functional_call(wrapper, params, ())
    grads = torch.autograd.grad(inner, [params[n] for n in theta_names], create_graph=True)
    unrolled = dict(params) | {n: params[n] - 0.3 * g for n, g in zip(theta_names, grads, strict=True)}
    (expected,) = torch.autograd.grad(
        torch.func.functional_call(wrapper, unrolled, ()), [params["model.item_text_vectors"]]
    )
    torch.testing.assert_close(direction, expected.reshape(-1), rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------- PopDRO


def test_stage_clock_and_stage_popularity():
    clock = StageClock(torch.tensor([0.0, 10.0, 25.0, 40.0]), n_stages=4)  # width ceil(40 / 4) = 10
    assert clock(torch.tensor([0.0, 9.9, 10.0, 25.0, 40.0])).tolist() == [0, 0, 1, 2, 3]
    shares = stage_popularity(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 1]), n_items=3, n_stages=2)
    torch.testing.assert_close(shares, torch.tensor([[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]))


def test_popularity_predictor_matches_pdro_padded_formula():
    """PDRO ``PopPredictor``: pad two backward-extrapolated stages, then a (c[s+1] - c[s]) + c[s+1]."""
    rng = np.random.default_rng(0)
    shares, a = torch.tensor(rng.random((5, 4)), dtype=torch.float32), 0.2
    c0, c1 = shares[:, 0], shares[:, 1]
    x1 = c0 - (c1 - c0) / a
    x0 = x1 - (c0 - x1) / a
    padded = torch.cat([x0[:, None], x1[:, None], shares], dim=1)
    source = torch.stack([a * (padded[:, s + 1] - padded[:, s]) + padded[:, s + 1] for s in range(5)], dim=1)
    torch.testing.assert_close(predicted_popularity(shares, a), source, rtol=1e-5, atol=1e-5)


def test_popdro_trend_term_matches_direct_formula():
    torch.manual_seed(0)
    theta = torch.randn(4, requires_grad=True)
    x = torch.randn(7, 4)
    losses = torch.nn.functional.softplus(x @ theta)
    membership = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0], [0, 1]], dtype=torch.float32)
    stage = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    method = PopDRO(stages=3, env_k=0.5, p=1.0)
    method.stage_weights = torch.softmax(torch.exp((torch.arange(3.0) - 3) * 0.5), 0)
    cells = membership[:, :, None] * torch.nn.functional.one_hot(stage, 3)[:, None, :]
    cell_losses = torch.einsum("bge,b->ge", cells, losses)
    trend = method.trend_terms(
        cell_losses, cells.sum(0), lambda loss: flat_gradient(loss, [theta], retain_graph=True)
    )

    vectors = torch.zeros(2, 3, 4)
    for g, e in itertools.product(range(2), range(3)):
        if cells[:, g, e].sum() > 0:
            grad = torch.autograd.grad(cell_losses[g, e], theta, retain_graph=True)[0]
            mean = cell_losses[g, e].detach() / cells[:, g, e].sum()
            vectors[g, e] = grad / grad.norm() * mean
    overall = (vectors * method.stage_weights[None, :, None]).mean(dim=(0, 1))
    expected = torch.stack([vectors[g].mean(0) @ overall for g in range(2)])
    torch.testing.assert_close(trend.detach(), expected)
    assert trend.requires_grad  # through the (loss_ge / n_ge)^p factors, as in the source


def test_popdro_trend_gradients_are_taken_wrt_the_item_representations():
    """PDRO differentiates the cell losses w.r.t. its item-embedding table: for LM-vector models that is the
    projector's item outputs (rows U.. of the encoding); for ID models the item_embeddings parameter set."""
    model, batch = tiny_alpharec()
    losses, gradient = PopDRO().losses_and_gradient(model, batch)
    torch.testing.assert_close(losses, model.sample_losses(batch))
    loss = (losses * torch.arange(1.0, 7.0, dtype=torch.float64)).sum()
    encoding = model.encode()
    weighted = (
        model.losses_from_encoding(encoding, batch) * torch.arange(1.0, 7.0, dtype=torch.float64)
    ).sum()
    (expected,) = torch.autograd.grad(weighted, encoding)
    torch.testing.assert_close(gradient(loss), expected[model.n_users :].reshape(-1))
    all_losses, everything = PopDRO(trend_gradients="parameters").losses_and_gradient(model, batch)
    n_params = sum(p.numel() for group in model.parameter_sets().values() for p in group)
    assert everything(all_losses.sum()).numel() == n_params

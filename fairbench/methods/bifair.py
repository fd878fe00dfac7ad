"""BiFair (Zhang et al., 2025, arXiv 2507.04294): bi-level fairness training of an LLM-enhanced recommender.

Parameters: the projector theta (every parameter set but ``item_text_vectors``) and the item LM vectors Z
(parameter set ``item_text_vectors``, initialised from the backbone; the user vectors follow as means of Z).
Per step, with l_n(theta, Z) the group losses of the groups present in the batch (group InfoNCE, Eq. 8;
membership-weighted means, see ``grouping``):

1. per-group gradients g_n = grad_theta l_n(theta, Z) from one forward pass (one backward per group);
2. fairness-aware weights (Sec. 3.3, Algorithm 2): Frank-Wolfe on the Gram matrix of the gradient set
   {g_1, .., g_N, -grad H_s}, p = softmax(l), gives w in the simplex over N + 1 vectors. The update
   direction is Eq. 11, d = sum_{n<=N} w*_n g_n over the *group* gradients only, with w* in the simplex over
   the N groups (Eq. 9): wt_n = w_n / sum_{m<=N} w_m (uniform if FW puts all weight on the entropy
   vector). The entropy vector thus steers which groups are weighted up, but is not itself a step: its
   coefficients sum to zero, so a step along it only trades loss between groups.
   ``update_direction=min_norm`` instead steps along the min-norm point of the whole set (MGDA's common
   direction).

   The entropy vector's sign (``entropy_sign``). With c_n = p_n log p_n - p_n sum_i p_i log p_i, the paper
   prints grad H_s = sum_n c_n g_n (App. A, Eq. 12, and the bracket of Eq. 10), so Algorithm 2's set holds
   -grad H_s = -sum_n c_n g_n (``paper``, the default). The true gradient of H_s = -sum p log p is
   -sum_n c_n g_n, the negative of the printed one; ``true_gradient`` puts -(true grad H_s) = sum_n c_n g_n
   into the set (fairbench before issue 14). Only ``paper`` agrees with Eq. 10: its objective
   d(w)^T sum_n c_n g_n is the first-order entropy gain of the step theta - eta d(w), largest when d follows
   the high-loss groups, and with the printed sign the min-norm point's group entries go to those groups;
   with ``true_gradient`` they go to the low-loss groups (measured on ml100k: head weight 0.96-1.00).
   ``weighting=eq10_lp`` replaces Algorithm 2 by Eq. 10 itself: max_w d(w)^T sum_n (-e_n) g_n subject to
   d(w)^T g_n >= 0 for all n, w in the simplex, with e the entropy vector's coefficients of the chosen sign,
   a linear program (:func:`solvers.eq10_lp_weights`; always feasible, fallback: the groups' min-norm point).
   ``gradient_normalization`` divides the group gradients by Sener & Koltun's normalisers (none, l2, loss,
   loss+) before the Gram matrix (not published; the weights then multiply the raw gradients), and
   ``weight_floor`` mixes wt with the uniform weights so every group keeps at least that much (a reading of
   Sec. 3.3's "minimum guarantee for low-loss groups"; off by default). See :func:`fair_group_weights`.
   Each epoch's mean group weights and group losses are logged (``bifair epoch N: ...``);
3. inner step (Algorithm 1, line 4): theta moves along d_theta = sum_n wt_n g_n;
4. outer step (Eqs. 5-7): with L = sum_n wt_n l_n, theta' = theta - xi d_theta, v = grad_theta' L(theta', Z),
   d_Z = grad_Z L(theta', Z) - xi [grad_Z L(theta+, Z) - grad_Z L(theta-, Z)] / (2 eps),
   theta+- = theta +- eps v, eps = fd_epsilon / ||v|| (DARTS ``architect.py``: r = 0.01); by linearity
   d_Z = sum_n wt_n h_n, the weighted per-group unrolled gradients;
5. AdamW steps (betas (0.9, 0.999), weight decay 0.1; Sec. 4.3.3) on theta with d_theta and on Z with d_Z,
   each learning rate decayed polynomially, lr_t = lr_0 (1 - t / T)^0.9 after t steps of that optimiser,
   T = max_epochs x steps per epoch (the step counts are method state, so a resumed run continues the
   schedule; resumed with another trainer.max_epochs, the rest of the schedule follows the new T).

Cost and its two options (config keys, defaults = the paper's algorithm). Per step the paper's procedure takes
4 forward and N + 3 backward passes: N for the per-group gradients, one for the unrolled loss and two for the
central difference. ``gradient_space=representation`` takes the per-group gradients of step 2 w.r.t. the
projector's output R (shared by all groups) instead of theta, as MGDA-UB does (Sener & Koltun, NeurIPS 2018,
Sec. 3.3): N backward passes through the cheap graph-and-loss head only, then one through the projector for
d_theta = J_R^T sum_n wt_n grad_R l_n (exactly sum_n wt_n g_n for the weights found; only the weights differ).
``fd_scheme=forward`` replaces the central difference by the one-sided [grad_Z L(theta+) - grad_Z L(theta)] /
eps, with grad_Z L(theta) = sum_n wt_n grad_Z l_n(theta) from the inner pass (one forward and backward fewer;
error O(eps) instead of O(eps^2)).

The weights are computed once per step, after the inner direction and before the outer one (the paper computes
w "only after determining the update directions", to avoid a tri-level problem); the Gram matrix uses the
projector gradients, the paper's grad l_n(theta_t). Unpublished values are config keys: xi (default: theta's
learning rate, DARTS's convention), fd_epsilon, fw_iterations, theta_lr, z_lr, gradient_normalization; and
the cost options above.

:class:`BiFairSeparate` is the paper's "Separate" ablation (Sec. 4.5): theta is trained with the same fair
loss (Z frozen) until early stopping, then frozen at its best epoch while Z is trained with the fair loss
(first-order: with theta fixed there is no inner problem to unroll).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod, TrainContext
from fairbench.methods.grouping import (
    GroupKind,
    assign_gradient,
    batch_membership,
    entropy_coefficients,
    flat_gradient,
    flat_gradients,
    flatten,
    group_losses,
    load_parameter_vector,
    parameter_vector,
)
from fairbench.methods.multifr import gradient_normalizers
from fairbench.methods.solvers import eq10_lp_weights, frank_wolfe_weights
from fairbench.models.base import Batch, Recommender

log = logging.getLogger(__name__)

Z_SET = "item_text_vectors"


EntropySign = Literal["paper", "true_gradient"]
Weighting = Literal["frank_wolfe", "eq10_lp"]
Normalization = Literal["none", "l2", "loss", "loss+"]


def entropy_vector_coefficients(losses: torch.Tensor, sign: EntropySign = "paper") -> torch.Tensor:
    """e with Algorithm 2's entropy vector "-grad H_s" = sum_n e_n grad l_n (the (N+1)-th vector of its set).

    With c_n = p_n log p_n - p_n sum_i p_i log p_i, p = softmax(l) (:func:`grouping.entropy_coefficients`):
    the paper prints grad H_s = sum_n c_n grad l_n (App. A, Eq. 12; the bracket of Eq. 10), so its set holds
    -grad H_s = -sum_n c_n grad l_n: ``paper`` gives e = -c. The true gradient of H = -sum p log p is
    grad H = -sum_n c_n grad l_n (the printed expression is its negative), so -grad H = sum_n c_n grad l_n:
    ``true_gradient`` gives e = c. In other words the paper's set holds the true +grad H.
    """
    if sign not in ("paper", "true_gradient"):
        raise UserError(f"bifair: entropy_sign must be paper or true_gradient, got {sign}")
    c = entropy_coefficients(losses)
    return -c if sign == "paper" else c


def normalized_gram(grads: torch.Tensor, losses: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """K = G_hat G_hat^T (float64) of the group gradients g_n / n_n, n_n Sener & Koltun's normaliser.

    ``gradient_normalizers`` (isl-org/MultiObjectiveOptimization, as in MultiFR): none: n_n = 1; l2:
    n_n = ||g_n||; loss: n_n = l_n; loss+: n_n = l_n ||g_n|| (clamped at 1e-12).
    """
    if normalization not in ("none", "l2", "loss", "loss+"):
        raise UserError(
            f"bifair: gradient_normalization must be none, l2, loss or loss+, got {normalization}"
        )
    g = grads.detach().double()
    normalizers = gradient_normalizers(g, losses.detach().double(), normalization)
    g = g / normalizers.clamp(min=1e-12)[:, None]
    return g @ g.T


def fair_group_weights(
    losses: torch.Tensor,
    grads: torch.Tensor,
    iterations: int,
    direction: Literal["groups", "min_norm"] = "groups",
    entropy_sign: EntropySign = "paper",
    weighting: Weighting = "frank_wolfe",
    normalization: Normalization = "none",
    floor: float = 0.0,
) -> torch.Tensor:
    """Group weights wt [N] of BiFair's Algorithm 2 (or Eq. 10) and Eq. 11 from group losses [N] and
    gradients [N, P] (Sec. 3.3).

    K is the Gram matrix of the (optionally normalised, :func:`normalized_gram`) group gradients, e the
    entropy vector's coefficients (:func:`entropy_vector_coefficients`, sign ``entropy_sign``).

    ``frank_wolfe`` (Algorithm 2): the set {g_1..g_N, sum_n e_n g_n} has the Gram matrix A^T K A with
    A = [I | e]; Frank-Wolfe gives w [N + 1]. ``groups`` (Eq. 11, w* in the simplex over the groups):
    wt = w[:N] / sum(w[:N]), uniform when that sum vanishes. ``min_norm``: wt = A w, the min-norm point of
    the whole set.

    ``eq10_lp`` (Eq. 10 as printed): max_w d(w)^T sum_n (-e_n) g_n s.t. d(w)^T g_n >= 0, w in the simplex,
    with d(w) = sum_n w_n g_n, solved as a linear program (:func:`solvers.eq10_lp_weights`; the maximised
    vector -sum e_n g_n is the paper's printed grad H_s with ``entropy_sign=paper``). Its fallback, when the
    solver finds no optimum, is the min-norm point of the group gradients.

    ``floor`` f > 0 (a reading of Sec. 3.3's "minimum guarantee for low-loss groups", not in the paper's
    equations): wt <- (1 - N f') wt + f' with f' = min(f, 1 / N), so every group keeps at least f'.
    With a single group: wt = [1]. The weights are applied to the raw gradients, d = sum_n wt_n g_n.
    """
    if len(losses) == 1:  # H_s of one loss is constant: its gradient vanishes
        return torch.ones(1, dtype=grads.dtype, device=grads.device)
    n = len(losses)
    e = entropy_vector_coefficients(losses.detach().double(), entropy_sign)
    gram = normalized_gram(grads, losses, normalization)
    if weighting == "eq10_lp":
        w, _ = eq10_lp_weights(gram, -e.cpu().numpy())
        weights = torch.as_tensor(w, dtype=torch.float64, device=losses.device)
    elif weighting == "frank_wolfe":
        combination = torch.cat([torch.eye(n, dtype=torch.float64, device=losses.device), e[:, None]], dim=1)
        w = torch.as_tensor(
            frank_wolfe_weights(combination.T @ gram @ combination, iterations), device=losses.device
        )
        if direction == "min_norm":
            return (combination @ w).to(grads.dtype)
        group_part = w[:n]
        total = float(group_part.sum())
        if total <= 1e-12:
            weights = torch.full((n,), 1.0 / n, dtype=torch.float64, device=losses.device)
        else:
            weights = group_part / total
    else:
        raise UserError(f"bifair: weighting must be frank_wolfe or eq10_lp, got {weighting}")
    if floor > 0:
        least = min(floor, 1.0 / n)
        weights = (1 - n * least) * weights + least
    return weights.to(grads.dtype)


def finite_difference_hvp(
    loss_fn: Callable[[], torch.Tensor],
    theta: list[torch.Tensor],
    z: list[torch.Tensor],
    vector: torch.Tensor,
    epsilon: float,
    z_grad_at_theta: torch.Tensor | None = None,
) -> torch.Tensor:
    """grad^2_{Z,theta} L v (flat) by finite differences of grad_Z L along theta +- eps v.

    Central: [grad_Z L(theta + eps v) - grad_Z L(theta - eps v)] / (2 eps) (DARTS). Given
    ``z_grad_at_theta`` = grad_Z L(theta), forward: [grad_Z L(theta + eps v) - grad_Z L(theta)] / eps.
    ``loss_fn()`` evaluates L at the current parameter values; theta is restored afterwards.
    """
    original = parameter_vector(theta)
    load_parameter_vector(theta, original + epsilon * vector)
    plus = flat_gradient(loss_fn(), z, retain_graph=False)
    if z_grad_at_theta is not None:
        load_parameter_vector(theta, original)
        return (plus - z_grad_at_theta) / epsilon
    load_parameter_vector(theta, original - epsilon * vector)
    minus = flat_gradient(loss_fn(), z, retain_graph=False)
    load_parameter_vector(theta, original)
    return (plus - minus) / (2 * epsilon)


@dataclass
class InnerStep:
    """Steps 1-3 on one batch: per-sample losses, present groups, their losses and weights wt, the inner
    direction d_theta = sum_n wt_n grad_theta l_n and, when asked for, grad_Z sum_n wt_n l_n at theta."""

    losses: torch.Tensor
    present: torch.Tensor
    weights: torch.Tensor
    d_theta: torch.Tensor
    z_grad: torch.Tensor | None


class BiFair(FairnessMethod):
    """Bi-level optimisation of projector and LM item vectors with the adaptive fair loss (see module)."""

    needs_groups = True

    def __init__(
        self,
        groups: GroupKind = "popularity",
        theta_lr: float | None = None,
        z_lr: float = 1.0e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_decay_power: float = 0.9,
        xi: float | None = None,
        fd_epsilon: float = 0.01,
        fw_iterations: int = 100,
        gradient_space: Literal["parameters", "representation"] = "parameters",
        fd_scheme: Literal["central", "forward"] = "central",
        update_direction: Literal["groups", "min_norm"] = "groups",
        entropy_sign: EntropySign = "paper",
        weighting: Weighting = "frank_wolfe",
        gradient_normalization: Normalization = "none",
        weight_floor: float = 0.0,
    ) -> None:
        if update_direction not in ("groups", "min_norm"):
            raise UserError(f"bifair: update_direction must be groups or min_norm, got {update_direction}")
        self.update_direction = update_direction
        if entropy_sign not in ("paper", "true_gradient"):
            raise UserError(f"bifair: entropy_sign must be paper or true_gradient, got {entropy_sign}")
        if weighting not in ("frank_wolfe", "eq10_lp"):
            raise UserError(f"bifair: weighting must be frank_wolfe or eq10_lp, got {weighting}")
        if gradient_normalization not in ("none", "l2", "loss", "loss+"):
            raise UserError(
                "bifair: gradient_normalization must be none, l2, loss or loss+, "
                f"got {gradient_normalization}"
            )
        if not 0.0 <= weight_floor < 1.0:
            raise UserError(f"bifair: weight_floor must be in [0, 1), got {weight_floor}")
        if update_direction == "min_norm" and (weighting != "frank_wolfe" or weight_floor > 0):
            raise UserError(
                "bifair: update_direction=min_norm steps along Frank-Wolfe's min-norm point; it needs "
                "weighting=frank_wolfe and weight_floor=0"
            )
        self.entropy_sign, self.weighting = entropy_sign, weighting
        self.gradient_normalization, self.weight_floor = gradient_normalization, float(weight_floor)
        if gradient_space not in ("parameters", "representation"):
            raise UserError(
                f"bifair: gradient_space must be parameters or representation, got {gradient_space}"
            )
        if fd_scheme not in ("central", "forward"):
            raise UserError(f"bifair: fd_scheme must be central or forward, got {fd_scheme}")
        self.gradient_space, self.fd_scheme = gradient_space, fd_scheme
        if (theta_lr is not None and theta_lr <= 0) or z_lr <= 0:
            raise UserError(f"bifair: learning rates must be > 0, got theta_lr={theta_lr}, z_lr={z_lr}")
        if fd_epsilon <= 0 or fw_iterations < 1 or (xi is not None and xi < 0):
            raise UserError("bifair: need fd_epsilon > 0, fw_iterations >= 1 and xi >= 0 (or null)")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2:
            raise UserError(f"bifair: betas must have two values, got {list(betas)}")
        self.groups, self.theta_lr, self.z_lr, self.weight_decay = groups, theta_lr, z_lr, weight_decay
        self.betas, self.lr_decay_power, self.xi_value = betas, lr_decay_power, xi
        self.fd_epsilon, self.fw_iterations = fd_epsilon, fw_iterations
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.steps: dict[str, int] = {"theta": 0, Z_SET: 0}
        self.weight_log: list[dict] = []  # one entry per epoch: mean group weights and group losses
        self._reset_epoch_sums(0)

    def _reset_epoch_sums(self, n_groups: int) -> None:
        self.weight_sum = torch.zeros(n_groups, dtype=torch.float64)
        self.loss_sum = torch.zeros(n_groups, dtype=torch.float64)
        self.loss_count = torch.zeros(n_groups, dtype=torch.float64)
        self.step_count = 0

    def group_weights(self, losses: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """wt of the present groups with this method's options (:func:`fair_group_weights`), recorded for
        the epoch's log."""
        return fair_group_weights(
            losses,
            grads,
            self.fw_iterations,
            self.update_direction,
            entropy_sign=self.entropy_sign,
            weighting=self.weighting,
            normalization=self.gradient_normalization,
            floor=self.weight_floor,
        )

    def record(self, present: torch.Tensor, losses: torch.Tensor, weights: torch.Tensor) -> None:
        """Add one step's group weights and losses to the epoch sums (absent groups count weight 0)."""
        n_groups = int(present.max()) + 1 if len(present) else 0
        if len(self.weight_sum) < n_groups:
            pad = n_groups - len(self.weight_sum)
            self.weight_sum = torch.cat([self.weight_sum, torch.zeros(pad, dtype=torch.float64)])
            self.loss_sum = torch.cat([self.loss_sum, torch.zeros(pad, dtype=torch.float64)])
            self.loss_count = torch.cat([self.loss_count, torch.zeros(pad, dtype=torch.float64)])
        index = present.cpu()
        self.weight_sum[index] += weights.detach().double().cpu()
        self.loss_sum[index] += losses.detach().double().cpu()
        self.loss_count[index] += 1
        self.step_count += 1

    # ------------------------------------------------------------------------------------------- set-up

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        make_trainable = getattr(model, "set_text_vectors_trainable", None)
        if not callable(make_trainable):
            raise UserError(
                f"{self.name} needs a model with trainable LM item vectors (alpharec, linear); "
                f"{type(model).__name__} has none"
            )
        make_trainable(True)
        if self.gradient_space == "representation" and not callable(getattr(model, "encode", None)):
            raise UserError(
                f"{self.name}: gradient_space=representation needs a model with an encode()/"
                f"losses_from_encoding() split (alpharec, linear); {type(model).__name__} has none"
            )
        sets = model.parameter_sets()
        self.z = list(sets[Z_SET])
        self.theta = [p for name, group in sets.items() if name != Z_SET for p in group if p.requires_grad]
        self.lr_theta = self.theta_lr if self.theta_lr is not None else context.lr
        self.xi = self.xi_value if self.xi_value is not None else self.lr_theta

    @property
    def name(self) -> str:
        return "bifair"

    def required_capabilities(self) -> dict[str, str]:
        needs = super().required_capabilities()
        needs["trainable_text_vectors"] = "trains the LM item vectors Z as its outer variable"
        if self.gradient_space == "representation":
            needs["encoding_split"] = "gradient_space=representation needs the projector output R"
        return needs

    def configure_optimizers(self, model: Recommender) -> dict[str, torch.optim.Optimizer]:
        optimizers = {
            "theta": torch.optim.AdamW(
                self.theta, lr=self.lr_theta, betas=self.betas, weight_decay=self.weight_decay
            ),
            Z_SET: torch.optim.AdamW(self.z, lr=self.z_lr, betas=self.betas, weight_decay=self.weight_decay),
        }
        self.optimizers = optimizers
        self.base_lrs = {"theta": self.lr_theta, Z_SET: self.z_lr}
        return optimizers

    def learning_rate(self, name: str) -> float:
        """lr_0 (1 - t / T)^power after t steps of optimiser ``name``, T = max_epochs x steps per epoch."""
        total = max(self.context.max_epochs * self.context.steps_per_epoch, 1)
        return self.base_lrs[name] * max(1.0 - self.steps[name] / total, 0.0) ** self.lr_decay_power

    def set_learning_rates(self) -> None:
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate(name)

    # ---------------------------------------------------------------------------------------------- step

    def inner_step(self, model: Recommender, batch: Batch, with_z_grad: bool = False) -> InnerStep:
        """Steps 1-3 from one forward pass (see the module docstring for the two gradient spaces)."""
        membership = batch_membership(batch, self.name)
        if self.gradient_space == "parameters":
            losses = model.sample_losses(batch)
            grouped = group_losses(losses, membership)
            present = torch.nonzero(grouped.present).flatten()
            values = grouped.values[present]
            grads = flat_gradients(list(values), self.theta, retain_graph=with_z_grad)
            weights = self.group_weights(values, grads) if len(present) else grads[:, 0]
            self.record(present, values, weights)
            z_grad = None
            if with_z_grad and len(present):
                z_grad = flat_gradient((weights.detach() * values).sum(), self.z, retain_graph=False)
            return InnerStep(losses.detach(), present, weights, weights @ grads, z_grad)
        encoding = model.encode()  # type: ignore[operator]
        shared = encoding.detach().requires_grad_(True)
        losses = model.losses_from_encoding(shared, batch)  # type: ignore[operator]
        grouped = group_losses(losses, membership)
        present = torch.nonzero(grouped.present).flatten()
        values = grouped.values[present]
        rep_grads = flat_gradients(list(values), [shared], retain_graph=False)
        if len(present) == 0:
            return InnerStep(losses.detach(), present, rep_grads[:, 0], torch.zeros(0), None)
        weights = self.group_weights(values, rep_grads)
        self.record(present, values, weights)
        params = self.theta + (self.z if with_z_grad else [])
        grads = torch.autograd.grad(
            encoding, params, grad_outputs=(weights @ rep_grads).view_as(encoding), allow_unused=True
        )
        flat = flatten(grads, params)
        n_theta = sum(p.numel() for p in self.theta)
        z_grad = flat[n_theta:] if with_z_grad else None
        return InnerStep(losses.detach(), present, weights, flat[:n_theta], z_grad)

    def weighted_loss(
        self, model: Recommender, batch: Batch, present: torch.Tensor, weights: torch.Tensor
    ) -> Callable[[], torch.Tensor]:
        """L = sum_n wt_n l_n at the model's current parameters (a closure for the unrolled passes)."""
        membership = batch["groups"]

        def loss() -> torch.Tensor:
            values = group_losses(model.sample_losses(batch), membership).values[present]
            return (weights * values).sum()

        return loss

    def outer_direction(
        self,
        loss_fn: Callable[[], torch.Tensor],
        d_theta: torch.Tensor,
        z_grad_at_theta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """d_Z of step 4: the one-step unrolled gradient with the finite-difference Hessian-vector product
        (one-sided when grad_Z L at theta is given, ``fd_scheme=forward``)."""
        original = parameter_vector(self.theta)
        load_parameter_vector(self.theta, original - self.xi * d_theta)
        unrolled = loss_fn()
        grads = flat_gradient(unrolled, self.theta + self.z, retain_graph=False)
        n_theta = original.numel()
        vector, direct = grads[:n_theta], grads[n_theta:]
        load_parameter_vector(self.theta, original)
        norm = float(vector.norm())
        if self.xi == 0 or norm == 0:
            return direct
        hvp = finite_difference_hvp(
            loss_fn, self.theta, self.z, vector, self.fd_epsilon / norm, z_grad_at_theta=z_grad_at_theta
        )
        return direct - self.xi * hvp

    def apply(self, optimizers: dict[str, torch.optim.Optimizer], updates: dict[str, torch.Tensor]) -> None:
        """Set the gradients of the named parameter sets, step their optimisers and decay their rates."""
        params = {"theta": self.theta, Z_SET: self.z}
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        for name, direction in updates.items():
            assign_gradient(params[name], direction)
            optimizers[name].step()
            self.steps[name] += 1
        self.set_learning_rates()

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        inner = self.inner_step(model, batch, with_z_grad=self.fd_scheme == "forward")
        if len(inner.present) == 0:  # no sample of any group (only possible with ungrouped items): no update
            return {"loss": float(inner.losses.mean())}
        loss_fn = self.weighted_loss(model, batch, inner.present, inner.weights)
        d_z = self.outer_direction(loss_fn, inner.d_theta, inner.z_grad)
        self.apply(optimizers, {"theta": inner.d_theta, Z_SET: d_z})
        return {"loss": float(inner.losses.mean())}

    def on_epoch_end(self, epoch: int) -> None:
        """Log the epoch's mean group weights (over its steps; 0 where a group is absent) and mean group
        losses (over the steps where the group is present), as ITFR logs its weights; kept in
        ``weight_log``."""
        steps = max(self.step_count, 1)
        weights = (self.weight_sum / steps).tolist()
        losses = [
            round(total / count, 4) if count else None
            for total, count in zip(self.loss_sum.tolist(), self.loss_count.tolist(), strict=True)
        ]
        self.weight_log.append({"epoch": epoch, "weights": weights, "losses": losses})
        log.info(
            "%s epoch %d: mean group weights %s, mean group losses %s",
            self.name,
            epoch,
            [round(w, 4) for w in weights],
            losses,
        )
        self._reset_epoch_sums(len(self.weight_sum))

    # --------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"steps": dict(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = {name: int(count) for name, count in state["steps"].items()}
        self.set_learning_rates()


class BiFairSeparate(BiFair):
    """BiFair's "Separate" ablation: theta with the fair loss until early stopping, then Z with theta frozen.

    Phase ``theta``: steps 1-3 of BiFair (Z untouched). Phase ``z`` (from the best epoch of phase theta, when
    early stopping would end it): the weights wt from the projector gradients as in phase theta, and Z moves
    along grad_Z sum_n wt_n l_n. If ``trainer.max_epochs`` ends phase theta, Z is never trained (logged).
    """

    def __init__(
        self,
        groups: GroupKind = "popularity",
        theta_lr: float | None = None,
        z_lr: float = 1.0e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_decay_power: float = 0.9,
        fw_iterations: int = 100,
        gradient_space: Literal["parameters", "representation"] = "parameters",
        update_direction: Literal["groups", "min_norm"] = "groups",
        entropy_sign: EntropySign = "paper",
        weighting: Weighting = "frank_wolfe",
        gradient_normalization: Normalization = "none",
        weight_floor: float = 0.0,
    ) -> None:
        super().__init__(
            groups=groups,
            theta_lr=theta_lr,
            z_lr=z_lr,
            weight_decay=weight_decay,
            betas=betas,
            lr_decay_power=lr_decay_power,
            fw_iterations=fw_iterations,
            gradient_space=gradient_space,
            update_direction=update_direction,
            entropy_sign=entropy_sign,
            weighting=weighting,
            gradient_normalization=gradient_normalization,
            weight_floor=weight_floor,
        )
        self.phase: Literal["theta", "z"] = "theta"

    @property
    def name(self) -> str:
        return "bifair_separate"

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        inner = self.inner_step(model, batch, with_z_grad=self.phase == "z")
        if len(inner.present):
            self.apply(
                optimizers, {"theta": inner.d_theta} if self.phase == "theta" else {Z_SET: inner.z_grad}
            )
        return {"loss": float(inner.losses.mean())}

    def start_next_phase(self, epoch: int) -> bool:
        if self.phase == "z":
            return False
        self.phase = "z"
        log.info("bifair_separate: theta converged at epoch %d; training Z with theta frozen", epoch)
        return True

    def on_epoch_end(self, epoch: int) -> None:
        super().on_epoch_end(epoch)
        if self.phase == "theta" and epoch == self.context.max_epochs - 1:
            log.warning(
                "bifair_separate: trainer.max_epochs ended phase theta before early stopping; "
                "Z was not trained"
            )

    def state_dict(self) -> dict:
        return super().state_dict() | {"phase": self.phase}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.phase = state["phase"]

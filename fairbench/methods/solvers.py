"""Minimum-norm points in the convex hull of gradients, from their Gram matrix.

Both solvers work on the Gram matrix K = G G^T of T gradient vectors (K_ij = <g_i, g_j>) and return weights
w on the simplex (w >= 0, sum w = 1) approximating argmin_w ||sum_i w_i g_i||^2 = w^T K w. The matrices are
tiny (T = objectives or groups), so they run in float64 numpy on the CPU.

- :func:`min_norm_weights`: Sener & Koltun's MGDA solver (NeurIPS 2018), a port of
  ``MinNormSolver.find_min_norm_element`` (isl-org/MultiObjectiveOptimization
  ``multi_task/min_norm_solvers.py``): best pair by the closed form, then projected gradient steps on the
  simplex with an exact line search. The source's quirk is kept: the two-point closed form returns
  0.999 / 0.001 instead of 1 / 0 at a vertex.
- :func:`frank_wolfe_weights`: BiFair's Algorithm 2 (Frank-Wolfe from the uniform point, fixed iterations,
  exact line search).

:func:`eq10_lp_weights` is not a min-norm solver: it solves BiFair's Eq. 10, a linear program over the
simplex on the same Gram matrix (scipy's HiGHS).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog

MAX_ITER = 250  # MinNormSolver.MAX_ITER
STOP_CRIT = 1e-5  # MinNormSolver.STOP_CRIT


def _as_gram(gram: torch.Tensor | np.ndarray) -> np.ndarray:
    k = gram.detach().cpu().double().numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram, float)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"expected a non-empty square Gram matrix, got shape {k.shape}")
    return k


def min_norm_2(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """argmin_c ||c x1 + (1 - c) x2||^2 from v11 = <x1,x1>, v12 = <x1,x2>, v22 = <x2,x2>: (c, cost).

    c = (v22 - v12) / (v11 + v22 - 2 v12), clipped as in the source to 0.999 (v12 >= v11) or 0.001
    (v12 >= v22).
    """
    if v12 >= v11:
        return 0.999, v11
    if v12 >= v22:
        return 0.001, v22
    gamma = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
    return gamma, v22 + gamma * (v12 - v22)


def project_to_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection of y onto {z : z >= 0, sum z = 1} (``_projection2simplex``)."""
    m = len(y)
    sorted_y = np.flip(np.sort(y), axis=0)
    running = 0.0
    threshold = (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        running += sorted_y[i]
        candidate = (running - 1) / (i + 1.0)
        if candidate > sorted_y[i + 1]:
            threshold = candidate
            break
    return np.maximum(y - threshold, 0.0)


def _next_point(current: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """One projected step along the simplex-tangent part of ``grad`` (``_next_point``)."""
    n = len(current)
    proj_grad = grad - np.sum(grad) / n
    tm1 = -1.0 * current[proj_grad < 0] / proj_grad[proj_grad < 0]
    tm2 = (1.0 - current[proj_grad > 0]) / proj_grad[proj_grad > 0]
    t = 1.0
    if len(tm1[tm1 > 1e-7]) > 0:
        t = float(np.min(tm1[tm1 > 1e-7]))
    if len(tm2[tm2 > 1e-7]) > 0:
        t = min(t, float(np.min(tm2[tm2 > 1e-7])))
    return project_to_simplex(proj_grad * t + current)


def min_norm_weights(gram: torch.Tensor | np.ndarray, max_iter: int = MAX_ITER) -> np.ndarray:
    """MGDA weights: the min-norm point of the convex hull of the gradients with Gram matrix ``gram``.

    Sener & Koltun ``find_min_norm_element``: start from the best two-gradient solution (exact for two
    gradients), then projected gradient descent on the simplex, each step followed by the exact line search
    between the current and the projected point, until the L1 change is below 1e-5 or ``max_iter`` steps.
    """
    k = _as_gram(gram)
    n = k.shape[0]
    if n == 1:
        return np.ones(1)
    best: tuple[int, int, float, float] | None = None
    for i in range(n):
        for j in range(i + 1, n):
            c, cost = min_norm_2(k[i, i], k[i, j], k[j, j])
            if best is None or cost < best[3]:
                best = (i, j, c, cost)
    assert best is not None
    solution = np.zeros(n)
    solution[best[0]], solution[best[1]] = best[2], 1 - best[2]
    if n < 3:
        return solution
    for _ in range(max_iter):
        new_point = _next_point(solution, -1.0 * k @ solution)
        v11 = solution @ k @ solution
        v12 = solution @ k @ new_point
        v22 = new_point @ k @ new_point
        c, _ = min_norm_2(v11, v12, v22)
        new_solution = c * solution + (1 - c) * new_point
        if np.sum(np.abs(new_solution - solution)) < STOP_CRIT:
            return solution
        solution = new_solution
    return solution


def line_search_step(gram: np.ndarray, w: np.ndarray, vertex: int) -> float:
    """Exact line search of Frank-Wolfe: argmin_{gamma in [0,1]} ||(1 - gamma) w + gamma e_t||_K^2.

    gamma = (w^T K w - (K w)_t) / (w^T K w - 2 (K w)_t + K_tt), clipped to [0, 1]; 0 when the denominator
    ||w - e_t||_K^2 vanishes (no move possible).
    """
    kw = gram @ w
    wkw = float(w @ kw)
    denominator = wkw - 2 * kw[vertex] + gram[vertex, vertex]
    if denominator <= 1e-20:
        return 0.0
    return float(np.clip((wkw - kw[vertex]) / denominator, 0.0, 1.0))


def frank_wolfe_weights(gram: torch.Tensor | np.ndarray, iterations: int) -> np.ndarray:
    """BiFair Algorithm 2: Frank-Wolfe on min_w w^T K w over the simplex.

    w_0 uniform; for t < T: v_t = e_i with i = argmin_i (K w_t)_i, w_{t+1} = (1 - gamma_t) w_t + gamma_t v_t
    with the exact line search :func:`line_search_step`.
    """
    k = _as_gram(gram)
    w = np.full(k.shape[0], 1.0 / k.shape[0])
    for _ in range(iterations):
        vertex = int(np.argmin(k @ w))
        gamma = line_search_step(k, w, vertex)
        w = (1 - gamma) * w
        w[vertex] += gamma
    return w


def eq10_lp_weights(gram: torch.Tensor | np.ndarray, target: np.ndarray) -> tuple[np.ndarray, bool]:
    """BiFair Eq. 10 solved exactly: max_w d(w)^T u s.t. d(w)^T g_n >= 0 for all n, w in the simplex.

    With d(w) = sum_n w_n g_n and u = sum_n target_n g_n, objective and constraints are linear in w:
    max_w w^T K target s.t. (K w)_n >= 0, w >= 0, sum w = 1 (K = G G^T, the group gradients' Gram matrix).
    K is scaled by its largest diagonal entry first (the same argmax, better conditioned). Solved with
    ``scipy.optimize.linprog`` (HiGHS); an optimum is a vertex of the feasible polytope, so it is often a
    single group.

    The LP is always feasible in exact arithmetic: the min-norm point d* of the gradients' convex hull
    satisfies d*^T g_n >= ||d*||^2 >= 0 for every n (Sener & Koltun 2018, Sec. 3.1). When the solver still
    reports no optimum (rounding at a Pareto-stationary point, where d* = 0), the fallback is that min-norm
    point (:func:`min_norm_weights`), a feasible point of the LP. Returns (w [N], True) or (fallback, False).
    """
    k = _as_gram(gram)
    n = k.shape[0]
    if n == 1:
        return np.ones(1), True
    scale = float(np.max(np.abs(np.diag(k))))
    if scale <= 0 or not np.isfinite(scale):
        return np.full(n, 1.0 / n), False
    k = k / scale
    result = linprog(
        c=-(k @ np.asarray(target, float)),
        A_ub=-k,
        b_ub=np.zeros(n),
        A_eq=np.ones((1, n)),
        b_eq=np.ones(1),
        bounds=[(0.0, None)] * n,
        method="highs",
    )
    if result.status != 0 or result.x is None:
        return min_norm_weights(k), False
    w = np.clip(result.x, 0.0, None)
    return w / w.sum(), True

"""How often BiFair's Algorithm 2 favours another group than Eq. 10's objective, on random gradient sets.

    python scripts/bifair_eq10_agreement.py [--sets 300] [--groups 2,3,4] [--seed 0]

Each set: N group losses uniform in [1, 6] and N correlated gradients (a shared normal vector plus normal
noise of a random scale in [0.3, 1.5], dimension 8). Per set and sign of the entropy vector
(``method.entropy_sign``), the group Algorithm 2 weights most (``fair_group_weights`` of
fairbench.methods.bifair, 200 Frank-Wolfe iterations) is compared with the best single group of Eq. 10's
objective w^T K (-e) (K the gradients' Gram matrix, e the entropy vector's coefficients). Ties (uniform
weights, when Frank-Wolfe puts all its weight on the entropy vector) are counted apart. Prints one line per
(sign, N).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fairbench.methods.bifair import entropy_vector_coefficients, fair_group_weights


def random_set(rng: np.random.Generator, n: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    base = rng.normal(size=dim)
    grads = base + rng.normal(size=(n, dim)) * rng.uniform(0.3, 1.5)
    return torch.tensor(rng.uniform(1, 6, size=n)), torch.tensor(grads)


def disagreements(sign: str, n: int, sets: int, seed: int) -> tuple[int, int]:
    """(sets where Algorithm 2's most-weighted group is not Eq. 10's best group, uniform ties)."""
    rng = np.random.default_rng(seed)
    differ = ties = 0
    for _ in range(sets):
        losses, grads = random_set(rng, n)
        weights = fair_group_weights(losses, grads, 200, entropy_sign=sign).numpy()
        objective = (grads @ grads.T).numpy() @ -entropy_vector_coefficients(losses, sign).numpy()
        if np.ptp(weights) < 1e-12:
            ties += 1
        elif int(np.argmax(weights)) != int(np.argmax(objective)):
            differ += 1
    return differ, ties


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--groups", default="2,3,4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for sign in ("paper", "true_gradient"):
        for n in (int(x) for x in args.groups.split(",")):
            differ, ties = disagreements(sign, n, args.sets, args.seed)
            print(f"entropy_sign={sign} N={n}: differ {differ}/{args.sets}, uniform ties {ties}/{args.sets}")


if __name__ == "__main__":
    main()

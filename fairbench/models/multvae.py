"""Mult-VAE (Liang et al., "Variational Autoencoders for Collaborative Filtering", WWW 2018).

A user's binary training row x_u [I] is L2-normalised, dropped out (p = 0.5) and encoded by an MLP
I -> 600 -> 2 x 200 (tanh) into the mean mu and log-variance of q(z | x_u); z = mu + sigma * epsilon is
decoded by 200 -> 600 -> I (tanh between layers) into logits, pi(z) = softmax(logits). The per-user loss is
the annealed negative ELBO with multinomial likelihood (Eq. 3 and Sec. 2.2.2):

    l_u = -sum_i x_ui log pi_i(z) + beta * KL(q(z | x_u) || N(0, I)),
    KL = 1/2 sum_k (exp(logvar_k) + mu_k^2 - 1 - logvar_k),
    beta = min(anneal_cap, step / total_anneal_steps).

Ranking uses the logits of z = mu without dropout. Settings are the paper's and its public notebook's
(dawenl/vae_cf; also AlphaRec ``MultVAE.py``): 600-200-600, dropout 0.5, anneal cap 0.2 over 200,000
updates, Xavier-normal weights, N(0, 0.001^2) biases, 500 users per batch. The notebook's L2 penalty on the
weights is left to ``trainer.weight_decay`` (AlphaRec and RecBole omit it too).

One training sample is one user (``batch_unit = "user"``): the trainer batches users and the model reads their
rows from the training matrix it holds. Dropout and epsilon come from a generator seeded by the trainer for
every epoch and beta from the trainer's global step, so training and resuming are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.models.base import Batch, Recommender, seeded_generator


def multvae_losses(
    logits: torch.Tensor, rows: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-user negative ELBO -sum_i x_ui log softmax(logits)_i + beta * KL(N(mu, exp(logvar)) || N(0, I)).

    Shapes: logits, rows [B, I]; mu, logvar [B, k]; returns [B].
    """
    neg_log_likelihood = -(nn.functional.log_softmax(logits, dim=-1) * rows).sum(-1)
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(-1)
    return neg_log_likelihood + beta * kl


class MultVAE(Recommender):
    """Variational autoencoder over users' item rows, multinomial likelihood (see the module docstring)."""

    batch_unit = "user"

    def __init__(
        self,
        train: sp.csr_matrix,
        hidden_dim: int = 600,
        latent_dim: int = 200,
        dropout: float = 0.5,
        anneal_cap: float = 0.2,
        total_anneal_steps: int = 200000,
        users_per_batch: int | None = 500,
    ) -> None:
        super().__init__()
        if hidden_dim < 1 or latent_dim < 1:
            raise UserError(
                f"model.hidden_dim and model.latent_dim must be >= 1, got {hidden_dim}, {latent_dim}"
            )
        if not 0 <= dropout < 1:
            raise UserError(f"model.dropout must be in [0, 1), got {dropout}")
        if anneal_cap < 0 or total_anneal_steps < 0:
            raise UserError("model.anneal_cap and model.total_anneal_steps must be >= 0")
        if users_per_batch is not None and users_per_batch < 1:
            raise UserError(f"model.users_per_batch must be >= 1 or null, got {users_per_batch}")
        self.n_users, self.n_items = train.shape
        self.latent_dim, self.dropout = latent_dim, dropout
        self.anneal_cap, self.total_anneal_steps = anneal_cap, total_anneal_steps
        self.users_per_batch = users_per_batch
        self.train_rows = sp.csr_matrix(train, dtype=np.float32)
        self.encoder = nn.Sequential(
            nn.Linear(self.n_items, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, self.n_items)
        )
        for layer in [*self.encoder, *self.decoder]:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.normal_(layer.bias, std=0.001)
        self.beta = 0.0
        self.generator: torch.Generator | None = None

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        self.generator = seeded_generator(seed, self.encoder[0].weight.device)

    def on_train_step(self, global_step: int) -> None:
        """KL annealing of Liang et al.: beta = min(anneal_cap, updates so far / total_anneal_steps)."""
        if self.total_anneal_steps > 0:
            self.beta = min(self.anneal_cap, global_step / self.total_anneal_steps)
        else:
            self.beta = self.anneal_cap

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense binary training rows [B, I] of ``users`` (one batch at a time, never all users)."""
        block = self.train_rows[users.detach().cpu().numpy()].toarray()
        return torch.from_numpy(block).to(self.encoder[0].weight.device)

    def encode(self, rows: torch.Tensor, drop: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each [B, latent_dim]; input dropout only when ``drop``."""
        h = nn.functional.normalize(rows, dim=-1)
        if drop and self.dropout > 0:
            keep = torch.rand(h.shape, generator=self.generator, device=h.device) >= self.dropout
            h = h * keep / (1 - self.dropout)
        out = self.encoder(h)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        if self.generator is None:  # called outside the trainer: seed from the global torch RNG
            self.on_epoch_start(0, int(torch.randint(0, 2**31 - 1, (1,))))
        rows = self.rows(batch["users"])
        mu, logvar = self.encode(rows, drop=True)
        epsilon = torch.randn(mu.shape, generator=self.generator, device=mu.device)
        z = mu + epsilon * torch.exp(0.5 * logvar)
        return multvae_losses(self.decoder(z), rows, mu, logvar, self.beta)

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        def score(user_index: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                mu, _ = self.encode(self.rows(user_index), drop=False)
                return self.decoder(mu)

        return score

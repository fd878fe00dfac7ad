"""PopDRO / PDRO (Zhao et al., CIKM 2023, "Popularity-aware Distributionally Robust Optimization for
Recommendation System"; Polaris-JZ/PDRO ``main.py``, ``model.py``, ``dataloader.py``), on the item groups of
``method.groups`` as in BiFair's comparison (the source groups samples in each batch by their scores).

Stages. The training period is cut into E equal-width time windows, stage(t) = floor((t - t_min) / width) with
width = ceil((t_max - t_min) / E) (``get_stage``); c_i(s) = share of stage s's training interactions that hit
item i (``get_item_inter``).

Popularity predictor (``PopPredictor``): p_i(s) = c_i(s-1) + a (c_i(s-1) - c_i(s-2)) for s >= 2; the source's
backward-extrapolated padding makes p_i(0) = c_i(0) and p_i(1) = c_i(1). With ``popularity_scores`` the
model's cosine similarities become act(cos) (1 + p_i(s))^gamma (``bpr_loss``/``getUsersRating``) before the
InfoNCE temperature, with s the stage of the training pair; ranking uses s = E, extrapolated from the training
stages only (the source ranks test with the validation period's counts, which this per-user split does not
have).

Group weights, every step (``main.py``), for groups g and stages e:
    loss_ge = sum of the losses of the batch's samples of group g in stage e (membership-weighted), n_ge their
    count; u_ge = grad loss_ge / ||grad loss_ge|| w.r.t. the item representations (``trend_gradients=items``,
    as the source, which differentiates w.r.t. its item-embedding table ``embedding_item.weight``: the item
    embedding table of ID-based models, the projector's item outputs of LM-vector models) or w.r.t. all
    trainable parameters (``trend_gradients=parameters``); G_ge = u_ge (loss_ge/n_ge)^p;
    beta = softmax_e(exp((e - E) k));
    performance L_g = sum_e loss_ge / n_g (the group's mean loss);
    trend T_g = (mean_e G_ge) . (mean_{g',e} beta_e G_g'e);
    Ltilde_g = (1 - eps) L_g + eps T_g;
    EMA_g <- (1 - alpha) EMA_g + alpha Ltilde_g   (absent groups keep EMA_g, as the source);
    w_g <- w_g exp(step EMA_g), w <- w / sum w;   loss = sum_g w_g EMA_g.
As in the source the unit gradients are constants while the (loss_ge/n_ge)^p factors and the current
Ltilde_g carry gradients; w is treated as a constant (the source also lets gradients flow through w).

Defaults: E = 4 stages, gamma = 3 (popularity factor strength), eps = 0.3 (trend strength) from BiFair
App. B.4; alpha = 0.3, step = 0.17, a = 0.2, k = 1, p = 1, act = ELU from the source's parse.py. Cost: one
backward per (group, stage) cell present in the batch (with ``items`` on LM-vector models only through the
graph-and-loss head after the projector), then one for the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod, TrainContext
from fairbench.methods.grouping import GroupKind, batch_membership, flat_gradient, trainable_parameters
from fairbench.models.base import Batch, Recommender

Activation = Literal["elu", "tanh", "sigmoid"]


class StageClock:
    """Training stage of a timestamp: E equal-width windows over the training period (PDRO ``get_stage``)."""

    def __init__(self, timestamps: torch.Tensor, n_stages: int) -> None:
        t_min, t_max = float(timestamps.min()), float(timestamps.max())
        self.start, self.n_stages = t_min, n_stages
        self.width = max(math.ceil((t_max - t_min) / n_stages), 1)

    def __call__(self, timestamps: torch.Tensor) -> torch.Tensor:
        stage = torch.floor((timestamps.double() - self.start) / self.width).long()
        return stage.clamp(0, self.n_stages - 1)


def stage_popularity(items: torch.Tensor, stages: torch.Tensor, n_items: int, n_stages: int) -> torch.Tensor:
    """c [I, E]: c_i(s) = (interactions with i in stage s) / (all interactions in stage s)."""
    counts = torch.zeros(n_items, n_stages, dtype=torch.float64, device=items.device)
    counts.index_put_((items, stages), torch.ones_like(items, dtype=torch.float64), accumulate=True)
    return (counts / counts.sum(0).clamp(min=1)).float()


def predicted_popularity(shares: torch.Tensor, strength: float) -> torch.Tensor:
    """p [I, E + 1] for stages 0..E: p(0) = c(0), p(1) = c(1), p(s) = c(s-1) + a (c(s-1) - c(s-2)), s >= 2."""
    n_stages = shares.shape[1]
    previous, before = shares[:, 1:n_stages], shares[:, : n_stages - 1]
    extrapolated = previous + strength * (previous - before)  # stages 2..E
    return torch.cat([shares[:, :2], extrapolated], dim=1)


class PopularityAdjustment(nn.Module):
    """PDRO's popularity-aware score act(cos) (1 + p_i(s))^gamma (a model ``score_adjustment``)."""

    def __init__(
        self, predicted: torch.Tensor, clock: StageClock, gamma: float, activation: Activation
    ) -> None:
        super().__init__()
        self.register_buffer("predicted", predicted, persistent=False)
        self.clock, self.gamma = clock, gamma
        self.activation = {"elu": nn.functional.elu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]

    def forward(
        self, similarity: torch.Tensor, items: torch.Tensor | None, batch: Batch | None
    ) -> torch.Tensor:
        ranking_stage = self.predicted.shape[1] - 1
        if batch is None:
            popularity = (
                self.predicted[:, ranking_stage] if items is None else self.predicted[items, ranking_stage]
            )
        else:
            stages = self.clock(batch["timestamps"])
            popularity = self.predicted[items, stages[:, None].expand_as(items)]
        return self.activation(similarity) * (1 + popularity) ** self.gamma


class PopDRO(FairnessMethod):
    """Popularity-aware group DRO with a shifting-trend term (see the module docstring)."""

    needs_groups = True
    needs_timestamps = True

    def __init__(
        self,
        groups: GroupKind = "popularity",
        stages: int = 4,
        gamma: float = 3.0,
        epsilon: float = 0.3,
        alpha: float = 0.3,
        step_size: float = 0.17,
        predict_strength: float = 0.2,
        env_k: float = 1.0,
        p: float = 1.0,
        activation: Activation = "elu",
        popularity_scores: bool = True,
        trend_gradients: Literal["items", "parameters"] = "items",
    ) -> None:
        if trend_gradients not in ("items", "parameters"):
            raise UserError(f"popdro: trend_gradients must be items or parameters, got {trend_gradients}")
        self.trend_gradients = trend_gradients
        if stages < 2:
            raise UserError(f"popdro: stages must be >= 2 (the popularity predictor needs two), got {stages}")
        if not 0 < alpha <= 1:
            raise UserError(f"popdro: alpha must be in (0, 1], got {alpha}")
        self.groups, self.stages, self.gamma, self.epsilon = groups, stages, gamma, epsilon
        self.alpha, self.step_size, self.predict_strength = alpha, step_size, predict_strength
        self.env_k, self.p, self.activation, self.popularity_scores = env_k, p, activation, popularity_scores

    def required_capabilities(self) -> dict[str, str]:
        needs = super().required_capabilities()
        if self.popularity_scores:
            needs["score_adjustment"] = (
                "its popularity-aware scores adjust the model's scores (set method.popularity_scores=false "
                "to keep only the DRO part)"
            )
        return needs

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        assert context.item_groups is not None
        if context.train_timestamps is None or context.train_items is None:
            raise UserError("popdro needs the timestamp of every training interaction; this dataset has none")
        device = context.item_groups.device
        self.clock = StageClock(context.train_timestamps, self.stages)
        n_groups = context.item_groups.shape[1]
        self.ema = torch.zeros(n_groups, device=device)
        self.weights = torch.full((n_groups,), 1.0 / n_groups, device=device)
        ages = torch.arange(self.stages, dtype=torch.float64) - self.stages
        self.stage_weights = torch.softmax(torch.exp(ages * self.env_k), dim=0).float().to(device)
        if self.popularity_scores:
            if not hasattr(model, "score_adjustment"):
                raise UserError(
                    "popdro's popularity-aware scores need a model with a score_adjustment hook (alpharec, "
                    f"linear); "
                    f"{type(model).__name__} has none: set method.popularity_scores=false to keep only the "
                    "DRO part"
                )
            items = context.train_items.to(device)
            shares = stage_popularity(
                items, self.clock(context.train_timestamps.to(device)), context.n_items, self.stages
            )
            predicted = predicted_popularity(shares, self.predict_strength)
            model.score_adjustment = PopularityAdjustment(predicted, self.clock, self.gamma, self.activation)

    def trend_terms(
        self,
        cell_losses: torch.Tensor,
        cell_counts: torch.Tensor,
        gradient: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """T_g [G] from the per-(group, stage) loss sums [G, E]; ``gradient(loss)`` is the flat gradient of a
        cell's loss (one backward per non-empty cell)."""
        n_groups, n_stages = cell_losses.shape
        flat_losses, flat_counts = cell_losses.reshape(-1), cell_counts.reshape(-1)
        filled = torch.nonzero(flat_counts > 0).flatten().tolist()
        units = torch.stack([(g := gradient(flat_losses[cell])) / (g.norm() + 1e-16) for cell in filled])
        scales = torch.zeros_like(flat_losses)
        scales[filled] = (flat_losses[filled] / flat_counts[filled]) ** self.p
        gram = torch.zeros(flat_losses.numel(), flat_losses.numel(), device=units.device)
        index = torch.tensor(filled, dtype=torch.long, device=units.device)
        gram[index[:, None], index[None, :]] = units @ units.T
        beta = self.stage_weights.repeat(n_groups)  # beta_e of every cell (g, e), g-major
        overall = gram @ (beta * scales) / (n_groups * n_stages)  # u_ge . mean_{g'e'} beta_e' G_g'e'
        return (scales * overall).reshape(n_groups, n_stages).sum(1) / n_stages

    def losses_and_gradient(
        self, model: Recommender, batch: Batch
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Per-sample losses [B] and the gradient function of the trend term (see ``trend_gradients``)."""
        if self.trend_gradients == "items" and callable(getattr(model, "encode", None)):
            encoding = model.encode()  # type: ignore[operator]
            n_users = encoding.shape[0] - model.n_items  # type: ignore[attr-defined]
            losses = model.losses_from_encoding(encoding, batch)  # type: ignore[operator]

            def item_rows(loss: torch.Tensor) -> torch.Tensor:
                return flat_gradient(loss, [encoding], retain_graph=True)[n_users * encoding.shape[1] :]

            return losses, item_rows
        sets = model.parameter_sets()
        params = (
            sets["item_embeddings"]
            if self.trend_gradients == "items" and "item_embeddings" in sets
            else trainable_parameters(model)
        )
        return model.sample_losses(batch), lambda loss: flat_gradient(loss, params, retain_graph=True)

    def training_step(
        self, model: Recommender, batch: Batch, optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, float]:
        membership = batch_membership(batch, "popdro")
        losses, gradient = self.losses_and_gradient(model, batch)
        stage = self.clock(batch["timestamps"])
        in_stage = nn.functional.one_hot(stage, self.stages).to(losses.dtype)  # [B, E]
        cells = membership.to(losses.dtype)[:, :, None] * in_stage[:, None, :]  # [B, G, E]
        cell_losses = torch.einsum("bge,b->ge", cells, losses)
        cell_counts = cells.sum(0)
        group_counts = membership.sum(0).to(losses.dtype)
        present = group_counts > 0
        if not bool(present.any()):  # only items in no group: no group objective, no update
            return {"loss": float(losses.detach().mean())}
        performance = cell_losses.sum(1) / (group_counts + 1e-16)
        trend = self.trend_terms(cell_losses, cell_counts.detach(), gradient)
        current = (1 - self.epsilon) * performance + self.epsilon * trend
        ema = torch.where(present, (1 - self.alpha) * self.ema + self.alpha * current, self.ema)
        weights = self.weights * torch.exp(self.step_size * ema.detach())
        self.weights = weights / weights.sum()
        loss = (self.weights * ema).sum()
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
        self.ema = ema.detach()
        return {"loss": float(losses.detach().mean()), "dro_loss": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"ema": self.ema.detach().cpu().clone(), "weights": self.weights.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].to(self.ema.device)
        self.weights = state["weights"].to(self.weights.device)

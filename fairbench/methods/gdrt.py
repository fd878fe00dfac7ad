"""GDRT: group-DRO tuning over target-token groups (Wang et al., "Mitigating Language Bias in LLM-based
Recommendation via Group Distributionally Robust Optimization-based Tuning", arXiv 2510.10978, 2025; code
announced at WANGBohaO-jpg/GDRT, not public). METHODS.md 4.

Supervised fine-tuning makes the LM lean on auxiliary tokens (the task description, the already generated
prefix of the title) rather than the user's history. GDRT groups the target tokens by how predictable they
are from the auxiliary context alone and trains with a KL-regularised group DRO over the groups:

1. once, before training: r_t = P_ref(y_t | auxiliary prompt, y_<t) for every target token of the training
   samples, with the auxiliary prompt = the prompt with the user's history removed (``context``) and the
   reference model = the base LM before SFT (``reference: base``) or a warm-up adapter (a path); cached
   under ``<cache_dir>/gdrt/<key>/`` (``log_probs.npy`` + ``meta.json``), key = sha256 of the reference's
   identity (+ adapter contents), the context and the training token ids (which fix template, tokenizer and
   samples);
2. G groups by r_t (``n_groups``): quantile cuts (``cuts: quantile``, G groups of equal token counts over the
   training tokens) or fixed probability thresholds (``cuts: fixed``, ``thresholds``: G-1 increasing values);
   group 0 = the tokens least predictable from the auxiliary context;
3. every step, L_g = mean cross-entropy of the batch's tokens in group g (tokens pooled over samples) and

       L = tau log sum_g p_g exp(L_g / tau),    dL/dL_g = w_g = p_g exp(L_g / tau) / sum_h p_h exp(L_h / tau),

   the closed form of max_q sum_g q_g L_g - tau KL(q || p); p renormalised over the groups present in the
   batch. p (``prior``): ``train_share`` = the group's share of all training target tokens (default; about
   1/G with quantile cuts), ``batch_share`` (tau -> inf gives the batch's token-mean loss), ``uniform``.
   ``group_loss: streaming`` replaces L_g in the weights by an exponential moving average L~_g <- (1 -
   beta) L~_g + beta L_g over the batches where g is present (first value = first batch loss; beta =
   ``streaming_rate``) and returns sum_g w_g L_g with w constant (the same gradient when L~ = L).

None of these choices is published; each is a config key (conf/method/gdrt.yaml) recorded in the run's
config. The objective goes through the trainer (:class:`~fairbench.methods.base.Objective`), so gradient
accumulation, precision and clipping apply. The epoch's mean group weights and losses are logged and kept
in ``weight_log``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fairbench.errors import UserError
from fairbench.methods.base import FairnessMethod, Objective, TrainContext
from fairbench.models.base import Batch, Recommender

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the cached reference scores' layout (part of the cache key)."""


def token_groups(
    scores: np.ndarray,
    n_groups: int,
    cuts: Literal["quantile", "fixed"] = "quantile",
    thresholds: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Group of every token from its score r_t: (labels int64 [N] in 0..G-1, edges float64 [G-1]).

    ``quantile``: edges = the k/G quantiles of ``scores`` (numpy's linear interpolation), k = 1..G-1;
    ``fixed``: edges = ``thresholds``. Token t is in group #{edges e : e <= r_t} (a token equal to an edge
    goes to the upper group), so group 0 holds the lowest scores. Ties can leave a quantile group empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if cuts == "quantile":
        edges = (
            np.quantile(scores, np.arange(1, n_groups) / n_groups) if len(scores) else np.zeros(n_groups - 1)
        )
    elif cuts == "fixed":
        edges = np.asarray(thresholds if thresholds is not None else [], dtype=np.float64)
        if len(edges) != n_groups - 1 or np.any(np.diff(edges) <= 0):
            raise UserError(
                f"method.thresholds must be {n_groups - 1} increasing values for n_groups={n_groups}, "
                f"got {thresholds!r}"
            )
    else:
        raise UserError(f"method.cuts must be quantile or fixed, got {cuts!r}")
    return np.searchsorted(edges, scores, side="right").astype(np.int64), edges


def group_token_losses(
    losses: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_g = mean of the masked token losses of group g [G] (0 where absent), token counts [G]).

    ``losses`` [B, T] float, ``mask`` [B, T] bool, ``labels`` [B, T] int64 group of every token."""
    values, groups = losses[mask], labels[mask]
    sums = values.new_zeros(n_groups).index_add(0, groups, values)
    counts = torch.bincount(groups, minlength=n_groups).to(values.dtype)
    return sums / counts.clamp(min=1), counts


def kl_dro(
    group_losses: torch.Tensor, prior: torch.Tensor, present: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, w): L = tau log sum_{g present} (p_g / P) exp(L_g / tau), P = sum_{g present} p_g, and
    w_g = dL/dL_g = p_g exp(L_g / tau) / sum_h p_h exp(L_h / tau) (0 for absent groups)."""
    log_prior = torch.log(prior.to(group_losses.dtype))
    logits = torch.where(present, log_prior + group_losses / tau, torch.full_like(group_losses, -torch.inf))
    log_norm = torch.logsumexp(torch.where(present, log_prior, torch.full_like(log_prior, -torch.inf)), 0)
    objective = tau * (torch.logsumexp(logits, 0) - log_norm)
    return objective, torch.softmax(logits, 0)


class GDRT(FairnessMethod):
    """KL-regularised group DRO over target-token groups (see the module docstring)."""

    def __init__(
        self,
        n_groups: int = 4,
        cuts: Literal["quantile", "fixed"] = "quantile",
        thresholds: list[float] | None = None,
        tau: float = 1.0,
        prior: Literal["train_share", "batch_share", "uniform"] = "train_share",
        group_loss: Literal["batch", "streaming"] = "batch",
        streaming_rate: float = 0.1,
        reference: str = "base",
        context: Literal["empty_history", "no_input"] = "empty_history",
        cache_dir: str | None = None,
        groups: str | None = None,
    ) -> None:
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
            raise UserError(f"method.n_groups must be an integer >= 1, got {n_groups!r}")
        if not tau > 0:
            raise UserError(f"method.tau must be > 0, got {tau!r}")
        if prior not in ("train_share", "batch_share", "uniform"):
            raise UserError(f"method.prior must be train_share, batch_share or uniform, got {prior!r}")
        if group_loss not in ("batch", "streaming"):
            raise UserError(f"method.group_loss must be batch or streaming, got {group_loss!r}")
        if not 0 < streaming_rate <= 1:
            raise UserError(f"method.streaming_rate must be in (0, 1], got {streaming_rate!r}")
        if context not in ("empty_history", "no_input"):
            raise UserError(f"method.context must be empty_history or no_input, got {context!r}")
        token_groups(np.zeros(0), n_groups, cuts, None if thresholds is None else list(thresholds))
        self.n_groups, self.cuts, self.tau = n_groups, cuts, float(tau)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.prior_kind, self.group_loss, self.streaming_rate = prior, group_loss, float(streaming_rate)
        self.reference, self.auxiliary_context, self.cache_dir = reference, context, cache_dir
        self.groups = None  # token groups, not item groups: ``groups`` is accepted (sweeps set it for every
        # method, as for ERM) and ignored
        self.weight_log: list[dict] = []

    def required_capabilities(self) -> dict[str, str]:
        return {"token_losses": "needs per-token losses and token log-probabilities with and without history"}

    # ------------------------------------------------------------------------------------------ setup

    def setup(self, model: Recommender, context: TrainContext) -> None:
        super().setup(model, context)
        started = time.perf_counter()
        log_probs, counts = self.reference_log_probs(model)
        labels, edges = token_groups(np.exp(log_probs), self.n_groups, self.cuts, self.thresholds)
        device = context.item_train_counts.device
        self.labels = torch.from_numpy(labels).to(device)
        self.offsets = torch.from_numpy(np.cumsum(counts) - counts).to(device)
        share = np.bincount(labels, minlength=self.n_groups) / max(len(labels), 1)
        self.edges, self.token_share = edges, share
        self.prior = (
            torch.from_numpy(share) if self.prior_kind == "train_share" else torch.ones(self.n_groups)
        ).to(device, torch.float32)
        self.stream = torch.zeros(self.n_groups, device=device)
        self.seen = torch.zeros(self.n_groups, dtype=torch.bool, device=device)
        self._reset_epoch_sums(device)
        log.info(
            "gdrt: %d training target tokens in %d groups by P_ref(y_t | prompt without history, y_<t) "
            "(edges %s, token shares %s), %.1f s",
            len(labels),
            self.n_groups,
            [round(float(e), 4) for e in edges],
            [round(float(x), 3) for x in share],
            time.perf_counter() - started,
        )

    def reference_log_probs(self, model: Recommender) -> tuple[np.ndarray, np.ndarray]:
        """log P_ref of every training target token (flat, sample order) and tokens per sample; read from
        the cache when it holds them."""
        adapter = self._reference_adapter()
        folder = self._cache_folder(model, adapter)
        if folder is not None and (folder / "meta.json").is_file():
            try:
                meta = json.loads((folder / "meta.json").read_text())
                log_probs = np.load(folder / "log_probs.npy", allow_pickle=False)
                counts = np.load(folder / "counts.npy", allow_pickle=False)
                if meta.get("format") == CACHE_FORMAT and int(counts.sum()) == len(log_probs):
                    log.info("gdrt: reference token scores from the cache %s", folder)
                    return log_probs, counts
            except (OSError, ValueError) as err:
                log.warning("gdrt: unreadable cache %s (%s); recomputing", folder, err)
        with model.reference_model(adapter):
            log_probs, counts = model.target_log_probs("train", self.auxiliary_context)
        if folder is not None:
            _write_cache(
                folder,
                log_probs,
                counts,
                {
                    "format": CACHE_FORMAT,
                    "reference": self.reference,
                    "context": self.auxiliary_context,
                    "tokens": int(len(log_probs)),
                },
            )
        return log_probs, counts

    def _reference_adapter(self) -> dict[str, torch.Tensor] | None:
        """None for the base model; else the adapter tensors of a warm-up checkpoint (a .safetensors file or
        a run directory holding checkpoints/best.safetensors)."""
        if self.reference == "base":
            return None
        path = Path(self.reference).expanduser()
        if path.is_dir():
            path = path / "checkpoints" / "best.safetensors"
        if not path.is_file() or path.suffix != ".safetensors":
            raise UserError(
                f"method.reference={self.reference!r}: expected 'base', a run directory with "
                "checkpoints/best.safetensors, or an adapter .safetensors file"
            )
        from safetensors.torch import load_file

        return load_file(str(path))

    def _cache_folder(self, model: Recommender, adapter: dict[str, torch.Tensor] | None) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256()
        identity = {
            "format": CACHE_FORMAT,
            "backbone": getattr(model, "backbone_fingerprint", type(model).__name__),
            "context": self.auxiliary_context,
            "template": repr(getattr(model, "template", None)),
        }
        digest.update(json.dumps(identity, sort_keys=True).encode())
        for name in sorted(adapter or {}):
            digest.update(name.encode())
            digest.update(adapter[name].float().numpy().tobytes())
        tokens = model.split_tokens("train")
        for array in (tokens.input_ids, tokens.labels, tokens.offsets):
            digest.update(np.ascontiguousarray(array).tobytes())
        return Path(self.cache_dir).expanduser() / "gdrt" / digest.hexdigest()[:20]

    # ------------------------------------------------------------------------------------------- step

    def objective(self, model: Recommender, batch: Batch) -> Objective:
        """L = tau log sum_g p_g exp(L_g / tau) over the batch's token groups (module docstring)."""
        losses, mask = model.token_losses(batch)
        index = batch["sample_index"].to(self.offsets.device)
        position = self.offsets[index][:, None] + torch.arange(losses.shape[1], device=index.device)[None, :]
        labels = self.labels[position.clamp(max=len(self.labels) - 1)].to(losses.device)
        values, counts = group_token_losses(losses, mask.to(losses.device), labels, self.n_groups)
        present = counts > 0
        prior = counts / counts.sum() if self.prior_kind == "batch_share" else self.prior.to(losses.device)
        if self.group_loss == "batch":
            loss, weights = kl_dro(values, prior, present, self.tau)
        else:
            with torch.no_grad():
                observed = values.detach()
                first = present & ~self.seen
                self.stream = torch.where(
                    first,
                    observed,
                    torch.where(
                        present,
                        (1 - self.streaming_rate) * self.stream + self.streaming_rate * observed,
                        self.stream,
                    ),
                )
                self.seen |= present
                _, weights = kl_dro(self.stream, prior, present, self.tau)
            loss = (weights * values).sum()
        with torch.no_grad():
            self.weight_sum += weights.detach()
            self.loss_sum += torch.where(present, values.detach(), torch.zeros_like(values))
            self.loss_count += present
            self.step_count += 1
        counts_per_row = mask.sum(dim=1).clamp(min=1)
        sample_mean = (losses * mask).sum(dim=1) / counts_per_row
        return Objective(
            loss, {"loss": float(sample_mean.detach().mean()), "gdrt_loss": float(loss.detach())}
        )

    # ------------------------------------------------------------------------------------------ epochs

    def _reset_epoch_sums(self, device: torch.device | str) -> None:
        self.weight_sum = torch.zeros(self.n_groups, device=device)
        self.loss_sum = torch.zeros(self.n_groups, device=device)
        self.loss_count = torch.zeros(self.n_groups, device=device)
        self.step_count = 0

    def on_epoch_end(self, epoch: int) -> None:
        """Log the epoch's mean group weights (over its steps; 0 where a group is absent) and mean group
        losses (over the steps where the group is present), kept in ``weight_log``."""
        weights = (self.weight_sum / max(self.step_count, 1)).tolist()
        losses = [
            round(total / count, 4) if count else None
            for total, count in zip(self.loss_sum.tolist(), self.loss_count.tolist(), strict=True)
        ]
        self.weight_log.append({"epoch": epoch, "weights": weights, "losses": losses})
        log.info(
            "gdrt epoch %d: mean group weights %s, mean group losses %s",
            epoch,
            [round(w, 4) for w in weights],
            losses,
        )
        self._reset_epoch_sums(self.weight_sum.device)

    def state_dict(self) -> dict:
        return {"stream": self.stream.detach().cpu().clone(), "seen": self.seen.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.stream = state["stream"].to(self.stream.device)
        self.seen = state["seen"].to(self.seen.device)


def _write_cache(folder: Path, log_probs: np.ndarray, counts: np.ndarray, meta: dict) -> None:
    """log_probs.npy, counts.npy and meta.json (written last) in ``folder``, via a temporary folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    np.save(tmp / "log_probs.npy", np.asarray(log_probs, np.float32))
    np.save(tmp / "counts.npy", np.asarray(counts, np.int64))
    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote it first
        for child in tmp.iterdir():
            child.unlink()
        tmp.rmdir()

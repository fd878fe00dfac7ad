"""The language-bias diagnostic of GDRT (Wang et al. 2025, arXiv 2510.10978): how much a fine-tuned LM's
target tokens depend on the user's history rather than on the auxiliary tokens (task description, title
prefix).

For every target token y_t of a split's samples (response + EOS), with the trained model (its adapter
restored from the run directory):

    with     = log p(y_t | prompt with the history, y_<t)
    without  = log p(y_t | prompt without the history, y_<t)       (the same auxiliary prompt as GDRT)
    gain     = with - without                                       (nats the history adds)
    share    = gain / -without = 1 - NLL_with / NLL_without         (part of the auxiliary-only surprisal
                                                                     that the history removes)

reported as means over the tokens of each token group and over all tokens. The groups are GDRT's: quantile
cuts of r_t = P_ref(y_t | prompt without history, y_<t) under the base LM (adapters disabled), here with the
quantiles of the analysed split's own tokens, so the groups are the same for every run on the same samples
and backbone (an ERM and a GDRT run are compared on identical groups). Group 0 = least predictable from the
auxiliary context. For an untrained model (fresh adapter = base model) the groups are cut on the same
numbers as ``without``, so per-group gains carry a selection effect (regression to the mean): compare runs on
the same groups. Numbers of a tiny random test model mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from fairbench.errors import UserError
from fairbench.methods.gdrt import token_groups

COLUMNS = ["group", "tokens", "ref_p_min", "ref_p_max", "logp_with", "logp_without", "gain", "share"]


def language_bias_table(
    with_history: np.ndarray,
    without_history: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    n_groups: int,
) -> pd.DataFrame:
    """One row per token group and one for all tokens: token count, range of P_ref, mean log-probabilities
    with / without history, gain and share (module docstring). Flat per-token inputs of equal length."""
    frame = pd.DataFrame(
        {
            "group": labels.astype(np.int64),
            "ref_p": np.exp(reference.astype(np.float64)),
            "logp_with": with_history.astype(np.float64),
            "logp_without": without_history.astype(np.float64),
        }
    )
    overall = frame.assign(group="all")
    rows = pd.concat([frame.assign(group=frame["group"].astype(str)), overall])
    out = rows.groupby("group", sort=False).agg(
        tokens=("ref_p", "size"),
        ref_p_min=("ref_p", "min"),
        ref_p_max=("ref_p", "max"),
        logp_with=("logp_with", "mean"),
        logp_without=("logp_without", "mean"),
    )
    order = [str(g) for g in range(n_groups) if str(g) in out.index] + ["all"]
    out = out.loc[order].reset_index()
    out["gain"] = out["logp_with"] - out["logp_without"]
    out["share"] = out["gain"] / -out["logp_without"]
    return out[COLUMNS]


def language_bias(
    model: Any,
    split: str = "test",
    n_groups: int = 4,
    context: str = "empty_history",
    limit: int | None = None,
) -> pd.DataFrame:
    """:func:`language_bias_table` of a model with the ``token_losses`` capability on a split's (first
    ``limit``) samples: three scoring passes (with history, without, base model without)."""
    with_history, counts = model.target_log_probs(split, "history", limit)
    without_history, _ = model.target_log_probs(split, context, limit)
    with model.reference_model(None):
        reference, _ = model.target_log_probs(split, context, limit)
    labels, _ = token_groups(np.exp(reference), n_groups, "quantile")
    return language_bias_table(with_history, without_history, labels, reference, n_groups)


def analyze_run(
    run_dir: Path,
    split: str = "test",
    n_groups: int | None = None,
    limit: int | None = None,
    overrides: list[str] | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Rebuild a finished run's model from ``run_dir/.hydra/config.yaml`` (+ ``overrides``, e.g.
    ``device=cpu``), restore its best adapter (``checkpoints/best.safetensors``) and write
    ``language_bias_<split>.csv`` / ``.json`` / ``.png`` into the run directory. ``n_groups`` and the
    auxiliary context default to the run's GDRT settings (4 groups, empty_history for other methods)."""
    from safetensors.torch import load_file

    from fairbench.capabilities import model_options_with
    from fairbench.models.base import model_capabilities
    from fairbench.pipeline import prepare

    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    adapter_path = run_dir / "checkpoints" / "best.safetensors"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a fairbench run directory (no .hydra/config.yaml)")
    cfg = OmegaConf.load(config_path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    from hydra.utils import get_object

    model_cls = get_object(cfg.model._target_)
    if "token_losses" not in model_capabilities(model_cls):
        raise UserError(
            f"the language-bias diagnostic needs token log-probabilities with and without the history, which "
            f"model {model_cls.__name__} does not give (capability 'token_losses'; models that fit: "
            f"{', '.join(model_options_with({'token_losses'}))})"
        )
    if not adapter_path.is_file():
        raise UserError(
            f"{run_dir} has no trained adapter (checkpoints/best.safetensors); train with "
            "trainer.checkpoint=true"
        )
    method = cfg.method
    gdrt = str(method.get("_target_", "")).endswith(".GDRT")
    n_groups = n_groups or (int(method.n_groups) if gdrt else 4)
    context = str(method.context) if gdrt else "empty_history"
    if n_groups < 1:
        raise UserError(f"--groups must be >= 1, got {n_groups}")
    exp = prepare(cfg)
    model = exp.model.to(exp.device)
    model.load_trainable_state_dict(load_file(str(adapter_path)))
    model.eval()
    table = language_bias(model, split, n_groups, context, limit)
    from fairbench.files import write_text_atomic
    from fairbench.report.results import write_csv

    stem = run_dir / f"language_bias_{split}"
    write_csv(stem.with_suffix(".csv"), table)
    payload = {
        "split": split,
        "context": context,
        "n_groups": n_groups,
        "samples": limit,
        "rows": table.to_dict("records"),
    }
    write_text_atomic(stem.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    plot_language_bias(table, stem.with_suffix(".png"), title=f"{split}: {run_dir.name}")
    return table, [stem.with_suffix(s) for s in (".csv", ".json", ".png")]


def plot_language_bias(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """Bars of the mean target-token log-probability with and without the history, per token group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(1.2 * len(table) + 2, 3.4))
    ax.bar(x - 0.2, table["logp_with"], 0.4, label="with history", color="#4c72b0")
    ax.bar(x + 0.2, table["logp_without"], 0.4, label="without history", color="#dd8452")
    ax.set_xticks(x, [str(g) for g in table["group"]])
    ax.set_xlabel("token group (0 = least predictable without history)")
    ax.set_ylabel("mean log p(target token)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""GDRT (token-group DRO) and the language-bias diagnostic: the closed-form objective and its weights vs hand
computation and autograd, token grouping by hand, per-token losses of BIGRec on a tiny random causal LM vs a
hand cross-entropy, the reference-score cache, a CLI run with the analysis of its run directory, and the
refusal of models without per-token losses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fairbench.analysis.language_bias import language_bias_table
from fairbench.config import compose_config
from fairbench.errors import UserError
from fairbench.methods.gdrt import GDRT, group_token_losses, kl_dro, token_groups
from fairbench.pipeline import check_before_work, prepare, train
from tests.helpers.cli import fairbench, single_run_dir


def tiny_overrides(model_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "experiment=bigrec",
        "method=gdrt",
        f"backbone.encoder.model={model_dir}",
        "backbone.name=tiny-llama",
        "dataset.protocol.max_train_samples=12",
        "dataset.protocol.max_valid_samples=4",
        "dataset.protocol.max_test_samples=6",
        "trainer.max_epochs=1",
        "trainer.accumulate_grad_batches=2",
        "model.max_new_tokens=4",
        "model.num_beams=2",
        "device=cpu",
        f"paths.cache_dir={cache}",
        *extra,
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gdrt-cache")


# ------------------------------------------------------------------------------------------ the objective


def test_kl_dro_matches_the_closed_form_and_its_gradient_is_the_weights():
    losses = torch.tensor([2.0, 0.5, 1.5, 3.0], dtype=torch.float64, requires_grad=True)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    present = torch.tensor([True, True, True, False])  # group 3 absent from the batch
    tau = 0.7
    objective, weights = kl_dro(losses, prior, present, tau)
    p = np.array([0.1, 0.2, 0.3]) / 0.6
    values = np.array([2.0, 0.5, 1.5])
    expected = tau * np.log(np.sum(p * np.exp(values / tau)))
    assert float(objective.detach()) == pytest.approx(expected, rel=1e-12)
    hand = p * np.exp(values / tau) / np.sum(p * np.exp(values / tau))
    np.testing.assert_allclose(weights.detach().numpy(), [*hand, 0.0], rtol=1e-12)
    objective.backward()
    np.testing.assert_allclose(losses.grad.numpy(), weights.detach().numpy(), rtol=1e-12)
    tilt = (weights[:3] / prior[:3]).detach()
    assert tilt[0] > tilt[2] > tilt[1]  # the worse a group does, the more it is tilted up from its prior


def test_kl_dro_tends_to_the_prior_weighted_mean_for_large_tau_and_to_the_max_for_small():
    losses = torch.tensor([2.0, 0.5, 1.5], dtype=torch.float64)
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    present = torch.ones(3, dtype=torch.bool)
    large, weights = kl_dro(losses, prior, present, 1e6)
    assert float(large) == pytest.approx(float(prior @ losses), rel=1e-5)
    np.testing.assert_allclose(weights.numpy(), prior.numpy(), rtol=1e-5)
    small, weights = kl_dro(losses, prior, present, 1e-3)
    assert float(small) == pytest.approx(2.0, abs=1e-2) and float(weights[0]) == pytest.approx(1.0)


def test_group_token_losses_are_token_means_per_group():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    labels = torch.tensor([[0, 2, 0], [2, 0, 1]])  # the masked slot's label (1) must not count
    values, counts = group_token_losses(losses, mask, labels, 3)
    np.testing.assert_allclose(values.numpy(), [(1 + 3 + 5) / 3, 0.0, (2 + 4) / 2])
    np.testing.assert_array_equal(counts.numpy(), [3, 0, 2])


def test_token_groups_by_quantiles_and_fixed_thresholds_by_hand():
    scores = np.array([0.8, 0.1, 0.4, 0.3, 0.2, 0.6, 0.5, 0.7])
    labels, edges = token_groups(scores, 4)
    np.testing.assert_allclose(edges, [0.275, 0.45, 0.625])  # numpy's linear quantiles of 0.1..0.8
    np.testing.assert_array_equal(labels, [3, 0, 1, 1, 0, 2, 2, 3])
    labels, edges = token_groups(scores, 3, "fixed", [0.3, 0.6])
    np.testing.assert_array_equal(labels, [2, 0, 1, 1, 0, 2, 1, 2])  # a score equal to an edge goes up
    with pytest.raises(UserError, match="2 increasing values"):
        token_groups(scores, 3, "fixed", [0.6, 0.3])
    with pytest.raises(UserError, match="tau"):
        GDRT(tau=0.0)


def test_language_bias_table_by_hand():
    with_history = np.log(np.array([0.5, 0.25, 0.8, 0.4]))
    without = np.log(np.array([0.25, 0.25, 0.4, 0.1]))
    reference = np.log(np.array([0.1, 0.2, 0.6, 0.9]))
    table = language_bias_table(with_history, without, np.array([0, 0, 1, 1]), reference, 2)
    assert list(table["group"]) == ["0", "1", "all"] and list(table["tokens"]) == [2, 2, 4]
    row = table.iloc[0]
    assert row["logp_with"] == pytest.approx((np.log(0.5) + np.log(0.25)) / 2)
    assert row["gain"] == pytest.approx(np.log(0.5 / 0.25) / 2)
    assert row["share"] == pytest.approx(row["gain"] / -np.log(0.25))
    assert table.iloc[1]["ref_p_min"] == pytest.approx(0.6) and table.iloc[1]["ref_p_max"] == pytest.approx(
        0.9
    )


# ------------------------------------------------------------------------------------- on the tiny LM


def hand_log_probs(lm, ids: np.ndarray, n_prompt: int) -> np.ndarray:
    """log p(ids[t] | ids[<t]) for t >= n_prompt, from one unbatched forward pass."""
    with torch.no_grad():
        logits = lm(input_ids=torch.as_tensor(ids)[None]).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return np.array([float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids))])


def test_token_losses_and_log_probs_match_a_hand_cross_entropy(tiny_lm_dir, cache, single_thread):
    exp = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache)))
    model = exp.model.eval()
    tokens = model.train_tokens
    index = np.array([3, 0, 7])
    losses, mask = model.token_losses({"sample_index": torch.as_tensor(index)})
    assert losses.shape == mask.shape
    for row, n in enumerate(index):
        ids, _ = tokens.sample(n)
        expected = -hand_log_probs(model.lm, ids, int(tokens.prompt_lengths[n]))
        assert int(mask[row].sum()) == len(expected)
        np.testing.assert_allclose(
            losses[row, : len(expected)].detach().numpy(), expected, rtol=1e-4, atol=1e-5
        )
        assert not mask[row, len(expected) :].any()
    sample = model.sample_losses({"sample_index": torch.as_tensor(index)})
    torch.testing.assert_close(sample, (losses * mask).sum(1) / mask.sum(1))
    # with and without the history, flat in sample order
    with_history, counts = model.target_log_probs("test", "history")
    without, counts_aux = model.target_log_probs("test", "empty_history")
    np.testing.assert_array_equal(counts, counts_aux)
    test_tokens = model.split_tokens("test")
    prompt = model.auxiliary_prompt("empty_history")
    assert "### Input:\nThe user has watched the following movies before:\n " in prompt
    starts = np.cumsum(counts) - counts
    for n in (0, 5):
        ids, _ = test_tokens.sample(n)
        n_prompt = int(test_tokens.prompt_lengths[n])
        got = with_history[starts[n] : starts[n] + counts[n]]
        np.testing.assert_allclose(got, hand_log_probs(model.lm, ids, n_prompt), rtol=1e-4, atol=1e-5)
        aux_prompt = model.tokenizer(prompt)["input_ids"]
        aux_ids = np.concatenate([aux_prompt, ids[n_prompt:]])
        got = without[starts[n] : starts[n] + counts[n]]
        np.testing.assert_allclose(
            got, hand_log_probs(model.lm, aux_ids, len(aux_prompt)), rtol=1e-4, atol=1e-5
        )


def test_gdrt_trains_through_the_trainer_and_reads_its_cached_reference_scores(
    tiny_lm_dir, cache, single_thread, tmp_path
):
    exp = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache, "trainer.max_epochs=2")))
    model, method = exp.model, exp.method
    assert isinstance(method, GDRT) and not method.combines_gradients
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    train(exp, tmp_path / "run")
    assert any(not torch.equal(before[k], v) for k, v in model.trainable_state_dict().items())
    assert [entry["epoch"] for entry in method.weight_log] == [0, 1]
    assert all(sum(entry["weights"]) == pytest.approx(1.0) for entry in method.weight_log)
    # the reference is the base model: the cached scores equal a fresh base-model pass
    (folder,) = (cache / "gdrt").iterdir()
    cached = np.load(folder / "log_probs.npy")
    with model.reference_model(None):
        fresh, counts = model.target_log_probs("train", "empty_history")
    np.testing.assert_allclose(cached, fresh, rtol=1e-5, atol=1e-6)
    assert len(method.labels) == counts.sum() and np.bincount(method.labels.numpy(), minlength=4).min() > 0
    # cache hit: a new run reads the cached file (overwritten here with scores whose groups are known)
    planted = np.log(np.linspace(0.01, 0.99, len(cached))).astype(np.float32)[::-1].copy()
    np.save(folder / "log_probs.npy", planted)
    again = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache)))
    again.method.setup(again.model, _context(again))
    expected, _ = token_groups(np.exp(planted), 4)
    np.testing.assert_array_equal(again.method.labels.numpy(), expected)
    # another auxiliary context is another key
    other = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache, "method.context=no_input")))
    other.method.setup(other.model, _context(other))
    assert len(list((cache / "gdrt").iterdir())) == 2
    # the objective equals the closed form on the model's own token losses (eval mode: no dropout)
    model.eval()
    batch = {"sample_index": torch.arange(5)}
    objective = method.objective(model, batch)
    losses, mask = model.token_losses(batch)
    starts = method.offsets[:5, None] + torch.arange(losses.shape[1])[None]
    labels = method.labels[starts.clamp(max=len(method.labels) - 1)]
    values, n = group_token_losses(losses, mask, labels, 4)
    expected_loss, _ = kl_dro(values, method.prior, n > 0, method.tau)
    assert float(objective.loss.detach()) == pytest.approx(float(expected_loss.detach()), rel=1e-5)


def test_a_warm_up_adapter_as_reference_model(tiny_lm_dir, cache, single_thread, tmp_path):
    exp = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache, "trainer.lr=0.02")))
    model = exp.model
    initial = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    train(exp, tmp_path / "warm")
    warm = {k: v.clone() for k, v in model.trainable_state_dict().items()}  # the best adapter, as saved
    expected, _ = model.target_log_probs("train", "empty_history")
    model.load_trainable_state_dict(initial)
    method = GDRT(reference=str(tmp_path / "warm"))  # a run directory: its checkpoints/best.safetensors
    got, _ = method.reference_log_probs(model)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with model.reference_model(None):
        base, _ = model.target_log_probs("train", "empty_history")
    assert np.abs(got - base).max() > 1e-3  # far above the tolerance of the comparison above
    after = model.trainable_state_dict()  # the model's own adapter is back
    assert all(torch.equal(after[k], initial[k]) for k in initial) and warm
    with pytest.raises(UserError, match="method.reference"):
        GDRT(reference=str(tmp_path / "nowhere")).reference_log_probs(model)


def _context(exp):
    from fairbench.methods.base import TrainContext

    return TrainContext(
        n_users=exp.data.n_users,
        n_items=exp.data.n_items,
        item_groups=None,
        group_names=None,
        item_train_counts=torch.zeros(exp.data.n_items),
        steps_per_epoch=1,
        max_epochs=1,
        lr=1e-4,
        weight_decay=0.0,
    )


def test_gdrt_needs_a_model_with_token_losses_before_any_work():
    cfg = compose_config(
        ["dataset/protocol=sequential", "model=sasrec", "method=gdrt"], return_hydra_config=True
    )
    with pytest.raises(UserError, match="capability 'token_losses'.*models that fit: bigrec"):
        check_before_work(cfg)


def test_cli_gdrt_with_a_sequential_id_model_exits_2(tmp_path):
    result = fairbench(
        "train", "dataset/protocol=sequential", "model=sasrec", "method=gdrt", "device=cpu", out=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "token_losses" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_gdrt_run_then_language_bias_analysis(tmp_path, tiny_lm_dir):
    env = {"OMP_NUM_THREADS": "1"}
    result = fairbench("train", *tiny_overrides(tiny_lm_dir, tmp_path / "cache"), out=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/ndcg@10", "test/pop/mgu@5", "test/genre/mgu@5"} <= set(metrics)
    assert "gdrt epoch 0: mean group weights" in (result.stdout + result.stderr)
    result = fairbench("analyze", "language-bias", str(run_dir), "--max-samples", "4", out=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logp_without" in result.stdout
    payload = json.loads((run_dir / "language_bias_test.json").read_text())
    rows = {row["group"]: row for row in payload["rows"]}
    assert set(rows) <= {"0", "1", "2", "3", "all"} and payload["samples"] == 4
    assert rows["all"]["tokens"] == sum(r["tokens"] for g, r in rows.items() if g != "all")
    assert (run_dir / "language_bias_test.csv").is_file() and (run_dir / "language_bias_test.png").is_file()
    # a directory that is not a run: one message, exit 2
    result = fairbench("analyze", "language-bias", str(tmp_path / "nope"), out=tmp_path)
    assert result.returncode == 2 and "not a fairbench run directory" in result.stderr

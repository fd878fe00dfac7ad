"""IFairLRS: history/target group weights by hand (popularity and multi-genre), the per-sample and the public
code's loss reductions against a literal re-computation on a tiny causal LM, the reranking penalty and
lambda=0, lambda chosen on validation only, config mistakes, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fairbench.batches import SampleBatches
from fairbench.config import compose_config
from fairbench.data.instructions import training_batch
from fairbench.data.types import ItemGroups
from fairbench.errors import UserError
from fairbench.evaluation import EvalRows, MetricConfig, Ranking, evaluate_ranking
from fairbench.methods.base import TrainContext
from fairbench.methods.ifairlrs import (
    IFairLRS,
    history_target_weights,
    mean_group_weight,
    response_token_counts,
)
from fairbench.pipeline import check_before_work, prepare, train
from fairbench.postprocess.ifairlrs import IFairLRSRerank, base_scores, item_penalties, rerank
from tests.helpers.cli import fairbench, single_run_dir
from tests.test_bigrec import tiny_overrides

# ------------------------------------------------------------------------------------------------ weights


def test_popularity_weights_are_history_share_over_target_share_by_hand():
    # 5 items; groups: items 0,1 -> g0, items 2,3 -> g1, item 4 -> g2
    membership = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    histories = torch.tensor([[-1, 0, 2], [0, 1, 4], [2, 3, 3], [-1, -1, 4]])
    targets = torch.tensor([4, 2, 4, 0])
    weights, hist, target = history_target_weights(histories, targets, membership)
    # history items: 0,2 | 0,1,4 | 2,3,3 | 4 -> g0: 3, g1: 4, g2: 2 (9 in all); targets: g0 1, g1 1, g2 2 (4)
    assert hist.tolist() == [3, 4, 2] and target.tolist() == [1, 1, 2]
    expected = [(3 / 9) / (1 / 4), (4 / 9) / (1 / 4), (2 / 9) / (2 / 4)]
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    # one group per item: a sample's weight is its target's group weight
    samples = mean_group_weight(membership[targets], weights)
    np.testing.assert_allclose(
        samples.numpy(), [expected[2], expected[1], expected[2], expected[0]], rtol=1e-6
    )
    # a group with history items but no target gets 0 (no sample uses it)
    weights, _, _ = history_target_weights(histories, torch.tensor([4, 4, 4, 4]), membership)
    assert weights[0] == 0 and weights[1] == 0 and weights[2] == pytest.approx((2 / 9) / 1.0)


def test_genre_weights_count_multi_hot_and_a_sample_takes_the_mean_over_its_genres():
    # 4 items, 3 genres; item 0: A+B, item 1: B, item 2: C, item 3: no genre
    membership = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.float32)
    histories = torch.tensor([[0, 1, 3], [2, 2, 0], [-1, 1, 3]])
    targets = torch.tensor([0, 2, 3])
    weights, hist, target = history_target_weights(histories, targets, membership)
    # history memberships: A: item 0 twice = 2; B: item 0 twice + item 1 twice = 4; C: item 2 twice = 2 -> 8
    # target memberships: item 0 -> A, B; item 2 -> C; item 3 -> none -> A 1, B 1, C 1 (3)
    assert hist.tolist() == [2, 4, 2] and target.tolist() == [1, 1, 1]
    w = [(2 / 8) / (1 / 3), (4 / 8) / (1 / 3), (2 / 8) / (1 / 3)]
    np.testing.assert_allclose(weights.numpy(), w, rtol=1e-6)
    samples = mean_group_weight(membership[targets], weights)
    np.testing.assert_allclose(samples.numpy(), [(w[0] + w[1]) / 2, w[2], 1.0], rtol=1e-6)


def test_response_token_counts_skip_the_first_token_and_masked_labels():
    labels = np.array([-100, -100, 5, 6, 2, -100, 7, 2, 9, 9])  # samples of 5, 3 and 2 tokens
    offsets = np.array([0, 5, 8, 10])
    # sample 0: 5, 6, 2; sample 1: 7, 2; sample 2: its first token is never predicted, so one
    np.testing.assert_array_equal(response_token_counts(labels, offsets), [3, 2, 1])


# ------------------------------------------------------------------------------- losses on a tiny LM


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ifairlrs-cache")


def set_up_on_train_samples(exp, method: IFairLRS) -> TrainContext:
    samples = exp.data.samples["train"]
    membership = torch.from_numpy(exp.groups["genre"].membership.astype(np.float32))
    context = TrainContext(
        n_users=exp.data.n_users,
        n_items=exp.data.n_items,
        item_groups=membership,
        group_names=exp.groups["genre"].names,
        item_train_counts=torch.zeros(exp.data.n_items),
        steps_per_epoch=1,
        max_epochs=1,
        lr=1e-4,
        weight_decay=0.0,
        train_items=torch.from_numpy(samples.target.astype(np.int64)),
        train_histories=torch.from_numpy(samples.history.astype(np.int64)),
    )
    method.setup(exp.model, context)
    return context


def test_per_sample_and_public_code_losses_match_a_literal_recomputation(tiny_lm_dir, cache, single_thread):
    exp = prepare(
        compose_config(tiny_overrides(tiny_lm_dir, cache, "method=ifairlrs", "method.groups=genre"))
    )
    model = exp.model.eval()  # no LoRA dropout: both computations see the same network
    per_sample, public = IFairLRS("genre", "per_sample"), IFairLRS("genre", "public_code")
    context = set_up_on_train_samples(exp, per_sample)
    set_up_on_train_samples(exp, public)
    samples = exp.data.samples["train"]
    index = torch.tensor([3, 0, 7, 5, 1])
    batch = SampleBatches(samples, 5).batch(index, torch.Generator())
    batch["groups"] = context.item_groups[batch["pos_items"]]
    weights = per_sample.sample_weights(torch.zeros(5), batch)
    assert not torch.allclose(weights, weights.mean())  # the weights differ between samples

    # by hand: CE of every shifted position of the right-padded batch (the public code's collator pads to 8)
    padded = training_batch(model.train_tokens, index.numpy(), model.tokenizer.pad_token_id, 8)
    assert padded["input_ids"].shape[1] % 8 == 0
    with torch.no_grad():
        logits = model.lm(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        shift_logits, shift_labels = logits[:, :-1].float(), padded["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
        ).view(5, -1)  # 0 at label -100 (prompt and padding), as torch.nn.CrossEntropyLoss(reduction="none")
        mask = (shift_labels != -100).float()
        token_mean = (ce * mask).sum(1) / mask.sum(1)
        hand_per_sample = (weights * token_mean).mean()
        hand_public = torch.mean(weights * torch.mean(ce))  # JiangM-C/IFairLRS compute_loss, verbatim
        got_per_sample = per_sample.objective(model, batch).loss
        got_public = public.objective(model, batch).loss
    assert float(got_per_sample) == pytest.approx(float(hand_per_sample), rel=1e-4)
    assert float(got_public) == pytest.approx(float(hand_public), rel=1e-4)
    # the public code's value is mean(w) x the padding-diluted token mean, not the per-sample weighting
    assert float(hand_public) == pytest.approx(float(weights.mean() * (ce.sum() / ce.numel())), rel=1e-5)
    assert float(got_public) != pytest.approx(float(got_per_sample), rel=1e-3)


def test_ifairlrs_trains_sasrec_on_the_same_samples_and_refuses_public_code_there(tmp_path):
    base = [
        "dataset/protocol=sequential",
        "model=sasrec",
        "method=ifairlrs",
        "dataset.protocol.max_train_samples=64",
        "dataset.protocol.max_valid_samples=16",
        "dataset.protocol.max_test_samples=16",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "device=cpu",
    ]
    exp = prepare(compose_config(base))
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    fitted = train(exp)
    assert fitted.epochs_run == 1 and exp.method.group_weights.shape == (len(exp.groups["pop"].names),)
    assert any(not torch.equal(before[k], v) for k, v in exp.model.state_dict().items())
    exp = prepare(compose_config([*base, "method.reduction=public_code"]))
    with pytest.raises(UserError, match="method.reduction=per_sample"):
        train(exp)


# ---------------------------------------------------------------------------------------------- rerank


def toy_ranking(items: np.ndarray, target: np.ndarray, scores: np.ndarray | None, history: np.ndarray):
    n, n_items = len(items), 6
    truth = sp.csr_matrix((np.ones(n), target, np.arange(n + 1)), shape=(n, n_items))
    reference = sp.csr_matrix(history)
    rows = EvalRows("valid", "sample", np.arange(n), truth, sp.csr_matrix((n, n_items)), reference)
    return Ranking(rows, items, scores)


#: 6 items: 0-2 popular ("head"), 3-5 not ("tail")
HEAD_TAIL = ItemGroups("pop", ["head", "tail"], np.repeat([[1, 0], [0, 1]], 3, axis=0).astype(bool))


def test_rerank_penalty_by_hand_and_lambda_zero_keeps_the_lists():
    membership = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])  # item 1 in both groups, item 3 in none
    gu = np.array([0.3, -0.2])
    np.testing.assert_allclose(item_penalties(membership, gu), [0.3, 0.15, 0.0, 0.0])

    items = np.array([[0, 1, 2, 3], [2, 0, 3, -1]])
    scores = np.array([[-1.0, -2.0, -3.0, -5.0], [-0.5, -1.0, -1.5, 0.0]])
    s = base_scores(items, scores)  # per-row min-max over the candidates, -inf at padding
    np.testing.assert_allclose(s[0], [1.0, 0.75, 0.5, 0.0])
    np.testing.assert_allclose(s[1, :3], [1.0, 0.5, 0.0])
    assert np.isneginf(s[1, 3])
    penalties = item_penalties(membership, gu)
    out, adjusted = rerank(items, s, penalties, 2.0, 3)
    # row 0: 1 - 0.6 = 0.4, 0.75 - 0.3 = 0.45, 0.5, 0.0 -> items 2, 1, 0
    np.testing.assert_array_equal(out[0], [2, 1, 0])
    np.testing.assert_allclose(adjusted[0], [0.5, 0.45, 0.4])
    # row 1: item 2: 1.0, item 0: 0.5 - 0.6 = -0.1, item 3: 0.0 -> 2, 3, 0
    np.testing.assert_array_equal(out[1], [2, 3, 0])
    same, _ = rerank(items, s, penalties, 0.0, 4)
    np.testing.assert_array_equal(same, items)
    # without scores the rank gives them: 1 - r / (C - 1)
    np.testing.assert_allclose(base_scores(items[:1], None)[0], [1.0, 2 / 3, 1 / 3, 0.0])

    # through the post-processor: lambda = 0 returns the model's lists (ties keep their order)
    history = np.zeros((2, 6))
    history[:, 3:] = 1
    ranking = toy_ranking(np.array([[0, 1, 3, 4], [1, 0, 4, 5]]), np.array([3, 4]), None, history)
    post = IFairLRSRerank(lambdas=[0.0], select_on="ndcg@2", candidates=4)
    post.fit(ranking, {"pop": HEAD_TAIL}, MetricConfig(ks=[2], group_kinds=["pop"]))
    np.testing.assert_array_equal(post.apply(ranking, 2).items, ranking.items[:, :2])


def test_lambda_is_chosen_on_validation_only():
    cfg = MetricConfig(ks=[1, 2], group_kinds=["pop"])
    history = np.zeros((2, 6))
    history[:, 3:] = 1  # the reference is all tail, the lists are mostly head: head GU@2 = 0.75 - 0 > 0
    # validation truth = tail items ranked third: a penalty on head items brings them into the top 2
    valid = toy_ranking(np.array([[0, 1, 3, 4], [1, 0, 4, 2]]), np.array([3, 4]), None, history)
    post = IFairLRSRerank(lambdas=[0.0, 0.1, 1.0, 5.0], select_on="ndcg@2", candidates=4)
    post.fit(valid, {"pop": HEAD_TAIL}, cfg)
    gu = evaluate_ranking(valid, {"pop": HEAD_TAIL}, cfg).metrics
    assert post.group_penalties == {"head": pytest.approx(gu["pop/gu@2/head"]), "tail": 0.0}
    assert gu["pop/gu@2/head"] == pytest.approx(1.0)  # head share 1 in the top-2 lists, 0 in the histories
    values = [
        evaluate_ranking(post.apply_lambda(valid, lam, 2), {"pop": HEAD_TAIL}, cfg).metrics["ndcg@2"]
        for lam in post.lambdas
    ]
    # lambda 0 and 0.1 leave the tail targets out of the top 2; 1 and 5 tie at the best value, and 5 has the
    # lower validation MGU@2 (lists [3, 4], [4, 1]: head share 1/4, against 1/2 for lambda 1)
    assert values[0] == values[1] < values[2] == values[3]
    assert post.chosen()["lambda"] == 5.0 and post.chosen()["select_value"] == pytest.approx(values[3])
    # test truth that the penalty would hurt does not change the choice: fit saw validation only
    test = toy_ranking(valid.items, np.array([1, 0]), None, history)
    assert post.apply(test, 2).items.tolist() == post.apply(valid, 2).items.tolist()
    assert post.chosen()["lambda"] == 5.0
    # and the same validation data with head targets picks lambda 0
    head = toy_ranking(valid.items, np.array([1, 0]), None, history)
    again = IFairLRSRerank(lambdas=[0.0, 0.1, 1.0, 5.0], select_on="ndcg@2", candidates=4)
    again.fit(head, {"pop": HEAD_TAIL}, cfg)
    assert again.chosen()["lambda"] == 0.0


# ---------------------------------------------------------------------------------------------- config


def test_config_mistakes_are_user_errors_before_work():
    cases = [
        (["experiment=bigrec", "method=ifairlrs", "method.groups=colour"], "colour"),
        (["experiment=bigrec", "method=ifairlrs", "method.reduction=mean"], "reduction"),
        (["experiment=bigrec", "postprocess=ifairlrs", "postprocess.groups=null"], "postprocess.groups"),
        (["experiment=bigrec", "postprocess=ifairlrs", "postprocess.lambdas=[-1]"], "lambdas"),
        (["model=alpharec", "method=ifairlrs"], "next-item training samples"),
    ]
    for overrides, expected in cases:
        cfg = compose_config(overrides, return_hydra_config=True)
        with pytest.raises(UserError, match=expected):
            check_before_work(cfg)


@pytest.mark.slow
def test_cli_bigrec_with_ifairlrs_reweighting_and_reranking(tmp_path, tiny_lm_dir):
    result = fairbench(
        "train",
        *tiny_overrides(
            tiny_lm_dir,
            tmp_path / "cache",
            "method=ifairlrs",
            "postprocess=ifairlrs",
            "postprocess.lambdas=[0,0.5,2]",
            "postprocess.candidates=30",
            "trainer.max_epochs=1",
        ),
        out=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    log = (run_dir / "train.log").read_text()
    assert "ifairlrs (popularity groups, per_sample): group weights" in log and "ifairlrs rerank" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["postprocess/lambda"] in (0.0, 0.5, 2.0)
    assert {"test/ndcg@5", "test/pop/mgu@5", "test/genre/mgu@5", "postprocess/select_value"} <= set(metrics)
    assert {f"postprocess/penalty/q{g}" for g in range(5)} <= set(metrics)


def test_cli_bad_ifairlrs_config_exits_2(tmp_path):
    result = fairbench("train", "experiment=bigrec", "method=ifairlrs", "method.groups=colour", out=tmp_path)
    assert result.returncode == 2 and "colour" in result.stderr and "Traceback" not in result.stderr


def test_reranking_by_groups_the_dataset_does_not_build_is_a_user_error(tmp_path):
    from tests.helpers.data_files import bigrec_samples, sequences, write_bigrec

    folder = tmp_path / "bigrec"
    write_bigrec(folder, bigrec_samples(sequences(12, 30, 8)), 30)  # no genres in this format
    overrides = ["dataset=bigrec_csv", f"dataset.path={folder}", "model=sasrec", "device=cpu"]
    with pytest.raises(UserError, match="postprocess.groups asks for genre groups"):
        prepare(compose_config([*overrides, "postprocess=ifairlrs", "postprocess.groups=genre"]))

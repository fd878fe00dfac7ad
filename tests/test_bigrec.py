"""BIGRec through the stages on real ml100k samples with a tiny random causal LM (real SmolLM2 tokenizer):
training on response losses, adapter-only checkpoints with exact resume, generation + grounding into
rankings, constrained decoding, popularity-adjusted grounding chosen on validation, errors before work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairbench.config import compose_config
from fairbench.errors import UserError
from fairbench.evaluation import EvalRows, Ranking, evaluate_ranking, evaluation_rows
from fairbench.models.bigrec import Grounding
from fairbench.models.grounding import ground_topk
from fairbench.pipeline import check_before_work, evaluate, postprocess, prepare, rank_splits, train
from fairbench.postprocess.popularity_grounding import PopularityGrounding
from tests.helpers.cli import fairbench


def tiny_overrides(model_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "experiment=bigrec",
        f"backbone.encoder.model={model_dir}",
        "backbone.name=tiny-llama",
        "dataset.protocol.max_train_samples=12",
        "dataset.protocol.max_valid_samples=6",
        "dataset.protocol.max_test_samples=8",
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.warmup_steps=1",
        "model.max_new_tokens=6",
        "model.num_beams=2",
        "device=cpu",
        f"paths.cache_dir={cache}",
        *extra,
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bigrec-cache")


def test_bigrec_trains_ranks_and_evaluates_samples(tiny_lm_dir, cache, single_thread, tmp_path):
    exp = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache)))
    model = exp.model
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    assert before and all("lora" in k for k in before)  # the trainable state is the adapter alone
    fitted = train(exp, tmp_path / "run")
    assert fitted.epochs_run == 2 and [set(r) >= {"valid/loss"} for r in fitted.history] == [True, True]
    after = model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["model"]) == set(before)  # no frozen LLM weight in the checkpoint
    rankings = rank_splits(exp)
    test = rankings["test"]
    assert test.items.shape == (8, 20) and (test.items >= 0).all()
    assert len(test.details) == 8 and len(test.details[0]["beams"]) == 2
    assert test.rows.unit == "sample" and test.grounding is not None
    # grounding ranks = brute-force L2 ranking of the first beam's vector
    distances = torch.cdist(test.grounding.queries, test.grounding.item_vectors)
    expected = torch.sort(distances, dim=1, stable=True).indices[:, :20].numpy()
    np.testing.assert_array_equal(test.items, expected)
    results = evaluate(exp, postprocess(exp, rankings))
    metrics = results["test"].metrics
    for key in ("ndcg@10", "hr@1", "pop/mgu@5", "pop/dgu@5", "genre/mgu@5", "pop/cv@20"):
        assert key in metrics
    assert len(exp.groups["pop"].names) == 5  # IFairLRS quintiles


def test_adapter_checkpoint_resume_is_exact(tiny_lm_dir, cache, single_thread, tmp_path):
    full = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache, "trainer.max_epochs=3")))
    train(full, tmp_path / "full")
    # the same run interrupted during its second validation: the checkpoint of epoch 0 is left
    interrupted = prepare(compose_config(tiny_overrides(tiny_lm_dir, cache, "trainer.max_epochs=3")))
    calls = []
    original = interrupted.model.validation_loss

    def failing_validation() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original()

    interrupted.model.validation_loss = failing_validation
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tmp_path / "half")
    ckpt = tmp_path / "half" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    resumed = prepare(
        compose_config(tiny_overrides(tiny_lm_dir, cache, "trainer.max_epochs=3", f"ckpt_path={ckpt}"))
    )
    train(resumed, tmp_path / "resumed")
    for key, value in full.model.trainable_state_dict().items():
        torch.testing.assert_close(resumed.model.trainable_state_dict()[key], value, rtol=0, atol=0)


def test_constrained_decoding_ranks_catalogue_items_of_the_beams_first(
    tiny_lm_dir,
    cache,
    single_thread,
):
    exp = prepare(
        compose_config(
            tiny_overrides(tiny_lm_dir, cache, "model.decoding=constrained", "trainer.max_epochs=1")
        )
    )
    model = exp.model
    rows = evaluation_rows(exp.data, "test", "sample")
    model.max_new_tokens = 40  # long enough to finish any title of the trie
    ranking = model.recommend(rows, 10)
    responses = set(model.texts)
    for detail, items in zip(ranking.details, ranking.items, strict=True):
        beams = [b.strip('"') for b in detail["beams"]]
        finished = [b for b in beams if b in responses]
        assert finished, detail["beams"]  # every beam spells a catalogue title
        first_titles = {model.texts[i] for i in items[: len(set(finished))]}
        assert set(finished) <= first_titles
    assert ranking.grounding is None


def synthetic_ranking(n: int = 30, n_items: int = 12, seed: int = 0) -> tuple[Ranking, np.ndarray]:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    targets = rng.integers(0, n_items, n)
    truth = sp.csr_matrix((np.ones(n, np.float32), targets, np.arange(n + 1)), shape=(n, n_items))
    empty = sp.csr_matrix((n, n_items), dtype=np.float32)
    rows = EvalRows("valid", "sample", np.arange(n), truth, empty, truth, np.zeros((n, 1), np.int64))
    queries, items = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)), torch.randn(n_items, 4)
    popularity = rng.integers(0, 50, n_items)
    top, _ = ground_topk(queries, items, n_items)
    return Ranking(rows, top.numpy(), grounding=Grounding(queries, items, popularity)), popularity


def test_popularity_grounding_picks_the_best_validation_gamma_and_applies_the_formula():
    from fairbench.evaluation import MetricConfig

    ranking, popularity = synthetic_ranking()
    cfg = MetricConfig(ks=[1, 5], group_kinds=[])
    post = PopularityGrounding(gammas=[0.0, 1.0, 5.0, 50.0], select_on="ndcg@5")
    post.fit(ranking, {}, cfg)
    values = []
    for gamma in post.gammas:
        top, _ = ground_topk(
            ranking.grounding.queries, ranking.grounding.item_vectors, 5, popularity=popularity, gamma=gamma
        )
        values.append(evaluate_ranking(Ranking(ranking.rows, top.numpy()), {}, cfg).metrics["ndcg@5"])
    assert post.gamma == post.gammas[int(np.argmax(values))]
    assert post.chosen()["select_value"] == pytest.approx(max(values))
    # the formula: (1 + p)^-gamma times the row's min-max normalised distance
    gamma = 3.0
    applied = PopularityGrounding(gammas=[gamma])
    applied.gamma = gamma
    out = applied.apply(ranking, 4)
    d = torch.cdist(ranking.grounding.queries, ranking.grounding.item_vectors).double()
    d = (d - d.min(1, keepdim=True).values) / (d.max(1, keepdim=True).values - d.min(1, keepdim=True).values)
    p = torch.as_tensor(popularity, dtype=torch.float64)
    p = (p - p.min()) / (p.max() - p.min())
    score = d * (1 + p) ** -gamma
    np.testing.assert_array_equal(out.items, torch.sort(score, dim=1, stable=True).indices[:, :4].numpy())


def test_bigrec_needs_a_causal_lm_backbone_before_any_work():
    cfg = compose_config(["experiment=bigrec", "backbone=minilm"], return_hydra_config=True)
    with pytest.raises(UserError, match="choose a causal LM backbone"):
        check_before_work(cfg)
    cfg = compose_config(["model=alpharec", "postprocess=popularity_grounding"], return_hydra_config=True)
    with pytest.raises(UserError, match="re-grounds the generated texts"):
        check_before_work(cfg)


def test_cli_bad_generative_inputs_exit_2(tmp_path, tiny_lm_dir):
    cases = [
        (["experiment=bigrec", "backbone=minilm"], "choose a causal LM backbone"),
        (["experiment=bigrec", "backbone.encoder.model=" + str(tmp_path / "nope.gguf")], "nope.gguf"),
        (["experiment=bigrec", "model.item_template={plot}"], "plot"),
    ]
    for args, expected in cases:
        result = fairbench(
            "train",
            *args,
            "device=cpu",
            out=tmp_path / str(abs(hash(expected))),
            env={"FAIRBENCH_CACHE": str(tmp_path / "cache")},
        )
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_bigrec_run_writes_generations_and_metrics(tmp_path, tiny_lm_dir):
    result = fairbench(
        "train",
        *tiny_overrides(tiny_lm_dir, tmp_path / "cache", "trainer.max_epochs=1"),
        out=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("runs/*/*/metrics.json")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/ndcg@10", "test/hr@10", "test/pop/mgu@5", "test/genre/dgu@5"} <= set(metrics)
    lines = (run_dir / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 8 and {"beams", "grounded_top10", "prompt_sha256"} <= set(json.loads(lines[0]))
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").model._target_.endswith("BIGRec")


def test_bigrec_on_data_in_bigrec_csv_format_keeps_its_split(tiny_lm_dir, cache, single_thread, tmp_path):
    from tests.helpers.data_files import bigrec_samples, sequences, write_bigrec

    folder = tmp_path / "bigrec"
    cuts = write_bigrec(folder, bigrec_samples(sequences(12, 30, 8)), 30)
    overrides = tiny_overrides(tiny_lm_dir, cache, "dataset=bigrec_csv", f"dataset.path={folder}")
    overrides = [o for o in overrides if not o.startswith("dataset.protocol.max_")] + ["trainer.max_epochs=1"]
    exp = prepare(compose_config(overrides))
    assert {s: len(exp.data.samples[s]) for s in ("train", "valid", "test")} == {
        s: len(r) for s, r in cuts.items()
    }
    train(exp)
    test = rank_splits(exp)["test"]
    assert test.items.shape == (len(cuts["test"]), 20)
    metrics = evaluate(exp, {"test": test})["test"].metrics
    assert "pop/mgu@5" in metrics and not any(k.startswith("genre/") for k in metrics)

"""Config composition and validation (no training)."""

import pytest
from omegaconf import OmegaConf

from fairbench.config import compose_config, expand_sweep, list_options, validate_config
from fairbench.errors import UserError


def test_every_shipped_option_composes_and_validates():
    options = list_options()
    for group in ("dataset", "backbone", "model", "method", "metric", "logger", "trainer"):
        assert options[group], f"group {group} has no options"
    for group, names in options.items():
        for name in names:
            cfg = compose_config([f"{group}={name}"], return_hydra_config=True)
            assert validate_config(cfg) == [], f"{group}={name}"


def test_misspelled_key_in_a_target_node_is_reported_with_valid_keys():
    cfg = compose_config([])
    OmegaConf.set_struct(cfg, False)
    cfg.trainer.max_epoch = 3
    problems = validate_config(cfg)
    assert len(problems) == 1
    assert "trainer.max_epoch" in problems[0] and "max_epochs" in problems[0]


def test_wrong_types_are_reported():
    cfg = compose_config(["trainer.max_epochs=abc", "metric.utility=precision", "trainer.lr=0.01"])
    problems = "\n".join(validate_config(cfg))
    assert "trainer.max_epochs: expected int, got 'abc'" in problems
    assert "metric.utility: expected one of 'recall', 'ndcg', 'hr'" in problems
    assert "trainer.lr" not in problems


def test_override_of_unknown_key_and_unknown_option_fail_at_composition():
    with pytest.raises(UserError, match="max_epoch"):
        compose_config(["trainer.max_epoch=3"])
    with pytest.raises(UserError, match="alpharec"):  # lists the available options
        compose_config(["model=alpharc"])


def test_expand_sweep_covers_every_value_without_the_full_product():
    jobs = expand_sweep(["seed=0,1,2", "model=alpharec", "trainer.lr=0.1,0.2"])
    assert len(jobs) == 4
    flat = [" ".join(job) for job in jobs]
    for value in ("seed=0", "seed=1", "seed=2", "trainer.lr=0.1", "trainer.lr=0.2"):
        assert any(value in job for job in flat)
    assert all("model=alpharec" in job for job in flat)
    assert expand_sweep(["seed=1"]) == [["seed=1"]]


@pytest.mark.parametrize(
    "model,lr,batch_size,patience",
    [
        ("alpharec", 5e-4, 4096, 20),
        ("linear", 5e-4, 4096, 20),
        ("mf", 1e-3, 2048, 20),
        ("lightgcn", 1e-3, 2048, 20),
        ("multvae", 1e-3, 2048, 20),
        ("sgl", 1e-3, 256, 30),
        ("xsimgcl", 1e-3, 256, 30),
    ],
)
def test_each_model_brings_its_papers_trainer_and_the_command_line_wins(model, lr, batch_size, patience):
    trainer = compose_config([f"model={model}"]).trainer
    assert (trainer.lr, trainer.batch_size, trainer.patience) == (lr, batch_size, patience)
    assert compose_config([f"model={model}", "trainer=default"]).trainer.lr == 5e-4
    assert compose_config([f"model={model}", "trainer.lr=0.01"]).trainer.lr == 0.01
    assert compose_config([f"model={model}", "experiment=quick"]).trainer.max_epochs == 3

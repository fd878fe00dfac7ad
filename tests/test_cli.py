"""The command line as a user runs it: real subprocesses, real ml100k, real wandb in offline mode."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.helpers.cli import QUICK, fairbench, single_run_dir


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.max_epoch=3"], "max_epoch"),  # misspelled key
        (["model=alpharc"], "alpharec"),  # unknown option: the valid choices are listed
        (["trainer.max_epochs=many"], "trainer.max_epochs: expected int"),  # wrong type
        (["dataset.path=/nonexistent/ml-100k"], "/nonexistent/ml-100k"),  # missing data
        (["-m", "seed=0,1", "metric.utility=precision"], "metric.utility"),  # bad value inside a sweep
    ],
)
def test_user_mistakes_give_one_message_and_exit_code_2(tmp_path, args, expected):
    result = fairbench("train", *args, out=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.glob("runs/*/*/metrics.json")) and not list(tmp_path.glob("multiruns/*/*/*"))


def test_config_commands(tmp_path):
    listed = fairbench("config", "ls", out=tmp_path)
    assert listed.returncode == 0 and "alpharec (default)" in listed.stdout and "wandb" in listed.stdout
    shown = fairbench("config", "show", "model.tau=0.2", out=tmp_path)
    assert shown.returncode == 0 and "tau: 0.2" in shown.stdout
    validated = fairbench("config", "validate", out=tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "FAILED" not in validated.stdout and "model=alpharec: ok" in validated.stdout


def test_data_stats_on_ml100k(tmp_path):
    result = fairbench("data", "stats", out=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "845" in result.stdout and "1433" in result.stdout.replace(",", "")


@pytest.mark.slow
def test_train_writes_every_output_and_logs_to_wandb_offline(tmp_path):
    result = fairbench("train", *QUICK, out=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    assert str(run_dir) in result.stdout and "pop CV" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "test/recall@20",
        "test/ndcg@10",
        "test/hr@20",
        "test/pop/cv@20",
        "test/pop/min@20",
        "test/genre/mgu@20",
        "test/genre/dgu@20",
        "test/gini@20",
        "test/aplt@20",
        "valid/recall@20",
    ):
        assert 0 <= metrics[key] <= 1 or key.endswith(("cv@20", "arp@20")), key
    groups = pd.read_csv(run_dir / "groups.csv")
    assert set(groups["kind"]) == {"pop", "genre"} and {"head", "tail"} <= set(groups["group"])
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1] and "valid/recall@20" in history
    for name in (
        "group_utilities.png",
        "checkpoints/last.ckpt",
        "checkpoints/best.safetensors",
        "train.log",
        ".hydra/config.yaml",
        "status.json",
    ):
        assert (run_dir / name).is_file(), name
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    payload = wandb_file.read_bytes()
    assert b"test/recall@20" in payload and b"valid/recall@20" in payload and b"group_utilities" in payload

    # resume: 1 epoch, then continue from its checkpoint to 2 epochs == the uninterrupted 2-epoch run
    first = fairbench(
        "train", "trainer.max_epochs=1", "trainer.progress=false", "logger=none", out=tmp_path / "resume"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = single_run_dir(tmp_path / "resume") / "checkpoints" / "last.ckpt"
    resumed = fairbench("train", *QUICK, "logger=none", f"ckpt_path={ckpt}", out=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((single_run_dir(tmp_path / "resumed") / "metrics.json").read_text())
    for key, value in metrics.items():
        if key.startswith(("test/", "valid/")):
            assert again[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_sweep_summary_and_failed_job(tmp_path, launcher):
    args = ["-m", "seed=0,1", "trainer.max_epochs=1", "trainer.progress=false", "logger=none"]
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.monitor=recall@20,bogus@20"]
    # joblib pickles the task: run it as `python -m fairbench.cli`, where the task is defined in `__main__`
    result = fairbench("train", *args, out=tmp_path, as_module=launcher == "joblib")
    (summary_path,) = tmp_path.glob("multiruns/*/*/summary.csv")
    summary = pd.read_csv(summary_path)
    assert "sweep summary" in result.stdout
    if launcher == "basic":
        assert result.returncode == 0, result.stderr[-3000:]
        assert list(summary["status"]) == ["completed", "completed"]
        assert summary["test/recall@20"].notna().all()
        assert summary.loc[0, "test/recall@20"] != summary.loc[1, "test/recall@20"]  # seeds differ
    else:
        assert result.returncode == 1
        assert len(summary) == 4 and (summary["status"] == "failed").sum() == 2
        failed = summary[summary["status"] == "failed"]
        assert failed["overrides"].str.contains("bogus@20").all()
        assert failed["error"].str.contains("trainer.monitor").all()
        assert summary[summary["status"] == "completed"]["test/recall@20"].notna().all()


@pytest.mark.slow
def test_sweep_over_models_with_an_option_only_they_have(tmp_path):
    """`-m model=mf,lightgcn model.loss=infonce`: Hydra's base config has the default model (no `loss`); the
    key is forced for the sweep, and a swept option without the key is still rejected before anything runs."""
    args = ["-m", "model=mf,lightgcn", "model.loss=infonce", "trainer.max_epochs=1", "logger=none"]
    result = fairbench("train", *args, out=tmp_path / "ok")
    assert result.returncode == 0, result.stderr[-3000:]
    configs = sorted((tmp_path / "ok").glob("multiruns/*/*/*/.hydra/config.yaml"))
    assert [OmegaConf.load(c).model.loss for c in configs] == ["infonce", "infonce"]
    bad = fairbench("train", "-m", "model=mf,alpharec", "model.loss=infonce", out=tmp_path / "bad")
    assert bad.returncode == 2 and "loss" in bad.stderr and "Traceback" not in bad.stderr

"""scripts/bench_recbole.py and scripts/recbole_runner.py without running a benchmark: arguments, the run
order, the summary and its table, the settings shared with fairbench's configs, the missing-RecBole message.
Only the last test needs RecBole's environment (`make bench-recbole` creates .venv-recbole)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECBOLE_PYTHON = ROOT / ".venv-recbole" / "bin" / "python"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_script("bench_recbole")
runner = load_script("recbole_runner")


def run_row(model, library, run, epochs, wall, pairs, cpu=None):
    return {
        "run": run,
        "model": model,
        "library": library,
        "epoch_seconds": epochs,
        "epoch_cpu_seconds": cpu or epochs,
        "wall_seconds": wall,
        "train_interactions": pairs,
        "steps_per_epoch": -(-pairs // 2048),
    } | {phase: 1.0 for phase in bench.PHASES}


def test_arguments_defaults_and_mistakes(capsys):
    args = bench.parse_args([])
    assert (args.models, args.runs, args.epochs, args.threads) == (["lightgcn", "mf"], 2, 3, 1)
    assert args.recbole_python == bench.DEFAULT_RECBOLE_PYTHON
    assert bench.parse_args(["--models", "mf", "--runs", "1"]).models == ["mf"]
    for bad in (["--models", "sasrec"], ["--epochs", "0"], ["--threads", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.parse_args(bad)
        assert exit_info.value.code == 2
    assert "sasrec" in capsys.readouterr().err


def test_runs_alternate_the_library_order():
    order = bench.schedule(["lightgcn", "mf"], 2)
    assert order == [
        (0, "lightgcn", "fairbench"),
        (0, "lightgcn", "recbole"),
        (0, "mf", "fairbench"),
        (0, "mf", "recbole"),
        (1, "lightgcn", "recbole"),
        (1, "lightgcn", "fairbench"),
        (1, "mf", "recbole"),
        (1, "mf", "fairbench"),
    ]


def test_summary_medians_ratios_and_table():
    rows = [
        run_row("mf", "fairbench", 0, [0.30, 0.20, 0.20], 10.0, 1000),
        run_row("mf", "fairbench", 1, [0.19, 0.20, 0.50], 14.0, 1000),
        run_row("mf", "recbole", 0, [0.40, 0.41, 0.39], 20.0, 1600),
        run_row("mf", "recbole", 1, [0.38, 0.42, 0.40], 16.0, 1600),
    ]
    summary = bench.summarise(rows, ["mf"])["mf"]
    assert summary["fairbench"]["seconds_per_epoch"] == pytest.approx(0.2)  # median of six epochs
    assert summary["recbole"]["seconds_per_epoch"] == pytest.approx(0.4)
    assert summary["fairbench"]["run_wall_seconds"] == pytest.approx(12.0)
    ratio = summary["ratio"]
    assert ratio["seconds_per_epoch"] == pytest.approx(0.5)
    assert ratio["seconds_per_epoch_per_pair"] == pytest.approx((0.2 / 1000) / (0.4 / 1600))
    assert ratio["run_wall_seconds"] == pytest.approx(12.0 / 18.0)
    table = bench.format_table({"mf": summary})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["model", "library", "s/epoch"]
    assert lines[1].split()[:3] == ["mf", "fairbench", "0.200"]
    assert lines[3].split()[:6] == ["mf", "fb/RecBole", "0.50", "0.80", "0.50", "0.67"]


def test_summary_of_a_missing_library_is_nan_not_an_error():
    summary = bench.summarise([run_row("mf", "fairbench", 0, [0.2], 5.0, 10)], ["mf"])["mf"]
    assert math.isnan(summary["recbole"]["seconds_per_epoch"])
    assert math.isnan(summary["ratio"]["seconds_per_epoch"])


def test_recbole_settings_follow_fairbench_configs(tmp_path):
    model = yaml.safe_load((ROOT / "conf" / "model" / "lightgcn.yaml").read_text())
    trainer = yaml.safe_load((ROOT / "conf" / "trainer" / "id_based.yaml").read_text())
    protocol = yaml.safe_load((ROOT / "conf" / "dataset" / "protocol" / "general.yaml").read_text())
    config = runner.recbole_config("LightGCN", 3, tmp_path, tmp_path / "saved", seed=0)
    assert config["embedding_size"] == model["embed_dim"]
    assert config["n_layers"] == model["n_layers"]
    assert config["reg_weight"] == model["reg_weight"] and config["require_pow"] is True
    assert config["learning_rate"] == trainer["lr"]
    assert config["train_batch_size"] == trainer["batch_size"]
    assert config["train_neg_sample_args"]["sample_num"] == 1
    assert config["eval_args"]["split"] == {"RS": protocol["ratios"]}
    assert config["val_interval"] == {"rating": f"[{protocol['min_rating']:g},inf)"}
    assert config["user_inter_num_interval"] == f"[{protocol['min_user_interactions']},inf)"
    assert config["epochs"] == 3 and config["eval_step"] > 3  # no validation inside the timed epochs
    args = runner.parse_args(["--model", "BPR", "--data-file", "x.inter"])
    assert (args.model, args.epochs, args.threads, args.eval_users) == ("BPR", 3, 1, 1024)


def test_a_missing_recbole_environment_is_one_clear_message(tmp_path, capsys):
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--recbole-python", str(missing), "--out", str(tmp_path / "out.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "make bench-recbole" in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.skipif(
    not RECBOLE_PYTHON.is_file(),
    reason="no RecBole environment at .venv-recbole (created by `make bench-recbole`, needs PyPI once)",
)
def test_recbole_environment_has_the_pinned_release_and_runs_the_runner():
    assert bench.check_recbole_python(RECBOLE_PYTHON) is None
    done = subprocess.run(
        [str(RECBOLE_PYTHON), str(ROOT / "scripts" / "recbole_runner.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--data-file" in done.stdout

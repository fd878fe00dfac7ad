"""Published tables: the package data, `fairbench reproduce list | <table> --dry-run`, and sweeps that skip
jobs completed by an earlier (interrupted) run of the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml

from fairbench.config import compose_config
from fairbench.report.paper import published
from fairbench.report.reproduce import with_bundled_dataset_overrides
from fairbench.report.tables import TABLES
from fairbench.resume import completion_fingerprint
from tests.helpers.cli import FAIRBENCH, ROOT, fairbench


def test_published_numbers_are_package_data():
    frame = published()
    assert {"paper", "table", "dataset", "model", "method", "metric", "value", "notes"} <= set(frame.columns)
    assert set(frame["table"]) == {"1", "2", "3", "4", "6", "7"}
    assert (
        frame.duplicated(["table", "dataset", "groups", "backbone", "model", "method", "metric"]).sum() == 0
    )

    def value(**where):
        hit = frame
        for key, wanted in where.items():
            hit = hit[hit[key] == wanted]
        return hit["value"].item()

    assert (
        value(table="2", dataset="movies", groups="popularity", method="bifair", metric="pop/cv@20") == 0.2860
    )
    assert value(table="2", dataset="books", groups="genre", method="erm", metric="genre/min@20") == 0.0497
    assert value(table="1", backbone="sfr-embedding-mistral", model="alpharec", metric="hr@20") == 0.3397
    assert value(table="3", backbone="llama2-7b", method="drorec", metric="recall@20") == 0.1524
    assert value(table="4", method="itfr", metric="pop/cv@20") == 0.9538


def test_every_table_has_an_experiment_file_that_composes():
    for table in TABLES.values():
        cfg = compose_config([f"experiment={table.experiment}"], return_hydra_config=True)
        assert cfg.metric.ks == [20] and "seed" in cfg.hydra.sweeper.params, table.name
        assert table.default_dataset in table.paper_tables


def test_reproduce_list_and_dry_run(tmp_path):
    listed = fairbench("reproduce", "list", out=tmp_path)
    assert listed.returncode == 0 and all(name in listed.stdout for name in TABLES), listed.stderr
    dry = fairbench("reproduce", "bifair-table2", "--dry-run", "dataset=ml100k", out=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "adding backbone=minilm" in dry.stdout
    assert "sweep (42 jobs)" in dry.stdout and "experiment=bifair_table2 dataset=ml100k" in dry.stdout
    assert "job 0: method=erm method.groups=popularity seed=0 dataset=ml100k backbone=minilm" in dry.stdout
    assert "job 41: method=bifair method.groups=genre seed=2" in dry.stdout
    assert "--paper bifair-table2" in dry.stdout and not list(tmp_path.glob("reproduce/*"))  # nothing ran
    # a key on the command line replaces the experiment's sweep of it
    few = fairbench("reproduce", "bifair-table1", "--dry-run", "model=mf,alpharec", "seed=0", out=tmp_path)
    assert few.returncode == 0 and "sweep (2 jobs)" in few.stdout, few.stderr[-3000:]


def test_bundled_dataset_adds_the_bundled_encoder_unless_a_backbone_is_chosen():
    table2, table3 = TABLES["bifair-table2"], TABLES["bifair-table3"]
    assert with_bundled_dataset_overrides(table2, ["dataset=ml100k", "seed=0"]) == (
        ["dataset=ml100k", "seed=0", "backbone=minilm"],
        ["backbone=minilm"],
    )
    chosen = ["dataset=ml100k", "backbone=qwen2.5-7b"]
    assert with_bundled_dataset_overrides(table2, chosen) == (chosen, [])
    assert with_bundled_dataset_overrides(table2, ["dataset=movies"]) == (["dataset=movies"], [])
    assert with_bundled_dataset_overrides(table2, ["dataset=ml100k,movies"])[1] == []  # swept: no guess
    assert with_bundled_dataset_overrides(table3, ["dataset=ml100k"])[1] == []  # the table sweeps backbones
    cfg = compose_config([f"experiment={table2.experiment}", "dataset=ml100k", "backbone=minilm"])
    assert cfg.backbone.name == "minilm"


def test_reproduce_mistakes_and_missing_datasets_give_one_message(tmp_path):
    unknown = fairbench("reproduce", "bifair-table9", out=tmp_path)
    assert unknown.returncode == 2 and "bifair-table1" in unknown.stderr
    missing = fairbench(
        "reproduce", "bifair-table1", out=tmp_path, env={"FAIRBENCH_DATA": str(tmp_path / "none")}
    )
    assert missing.returncode == 2 and "missing reviews_Books_5.json.gz" in missing.stderr
    assert "Traceback" not in missing.stderr and not list(tmp_path.glob("reproduce/*/*/*"))


def test_completion_fingerprint_keeps_the_budget_and_drops_bookkeeping():
    base = completion_fingerprint(compose_config([]))
    assert completion_fingerprint(compose_config(["logger=none", "trainer.progress=false"])) == base
    assert completion_fingerprint(compose_config(["trainer.max_epochs=7"])) != base
    assert completion_fingerprint(compose_config(["seed=1"])) != base


@pytest.mark.slow
def test_an_interrupted_sweep_rerun_skips_its_completed_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "seed=0,1", "trainer.max_epochs=1", "trainer.progress=false", "logger=none"]
    args.append(f"hydra.sweep.dir={sweep}")
    env = os.environ | {"FAIRBENCH_OUTPUTS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [FAIRBENCH, *args],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while (
        not (sweep / "0" / "status.json").is_file() and process.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep dies after its first job
    process.wait()
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "completed"
    assert not (sweep / "1" / "status.json").is_file()
    first = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    again = fairbench(*args, out=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout + again.stderr
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == first  # kept, not rerun
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["status"]) == ["completed", "completed"]
    assert summary["test/recall@20"].notna().all()


@pytest.mark.slow
def test_optuna_sweeper_tunes_on_the_validation_monitor(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install fairbench[optuna]")
    sweep = tmp_path / "tuned"
    done = fairbench(
        "train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=0",
        "method=groupdro",
        "method.step_size=interval(0.001,0.1)",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        out=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(trials) == 3
    # maximised (fairbench sets the direction from trainer.monitor_mode) over the validation metric
    assert best["best_value"] == max(t["valid/recall@20"] for t in trials)
    assert best["best_value"] not in [t["test/recall@20"] for t in trials]
    assert 0.001 <= best["best_params"]["method.step_size"] <= 0.1


def test_a_sweepers_search_interval_is_checked_at_both_bounds():
    from fairbench.config import expand_sweep

    jobs = expand_sweep(
        ["method=groupdro", "method.step_size=interval(0.001,0.1)", "trainer.batch_size=int(interval(8,64))"]
    )
    assert ["method=groupdro", "method.step_size=0.1", "trainer.batch_size=8"] in jobs
    assert ["method=groupdro", "method.step_size=0.001", "trainer.batch_size=64"] in jobs


def test_the_slurm_launcher_composes_with_fairbench_configs():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='pip install "fairbench[slurm]"')
    overrides = ["experiment=bifair_table2", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"]
    cfg = compose_config([*overrides, "hydra.launcher.gpus_per_node=1"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.callbacks.sweep_summary is not None

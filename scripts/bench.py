"""Benchmark of the default experiment, stage by stage: wall time and peak memory.

    python scripts/bench.py [overrides...]        (or: make bench ARGS="...")

Stages, each in a fresh subprocess so that peak RSS belongs to that stage alone:
  data-cold / data-cached     dataset protocol + cache (raw download excluded: it is warmed first)
  embed-cold / embed-cached   LM item vectors (cold = empty vector cache)
  train-epoch                 seconds per training epoch (a few epochs, evaluation excluded)
  eval                        full-ranking evaluation of all users on valid + test (after ranking warm-up)
  default-run                 `fairbench train logger=none` end to end with caches warm
  models                      seconds per epoch and peak memory of every recommender (scripts/bench_models.py)
  methods                     seconds per epoch of every fairness method relative to ERM, measured in the same
                              process (scripts/bench_methods.py)
The two sub-benchmarks run with one torch thread (stabler on shared machines); ``--skip-sub`` leaves them out.
Timings are noisy on shared machines; compare ratios measured in the same run. Results go to
outputs/bench/bench.json and are printed as a table.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE_CODE = r"""
import json, resource, sys, time
from pathlib import Path
from fairbench.config import compose_config
stage, overrides = sys.argv[1], json.loads(sys.argv[2])
cfg = compose_config(overrides)
cache, data_dir = Path(cfg.paths.cache_dir).expanduser(), Path(cfg.paths.data_dir).expanduser()
from fairbench.data import build_item_groups, load_dataset
out = {}
t = time.perf_counter()
data = load_dataset(cfg.dataset, cache_dir=cache, data_dir=data_dir)
groups = build_item_groups(data, cfg.dataset.groups)
out["data_seconds"] = time.perf_counter() - t
if stage.startswith("embed") or stage in ("train-epoch", "eval"):
    from fairbench.backbones import item_vectors
    t = time.perf_counter()
    vectors = item_vectors(cfg.backbone, data.items, cache_dir=cache, device="cpu", show_progress=False)
    out["embed_seconds"] = time.perf_counter() - t
if stage in ("train-epoch", "eval"):
    import torch
    from hydra.utils import instantiate
    from fairbench.evaluation import evaluate_split
    from fairbench.training import fit
    torch.manual_seed(0)
    model = instantiate(cfg.model, train=data.train, item_vectors=vectors)
    method = instantiate(cfg.method)
    trainer = instantiate(cfg.trainer)
    metric = instantiate(cfg.metric)
    if stage == "train-epoch":
        trainer.max_epochs, trainer.eval_every, trainer.progress = 3, 1000, False
        result = fit(model, method, data.train, trainer, lambda m: {trainer.monitor: 0.0}, seed=0)
        out["seconds_per_epoch"] = result.seconds_per_epoch
    else:
        evaluate_split(model, data, "valid", groups, metric, trainer.eval_batch_size)  # warm-up
        t = time.perf_counter()
        evaluate_split(model, data, "valid", groups, metric, trainer.eval_batch_size)
        evaluate_split(model, data, "test", groups, metric, trainer.eval_batch_size)
        out["eval_seconds_valid_plus_test"] = time.perf_counter() - t
        out["eval_users"] = int((data.test.getnnz(axis=1) > 0).sum())
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH " + json.dumps(out))
"""


def run_stage(stage: str, overrides: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STAGE_CODE, stage, json.dumps(overrides)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH "))
    return {"stage": stage, "wall_seconds": wall} | json.loads(line[len("BENCH ") :])


def run_default(overrides: list[str], env: dict[str, str], out_root: Path) -> dict:
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [
        str(Path(sys.executable).parent / "fairbench"),
        "train",
        "logger=none",
        "trainer.progress=false",
        f"paths.output_root={out_root}",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"default run failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    metrics_file = max(out_root.glob("runs/*/*/metrics.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(metrics_file.read_text())
    return {
        "stage": "default-run",
        "wall_seconds": wall,
        "peak_rss_mb": max(peak, before) / 1024,
        "epochs": metrics["train/epochs"],
        "best_epoch": metrics["train/best_epoch"],
        "test/recall@20": metrics["test/recall@20"],
        "time/training": metrics["time/training"],
    }


def run_sub_benchmark(script: str, out: Path, overrides: list[str], env: dict[str, str]) -> dict:
    """Run scripts/<script> (its table goes to our stdout) and return the JSON it wrote to ``out``."""
    cmd = [
        sys.executable,
        str(Path(__file__).parent / script),
        "--threads",
        "1",
        "--out",
        str(out),
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed with exit code {proc.returncode}")
    return json.loads(out.read_text())


def main(overrides: list[str]) -> None:
    skip_sub = "--skip-sub" in overrides
    overrides = [o for o in overrides if o != "--skip-sub"]
    env = dict(os.environ)
    real_cache = Path(env.get("FAIRBENCH_CACHE", Path.home() / ".cache" / "fairbench"))
    rows = []
    # warm the raw download once so that data-cold measures the protocol, not the network
    rows.append(run_stage("data-cached", overrides, env) | {"stage": "data-warmup"})
    with tempfile.TemporaryDirectory() as tmp:
        cold = Path(tmp) / "cache"
        cold.mkdir()
        for sub in ("raw", "downloads"):
            if (real_cache / sub).exists():
                shutil.copytree(real_cache / sub, cold / sub)
        cold_env = env | {"FAIRBENCH_CACHE": str(cold)}
        rows.append(run_stage("data-cold", overrides, cold_env))
        rows.append(run_stage("embed-cold", overrides, cold_env))
    rows.append(run_stage("data-cached", overrides, env))
    rows.append(run_stage("embed-cached", overrides, env))
    rows.append(run_stage("train-epoch", overrides, env))
    rows.append(run_stage("eval", overrides, env))
    out_root = Path("outputs") / "bench"
    rows.append(run_default(overrides, env, out_root))
    rows = [r for r in rows if r["stage"] != "data-warmup"]
    out_root.mkdir(parents=True, exist_ok=True)
    report: dict = {"overrides": overrides, "stages": rows}
    if not skip_sub:
        report["models"] = run_sub_benchmark("bench_models.py", out_root / "models.json", overrides, env)
        report["methods"] = run_sub_benchmark("bench_methods.py", out_root / "methods.json", overrides, env)
    (out_root / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"{'stage':<14} {'wall s':>8} {'peak MB':>8}  detail")
    for row in rows:
        detail = {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in row.items()
            if k not in ("stage", "wall_seconds", "peak_rss_mb")
        }
        print(f"{row['stage']:<14} {row['wall_seconds']:>8.2f} {row['peak_rss_mb']:>8.0f}  {detail}")
    print(f"written to {out_root / 'bench.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])

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
  ranking                     synthetic full ranking, fairbench vs a naive batched GEMM + mask + topk loop
                              in the same run (scripts/bench_ranking.py, its default sizes)
  generative                  BIGRec's SFT tokens/s (and a plain HF Trainer's), generation samples/s (prompts
                              encoded once vs per beam), grounding ms per 1,000 (scripts/bench_generative.py)
  generative-methods          seconds per SFT epoch of ifairlrs and gdrt relative to erm on experiment=bigrec
                              (32 training samples), same process (scripts/bench_methods.py; gdrt's one-off
                              reference pass falls in the untimed warm-up epoch)
The sub-benchmarks run with one torch thread (stabler on shared machines); ``--skip-sub`` leaves them out.
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
import json, resource, sys
from fairbench.config import compose_config
from fairbench.pipeline import evaluate, load_inputs, prepare, rank_splits, train
stage, overrides = sys.argv[1], json.loads(sys.argv[2])
cfg = compose_config(overrides)
out = {}
inputs = load_inputs(cfg, vectors=not stage.startswith("data"))
out["data_seconds"] = inputs.timings["data"]
if "embedding" in inputs.timings:
    out["embed_seconds"] = inputs.timings["embedding"]
if stage in ("train-epoch", "eval"):
    exp = prepare(cfg, inputs)
    exp.trainer.progress = False
    if stage == "train-epoch":
        exp.trainer.max_epochs, exp.trainer.eval_every = 3, 1000
        out["seconds_per_epoch"] = train(exp, validate=False).seconds_per_epoch
    else:
        import time
        evaluate(exp, rank_splits(exp))  # warm-up
        t = time.perf_counter()
        rankings = rank_splits(exp)
        evaluate(exp, rankings)
        out["eval_seconds_valid_plus_test"] = time.perf_counter() - t
        out["eval_users"] = len(rankings["test"].rows)
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


GENERATIVE_METHODS = ["--methods", "erm,ifairlrs,gdrt", "--epochs", "1"]


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
        report["ranking"] = run_sub_benchmark("bench_ranking.py", out_root / "bench_ranking.json", [], env)
        report["generative"] = run_sub_benchmark("bench_generative.py", out_root / "generative.json", [], env)
        report["generative_methods"] = run_sub_benchmark(
            "bench_methods.py",
            out_root / "generative_methods.json",
            [*GENERATIVE_METHODS, "experiment=bigrec", "dataset.protocol.max_train_samples=32"],
            env,
        )
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

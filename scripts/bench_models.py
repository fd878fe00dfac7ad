"""Training cost of every recommender: seconds per epoch and peak memory, each model in its own subprocess.

    python scripts/bench_models.py [--models mf,lightgcn,...] [--epochs 3] [overrides...]

Each model trains for a few epochs on the configured dataset (default ml100k) with evaluation excluded
(the validation callback returns a constant; ``eval_every`` is past the last epoch, so the only evaluation
is the trivial one after the last epoch). Data loading and LM item vectors (read from the cache; built once
beforehand if missing) are not timed. Peak memory is the subprocess's peak resident set size (and the peak
CUDA allocation on a GPU). Wall-clock timings are noisy on shared machines: compare models measured in the
same run, and look at the process CPU seconds per epoch too (all threads). On a machine shared with other
jobs, torch's intra-op threads contend badly: ``--threads 1`` gives much more stable numbers there.
Results are printed and written to outputs/bench/models.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_MODELS = "mf,multvae,lightgcn,sgl,xsimgcl,linear,alpharec"

MODEL_CODE = r"""
import json, resource, sys, time
import torch
from fairbench.config import compose_config
from fairbench.pipeline import prepare, train

overrides, epochs, threads = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
exp = prepare(compose_config(overrides))
trainer, device = exp.trainer, exp.device
trainer.max_epochs, trainer.eval_every = epochs, epochs + 1
trainer.progress, trainer.checkpoint = False, False
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
started, cpu_started = time.perf_counter(), time.process_time()
result = train(exp, validate=False)
out = {
    "seconds_per_epoch": result.seconds_per_epoch,
    "fit_seconds": time.perf_counter() - started,
    "cpu_seconds_per_epoch": (time.process_time() - cpu_started) / max(result.epochs_run, 1),
    "epochs": result.epochs_run,
    "parameters": sum(p.numel() for p in exp.model.parameters() if p.requires_grad),
    "device": str(device),
    "threads": torch.get_num_threads(),
    "peak_rss_before_fit_mb": rss_before,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}
if device.type == "cuda":
    out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
print("BENCH " + json.dumps(out))
"""


def bench_model(model: str, epochs: int, threads: int, overrides: list[str]) -> dict:
    """Train ``model`` for ``epochs`` epochs in a fresh interpreter and return its measurements."""
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MODEL_CODE,
            json.dumps([f"model={model}", *overrides]),
            str(epochs),
            str(threads),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"model": model, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH "))
    return {"model": model, "wall_seconds": time.perf_counter() - started} | json.loads(line[len("BENCH ") :])


def warm_caches(overrides: list[str]) -> None:
    """Build the processed dataset and the LM item vectors once, outside the measurements."""
    subprocess.run(
        [sys.executable, "-m", "fairbench.cli", "embed", *overrides],
        check=True,
        capture_output=True,
        text=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model options")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per model (default 3)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per model (default 0: torch's own choice)"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "models.json")
    args, overrides = parser.parse_known_args()
    models = [m for m in args.models.split(",") if m]
    warm_caches(overrides)
    rows = [bench_model(model, args.epochs, args.threads, overrides) for model in models]
    report = {
        "overrides": overrides,
        "epochs": args.epochs,
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
        "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'model':<10} {'s/epoch':>8} {'cpu s/ep':>8} {'RSS MB':>8} {'CUDA MB':>8} {'params':>10}  device")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<10} failed: {row['error']}")
            continue
        cuda = f"{row['peak_cuda_mb']:>8.0f}" if "peak_cuda_mb" in row else f"{'-':>8}"
        print(
            f"{row['model']:<10} {row['seconds_per_epoch']:>8.3f} {row['cpu_seconds_per_epoch']:>8.3f} "
            f"{row['peak_rss_mb']:>8.0f} {cuda} "
            f"{row['parameters']:>10d}  {row['device']}"
        )
    print(f"written to {args.out}")
    if any("error" in row for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

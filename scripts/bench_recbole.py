"""Training and whole-run cost of fairbench vs RecBole 1.2.1 on ml100k: LightGCN and MF-BPR, side by side.

    make bench-recbole ARGS="--runs 2 --epochs 3"          (creates .venv-recbole on first use)
    python scripts/bench_recbole.py [--models lightgcn,mf] [--runs 2] [--epochs 3] [--threads 1]
        [--recbole-python .venv-recbole/bin/python] [--out outputs/bench/recbole.json]

Every run is a fresh process with OMP_NUM_THREADS=MKL_NUM_THREADS=<threads> and
torch.set_num_threads(<threads>) (1 by default). Runs are interleaved so that load changes on a shared
machine hit both libraries: for each run index and model, fairbench and RecBole run back to back, in the
order fairbench, RecBole on even run indices and RecBole, fairbench on odd ones (ABBA: linear drift cancels
over two runs). One untimed 1-epoch run of each library comes first (page cache, bytecode, fairbench's
processed-dataset cache).

fairbench side: the pipeline stages that `fairbench train` runs (compose_config, load_inputs, prepare, train
with validation off, rank_splits, evaluate) with `model=<mf|lightgcn> logger=none device=cpu
metric.final_valid=false`, trainer.max_epochs=<epochs>, no checkpoints. RecBole side:
scripts/recbole_runner.py in RecBole's own virtual environment (`make bench-recbole` builds it; fairbench's
environment never depends on RecBole). Measured per run:

    s/epoch       wall seconds of each training epoch (fairbench: model.on_epoch_start to the trainer's
                  on_epoch_end; RecBole: Trainer._train_epoch), median over epochs and runs
    cpu s/epoch   the same epochs' process CPU seconds (less sensitive to other jobs on the machine)
    run wall      the whole process, start to exit: imports, data (fairbench: its processed-dataset cache,
                  warm; RecBole: filters and split from the atomic file, RecBole's default), model build,
                  <epochs> training epochs, one full-ranking evaluation of the test split; median over runs
    ratio         fairbench / RecBole of each median (lower is better for fairbench); "per pair" divides each
                  library's s/epoch by its training pairs first (the two splits differ slightly, see below)

Same settings in both: ml100k (RecBole's atomic file that fairbench reads too), ratings >= 3, users with
>= 20 interactions, per-user random 40/30/30 split; embedding size 64; LightGCN 2 layers, layer mean;
Adam lr 1e-3, batches of 2048 (user, positive) pairs, one uniform negative per pair outside the user's
training items, shuffled every epoch; L2 1e-4 on the batch's layer-0 embeddings (squared norms / 2, batch
mean: RecBole reg_weight=1e-4, require_pow=True); full-ranking evaluation of 1,024 users per batch, K 10 and
20. Differences that the two libraries do not let us remove are listed in DIFFERENCES (and in the JSON).
Timings are noisy on shared machines: compare only ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECBOLE_PYTHON = ROOT / ".venv-recbole" / "bin" / "python"
RECBOLE_RUNNER = Path(__file__).resolve().parent / "recbole_runner.py"
#: fairbench model option -> RecBole model class
MODELS = {"lightgcn": "LightGCN", "mf": "BPR"}
LIBRARIES = ("fairbench", "recbole")
PHASES = ("import_seconds", "data_seconds", "build_seconds", "train_seconds", "eval_seconds")

DIFFERENCES = [
    "split: RecBole rounds each user's 40% train share up where fairbench takes floor(0.4 n), so RecBole "
    "trains on ~3% more pairs per epoch (ml100k: 33,148 vs 32,056; 17 vs 16 steps); see the per-pair ratio",
    "catalogue: fairbench drops items without a training interaction from the catalogue (1,433 items), "
    "RecBole keeps every item left after the filters (1,574): LightGCN's graph and the scored lists differ "
    "by that many rows",
    "MF: RecBole's BPR has no embedding L2 term; fairbench's mf adds reg_weight 1e-4 on the batch's "
    "embeddings (its default), so fairbench does slightly more work per step",
    "initialisation: xavier_uniform in both for LightGCN; RecBole's BPR uses xavier_normal (no time effect)",
    "evaluation: fairbench computes accuracy plus popularity and genre group metrics (CV, MIN, GU) at "
    "K 10 and 20; RecBole computes Recall, NDCG and Hit at 10 and 20",
    "data step: fairbench reads its processed-dataset cache (built by the warm-up); RecBole filters and "
    "splits the atomic file on every run (its default; save_dataset would pickle it)",
    "RecBole writes tensorboard event files during fit (into a temporary folder); fairbench writes nothing "
    "(logger=none, no checkpoints)",
]

FAIRBENCH_CODE = r"""
import time
STARTED = time.perf_counter()
import json, sys
import torch
overrides, epochs, threads = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
from fairbench.config import compose_config
from fairbench.pipeline import evaluate, load_inputs, prepare, rank_splits, train
out = {"import_seconds": time.perf_counter() - STARTED}
started = time.perf_counter()
cfg = compose_config(overrides)
inputs = load_inputs(cfg, vectors=False)
out["data_seconds"] = time.perf_counter() - started
started = time.perf_counter()
exp = prepare(cfg, inputs)
trainer = exp.trainer
trainer.max_epochs, trainer.eval_every = epochs, epochs + 1
trainer.progress, trainer.checkpoint = False, False
out["build_seconds"] = time.perf_counter() - started
starts, epoch_seconds, epoch_cpu = [], [], []
model_hook = exp.model.on_epoch_start
def on_epoch_start(epoch, seed):
    starts.append((time.perf_counter(), time.process_time()))
    return model_hook(epoch, seed)
def on_epoch_end(epoch):
    epoch_seconds.append(time.perf_counter() - starts[-1][0])
    epoch_cpu.append(time.process_time() - starts[-1][1])
exp.model.on_epoch_start = on_epoch_start
started = time.perf_counter()
fitted = train(exp, validate=False, on_epoch_end=on_epoch_end)
out["train_seconds"] = time.perf_counter() - started
out["epoch_seconds"], out["epoch_cpu_seconds"] = epoch_seconds, epoch_cpu
out["trainer_seconds_per_epoch"] = fitted.seconds_per_epoch
started = time.perf_counter()
results = evaluate(exp, rank_splits(exp))
out["eval_seconds"] = time.perf_counter() - started
keys = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "hr@10", "hr@20")
out["test"] = {k: results["test"].metrics[k] for k in keys}
data = exp.data
out |= {
    "users": data.n_users,
    "items": data.n_items,
    "train_interactions": int(data.train.nnz),
    "steps_per_epoch": -(-int(data.train.nnz) // trainer.batch_size),
    "threads": torch.get_num_threads(),
    "versions": {"torch": torch.__version__},
    "inner_seconds": time.perf_counter() - STARTED,
}
print("BENCH " + json.dumps(out), flush=True)
"""

WARM_CODE = r"""
import json, sys
from pathlib import Path
from fairbench.config import compose_config
from fairbench.data.fetch import ensure_ml100k
from fairbench.pipeline import load_inputs
cfg = compose_config(json.loads(sys.argv[1]))
load_inputs(cfg, vectors=False)
print("DATA " + str(ensure_ml100k(Path(cfg.paths.cache_dir).expanduser()) / "ml-100k.inter"))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="lightgcn,mf", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--runs", type=int, default=2, help="runs per library and model (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run (default 3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch / OpenMP threads per process (default 1)"
    )
    parser.add_argument(
        "--recbole-python",
        type=Path,
        default=DEFAULT_RECBOLE_PYTHON,
        help="python of the virtual environment with RecBole 1.2.1 (default .venv-recbole/bin/python; "
        "`make bench-recbole` creates it)",
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the untimed 1-epoch run of each library"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "recbole.json")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(
            f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}"
        )
    for name in ("runs", "epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def schedule(models: list[str], runs: int) -> list[tuple[int, str, str]]:
    """(run, model, library) in execution order: per run and model both libraries, in alternating order."""
    order = []
    for run in range(runs):
        libraries = LIBRARIES if run % 2 == 0 else LIBRARIES[::-1]
        order += [(run, model, library) for model in models for library in libraries]
    return order


def thread_env(threads: int) -> dict[str, str]:
    return dict(os.environ) | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def fairbench_overrides(model: str) -> list[str]:
    return [f"model={model}", "logger=none", "device=cpu", "metric.final_valid=false"]


def timed_process(cmd: list[str], env: dict[str, str], what: str) -> dict:
    """Run ``cmd``; its ``BENCH {json}`` line plus ``wall_seconds`` (process start to exit)."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{what} failed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"wall_seconds": wall} | json.loads(line[len("BENCH ") :])


def run_fairbench(model: str, epochs: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        "-c",
        FAIRBENCH_CODE,
        json.dumps(fairbench_overrides(model)),
        str(epochs),
        str(threads),
    ]
    return timed_process(cmd, thread_env(threads), f"fairbench {model}")


def run_recbole(model: str, epochs: int, threads: int, python: Path, data_file: Path) -> dict:
    cmd = [
        str(python),
        "-W",
        "ignore",  # RecBole 1.2.1's pandas FutureWarnings
        str(RECBOLE_RUNNER),
        "--model",
        MODELS[model],
        "--epochs",
        str(epochs),
        "--threads",
        str(threads),
        "--data-file",
        str(data_file),
    ]
    return timed_process(cmd, thread_env(threads), f"RecBole {MODELS[model]}")


def prepare_data() -> Path:
    """Build fairbench's processed-dataset caches; the path of RecBole's ml-100k.inter it reads."""
    path = None
    for model in MODELS:
        proc = subprocess.run(
            [sys.executable, "-c", WARM_CODE, json.dumps(fairbench_overrides(model))],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"preparing ml100k failed:\n{proc.stderr[-3000:]}")
        path = Path(next(ln for ln in proc.stdout.splitlines() if ln.startswith("DATA "))[len("DATA ") :])
    assert path is not None
    return path


def check_recbole_python(python: Path) -> str | None:
    """Why the RecBole environment cannot be used, or None."""
    if not Path(python).is_file():
        return (
            f"no RecBole environment: {python} does not exist; `make bench-recbole` creates .venv-recbole "
            "(needs PyPI once), or pass --recbole-python"
        )
    proc = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('recbole'))"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"recbole is not installed for {python}; `make bench-recbole` installs it"
    if proc.stdout.strip() != "1.2.1":
        return f"{python} has recbole {proc.stdout.strip()}, this benchmark is for 1.2.1"
    return None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarise(rows: list[dict], models: list[str]) -> dict:
    """Per model: each library's medians, and the fairbench / RecBole ratios."""
    summary: dict = {}
    for model in models:
        entry: dict = {}
        for library in LIBRARIES:
            runs = [r for r in rows if r["model"] == model and r["library"] == library]
            epochs = [s for r in runs for s in r["epoch_seconds"]]
            entry[library] = {
                "runs": len(runs),
                "seconds_per_epoch": _median(epochs),
                "cpu_seconds_per_epoch": _median([s for r in runs for s in r["epoch_cpu_seconds"]]),
                "run_wall_seconds": _median([r["wall_seconds"] for r in runs]),
                "train_interactions": runs[0]["train_interactions"] if runs else 0,
                "steps_per_epoch": runs[0]["steps_per_epoch"] if runs else 0,
            } | {phase: _median([r[phase] for r in runs]) for phase in PHASES}
        fb, rb = entry["fairbench"], entry["recbole"]
        per_pair = _ratio(
            _ratio(fb["seconds_per_epoch"], fb["train_interactions"]),
            _ratio(rb["seconds_per_epoch"], rb["train_interactions"]),
        )
        entry["ratio"] = {
            "seconds_per_epoch": _ratio(fb["seconds_per_epoch"], rb["seconds_per_epoch"]),
            "seconds_per_epoch_per_pair": per_pair,
            "cpu_seconds_per_epoch": _ratio(fb["cpu_seconds_per_epoch"], rb["cpu_seconds_per_epoch"]),
            "run_wall_seconds": _ratio(fb["run_wall_seconds"], rb["run_wall_seconds"]),
        } | {phase: _ratio(fb[phase], rb[phase]) for phase in PHASES}
        summary[model] = entry
    return summary


def format_table(summary: dict) -> str:
    """The printed table: per model, each library's medians and the fairbench / RecBole ratios."""
    header = (
        f"{'model':<9} {'library':<10} {'s/epoch':>8} {'per pair':>8} {'cpu s/ep':>8} {'run wall':>8} "
        f"{'import':>7} {'data':>7} {'build':>7} {'train':>7} {'eval':>7} {'pairs':>7}"
    )
    lines = [header]
    for model, entry in summary.items():
        for library in LIBRARIES:
            row = entry[library]
            lines.append(
                f"{model:<9} {library:<10} {row['seconds_per_epoch']:>8.3f} {'':>8} "
                f"{row['cpu_seconds_per_epoch']:>8.3f} {row['run_wall_seconds']:>8.2f} "
                + " ".join(f"{row[p]:>7.2f}" for p in PHASES)
                + f" {row['train_interactions']:>7d}"
            )
        ratio = entry["ratio"]
        lines.append(
            f"{model:<9} {'fb/RecBole':<10} {ratio['seconds_per_epoch']:>8.2f} "
            f"{ratio['seconds_per_epoch_per_pair']:>8.2f} {ratio['cpu_seconds_per_epoch']:>8.2f} "
            f"{ratio['run_wall_seconds']:>8.2f} " + " ".join(f"{ratio[p]:>7.2f}" for p in PHASES)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    problem = check_recbole_python(args.recbole_python)
    if problem is not None:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    data_file = prepare_data()
    if not args.no_warmup:
        run_fairbench(args.models[0], 1, args.threads)
        run_recbole(args.models[0], 1, args.threads, args.recbole_python, data_file)
    rows = []
    for run, model, library in schedule(args.models, args.runs):
        if library == "fairbench":
            result = run_fairbench(model, args.epochs, args.threads)
        else:
            result = run_recbole(model, args.epochs, args.threads, args.recbole_python, data_file)
        rows.append({"run": run, "model": model, "library": library} | result)
        print(
            f"run {run} {model:<9} {library:<10} {_median(result['epoch_seconds']):.3f} s/epoch, "
            f"{result['wall_seconds']:.1f} s run",
            flush=True,
        )
    summary = summarise(rows, args.models)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "models": {m: {"fairbench": f"model={m}", "recbole": MODELS[m]} for m in args.models},
        "runs": args.runs,
        "epochs": args.epochs,
        "threads": args.threads,
        "order": [f"{run}:{model}:{library}" for run, model, library in schedule(args.models, args.runs)],
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "differences": DIFFERENCES,
        "summary": summary,
        "runs_detail": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(summary))
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()

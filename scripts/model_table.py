"""BiFair Table 1 on your data: accuracy and item-side fairness of every recommender, mean ± std over seeds.

    python scripts/model_table.py [--models mf,...,alpharec] [--seeds 0,1,2] [overrides...]
    python scripts/model_table.py --sweep-dir outputs/multiruns/<date>/<time>      (reuse a finished sweep)
    python scripts/model_table.py --sweep-dir A --sweep-dir B --notes analysis.md   (several sweeps + notes)

Without --sweep-dir it runs one Hydra sweep,
    fairbench train -m model=<models> seed=<seeds> logger=none trainer.progress=false [overrides...]
then reads the sweep's job directories. It writes docs/results_models.md (or --out): per model the mean ± std
(sample std over the completed seeds) of test Recall/NDCG/HR@20 and popularity/genre CV@20 and MIN@20,
the number of seeds, and the command that produced the runs. A row is a model plus the ``model.*`` overrides
of its jobs (e.g. ``mf [loss=infonce]``); ``--notes`` appends a markdown file. BiFair's claim to check:
LLM-enhanced models (Linear, AlphaRec) have lower CV and higher MIN than the ID-based ones at similar or
better accuracy.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from hydra.utils import get_object
from omegaconf import OmegaConf

from fairbench.report.summary import summarize_sweep

DEFAULT_MODELS = "mf,multvae,lightgcn,sgl,xsimgcl,linear,alpharec"
COLUMNS = {
    "test/recall@20": "Recall@20 ↑",
    "test/ndcg@20": "NDCG@20 ↑",
    "test/hr@20": "HR@20 ↑",
    "test/pop/cv@20": "Pop CV@20 ↓",
    "test/pop/min@20": "Pop MIN@20 ↑",
    "test/genre/cv@20": "Genre CV@20 ↓",
    "test/genre/min@20": "Genre MIN@20 ↑",
}


def run_sweep(models: str, seeds: str, overrides: list[str]) -> tuple[Path, str]:
    """Run the sweep in a fresh directory under the output root; returns (sweep dir, command line)."""
    root = Path(os.environ.get("FAIRBENCH_OUTPUTS", "outputs"))
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    sweep_dir = root / "multiruns" / "model-table" / stamp
    args = ["-m", f"model={models}", f"seed={seeds}", "logger=none", "trainer.progress=false", *overrides]
    command = "fairbench train " + " ".join(shlex.quote(a) for a in args)
    fairbench = str(Path(sys.executable).parent / "fairbench")
    print(f"running: {command}\n  into {sweep_dir}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([fairbench, "train", *args, f"hydra.sweep.dir={sweep_dir}"])
    print(f"sweep finished in {time.perf_counter() - started:.0f}s (exit code {proc.returncode})", flush=True)
    if not (sweep_dir / "summary.csv").is_file():
        raise SystemExit(f"the sweep wrote no {sweep_dir / 'summary.csv'}; see its output above")
    return sweep_dir, command


def parse_overrides(text: str) -> dict[str, str]:
    """'model=mf seed=1 ++model.loss=infonce' -> {'model': 'mf', 'seed': '1', 'model.loss': 'infonce'}."""
    return dict(token.lstrip("+~").split("=", 1) for token in str(text).split() if "=" in token)


def with_group_options(option: str, group: str, overrides: str, skip: tuple[str, ...] = ()) -> str:
    """``option`` followed by the ``<group>.*`` overrides of ``overrides`` (except the keys in ``skip``),
    e.g. 'mf [loss=infonce]'."""
    prefix = f"{group}."
    options = [
        f"{k[len(prefix) :]}={v}"
        for k, v in parse_overrides(overrides).items()
        if k.startswith(prefix) and k[len(prefix) :] not in skip
    ]
    return f"{option} [{', '.join(options)}]" if options else option


def model_label(job_dir: Path, model: str, overrides: str = "") -> str:
    """The model option, its ``model.*`` overrides and, for models that read LM vectors, the backbone's name
    ('alpharec (minilm)', 'mf [loss=infonce]')."""
    model = with_group_options(model, "model", overrides)
    config_file = job_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return model
    cfg = OmegaConf.load(config_file)
    try:
        uses_text = getattr(get_object(cfg.model._target_), "uses_text_vectors", False)
    except Exception:  # noqa: BLE001 - a model class that no longer imports: label without the backbone
        uses_text = False
    return f"{model} ({cfg.backbone.name})" if uses_text else model


def summarize(sweep_dirs: list[Path], models: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table of 'mean ± std' strings per model label, failed jobs) from the sweeps' summary.csv files."""
    frames = []
    for sweep_dir in sweep_dirs:
        summary = summarize_sweep(sweep_dir)  # the jobs' own files: a partly finished sweep works too
        models_run = summary["overrides"].map(lambda o: parse_overrides(o).get("model", "(default)"))
        labels = [
            model_label(sweep_dir / str(job), m, o)
            for job, m, o in zip(summary["job"], models_run, summary["overrides"], strict=True)
        ]
        frames.append(pd.concat([summary, pd.DataFrame({"model": models_run, "label": labels})], axis=1))
    summary = pd.concat(frames, ignore_index=True)
    failed = summary[summary["status"] != "completed"]
    done = summary[summary["status"] == "completed"]
    order = models or list(dict.fromkeys(summary["model"]))
    rows = []
    for label in [lab for m in order for lab in dict.fromkeys(done.loc[done["model"] == m, "label"])]:
        runs = done[done["label"] == label]
        row = {"Model": label, "Seeds": len(runs)}
        for key, name in COLUMNS.items():
            values = runs[key].astype(float) if key in runs else pd.Series(dtype=float)
            std = values.std(ddof=1) if len(values) > 1 else float("nan")
            row[name] = f"{values.mean():.4f} ± {std:.4f}" if len(values) > 1 else f"{values.mean():.4f}"
        rows.append(row)
    return pd.DataFrame(rows), failed


def to_markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(frame.columns))) + "|"
    lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *lines])


def report_header(title: str, generated_by: str, commands: list[str]) -> list[str]:
    """Markdown lines shared by the result documents: title, provenance line and the commands block."""
    return ["# " + title, "", generated_by, "", "Commands:", "", "```", *commands, "```", ""]


def write_report(
    path: Path,
    table: pd.DataFrame,
    failed: pd.DataFrame,
    sweep_dirs: list[Path],
    commands: list[str],
    notes: str = "",
) -> None:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        *report_header(
            "Recommenders: accuracy and item-side fairness (BiFair Table 1 protocol)",
            f"Generated by `scripts/model_table.py` on {when} from "
            + ", ".join(f"`{d}`" for d in sweep_dirs)
            + ".",
            commands,
        ),
        "Test split, full ranking with training and validation items masked, K = 20; mean ± sample std over",
        "seeds (the data split is fixed by `dataset.protocol.seed`; `seed` changes initialisation and",
        "training order). CV: std / mean of the group utilities (lower is fairer); MIN: mean utility of",
        "the worst 25% of groups (higher is fairer); pop = top 10% of items by training interactions vs",
        "the rest; genre = the dataset's genres.",
        "",
        to_markdown(table) if not table.empty else "(no completed runs)",
        "",
    ]
    if not failed.empty:
        parts += ["Failed jobs:", ""]
        parts += [f"- job {r.job} (`{r.overrides}`): {getattr(r, 'error', '')}" for r in failed.itertuples()]
        parts.append("")
    if notes:
        parts += [notes, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model options")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--sweep-dir", type=Path, action="append", help="read this finished sweep instead of running one"
    )
    parser.add_argument("--notes", type=Path, help="a markdown file appended after the table")
    parser.add_argument("--out", type=Path, default=Path("docs") / "results_models.md")
    args, overrides = parser.parse_known_args()
    if args.sweep_dir:
        sweep_dirs, commands = args.sweep_dir, []
        for sweep_dir in sweep_dirs:
            if not any(sweep_dir.glob("*/.hydra/overrides.yaml")):
                raise SystemExit(f"--sweep-dir: no job directories in {sweep_dir}")
            command = f"(existing sweep {sweep_dir})"
            multirun = sweep_dir / "multirun.yaml"
            if multirun.is_file():
                task = OmegaConf.load(multirun).hydra.overrides.task
                command = "fairbench train -m " + " ".join(shlex.quote(str(a)) for a in task)
            commands.append(command)
        models = None
    else:
        sweep_dir, command = run_sweep(args.models, args.seeds, overrides)
        sweep_dirs, commands, models = [sweep_dir], [command], args.models.split(",")
    table, failed = summarize(sweep_dirs, models)
    notes = args.notes.read_text() if args.notes else ""
    write_report(args.out, table, failed, sweep_dirs, commands, notes)
    print(to_markdown(table))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

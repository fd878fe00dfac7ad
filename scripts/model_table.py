"""BiFair Table 1 on your data: every recommender's accuracy and item-side fairness (`fairbench report`).

    python scripts/model_table.py [--models mf,...,alpharec] [--seeds 0,1,2] [overrides...]
    python scripts/model_table.py --sweep-dir outputs/multiruns/<date>/<time>      (reuse a finished sweep)
    python scripts/model_table.py --sweep-dir A --sweep-dir B --notes analysis.md   (several sweeps + notes)

Without --sweep-dir it runs one Hydra sweep,
    fairbench train -m model=<models> seed=<seeds> logger=none trainer.progress=false [overrides...]
then writes `fairbench report <sweeps> --by model --baseline model=xsimgcl` (when XSimGCL ran) into the
folder of --out (default docs/results_models.md; report.md is copied there, with --notes appended). The
equivalent without this script: `fairbench reproduce bifair-table1 dataset=ml100k backbone=minilm`. The
helpers below are shared with scripts/method_table.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

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


def to_markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(frame.columns))) + "|"
    lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *lines])


def report_header(title: str, generated_by: str, commands: list[str]) -> list[str]:
    """Markdown lines shared by the result documents: title, provenance line and the commands block."""
    return ["# " + title, "", generated_by, "", "Commands:", "", "```", *commands, "```", ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model options")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--sweep-dir", type=Path, action="append", help="read this finished sweep instead of running one"
    )
    parser.add_argument("--notes", type=Path, help="a markdown file appended after the report")
    parser.add_argument("--out", type=Path, default=Path("docs") / "results_models.md")
    args, overrides = parser.parse_known_args()
    from fairbench.report.command import make_report  # here: scripts/method_table.py imports the helpers
    from fairbench.report.compare import ReportSpec
    from fairbench.report.jobs import find_jobs

    sweep_dirs = args.sweep_dir or [run_sweep(args.models, args.seeds, overrides)[0]]
    ran = {job.setting("model") for job in find_jobs(sweep_dirs) if job.completed and "model" in job.choices}
    spec = ReportSpec(
        by=["model"],
        metric="recall@20",
        baseline="model=xsimgcl" if "xsimgcl" in ran else None,
        columns=[c.removeprefix("test/") for c in COLUMNS],
        title="Recommenders: accuracy and item-side fairness (BiFair Table 1 protocol)",
    )
    report_dir = args.out.with_suffix("")
    make_report(sweep_dirs, spec, report_dir, paper_table="bifair-table1")
    text = (report_dir / "report.md").read_text()
    if args.notes:
        text += "\n" + args.notes.read_text() + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out} (figures and tables in {report_dir})")


if __name__ == "__main__":
    main()

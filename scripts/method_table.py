"""BiFair Table 2 on your data: every fairness method's accuracy and item-side fairness (mean ± std over
seeds), and BiFair's claim checked against ERM.

    python scripts/method_table.py --sweep-dir DIR [--sweep-dir DIR ...] [--runs CSV ...] [--command "..."]
        [--out FILE]

Reads the job directories of finished (or partly finished) sweeps such as

    fairbench train -m seed=0,1,2 method=erm,bifair,reweight,... method.groups=genre ...

and writes docs/results_methods.md (or --out): one row per (method with its ``method.*`` options, balanced
groups) with test Recall/NDCG/HR@20 and popularity/genre CV@20 and MIN@20 (mean ± sample std over the
completed seeds), then,
per group kind, each method against ERM: relative Recall@20 change, and whether CV is lower and MIN higher.
BiFair's claim (Sec. 4.4): lower CV and higher MIN than ERM with Recall@20 within 2%.

Every run's metrics are also written to ``<out>_runs.csv`` (one row per job, with its command-line overrides);
``--runs`` reads such files back, so a table can be regenerated, or extended by new sweeps, without the
original sweep directories; a (method, groups, seed) found again replaces the earlier run.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from model_table import COLUMNS, parse_overrides, report_header, to_markdown, with_group_options
from omegaconf import OmegaConf

from fairbench.data.groups import GROUP_KIND_NAMES
from fairbench.report.summary import summarize_sweep


def method_label(overrides: str) -> str:
    """The method option and its ``method.*`` overrides other than the groups, e.g.
    'bifair [gradient_space=representation]'."""
    method = parse_overrides(overrides).get("method", "erm")
    return with_group_options(method, "method", overrides, skip=("groups",))


def collect(sweep_dirs: list[Path]) -> pd.DataFrame:
    """Completed jobs of all sweeps with their method label, seed and the groups the method balanced."""
    frames = []
    for sweep_dir in sweep_dirs:
        frame = summarize_sweep(sweep_dir)
        if frame.empty:
            continue
        frame = frame[frame["status"] == "completed"].copy()
        groups, seeds = [], []
        for job in frame["job"]:
            cfg = OmegaConf.load(sweep_dir / str(job) / ".hydra" / "config.yaml")
            kind = cfg.method.get("groups") if "groups" in cfg.method else None
            groups.append(GROUP_KIND_NAMES.get(str(kind), "-") if kind is not None else "-")
            seeds.append(int(cfg.seed))
        frame.insert(0, "sweep", str(sweep_dir))
        frame["method"] = [method_label(text) for text in frame["overrides"]]
        frame["groups"], frame["seed"] = groups, seeds
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def runs_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_runs.csv")


def mean_std(values: pd.Series) -> str:
    values = values.astype(float)
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, groups), part in runs.groupby(["method", "groups"], sort=False):
        row = {"Method": method, "Balances": groups, "Seeds": len(part)}
        row |= {name: mean_std(part[key]) for key, name in COLUMNS.items() if key in part}
        rows.append(row)
    return pd.DataFrame(rows)


def claim_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each method vs ERM on the groups it balanced: recall change, CV lower?, MIN higher?, claim holds?"""
    erm = runs[runs["method"] == "erm"]
    if erm.empty:
        return pd.DataFrame()
    base_recall = erm["test/recall@20"].astype(float).mean()
    rows = []
    for (method, groups), part in runs[runs["method"] != "erm"].groupby(["method", "groups"], sort=False):
        if groups == "-":
            continue
        cv_key, min_key = f"test/{groups}/cv@20", f"test/{groups}/min@20"
        change = part["test/recall@20"].astype(float).mean() / base_recall - 1
        cv, cv_erm = part[cv_key].astype(float).mean(), erm[cv_key].astype(float).mean()
        low, low_erm = part[min_key].astype(float).mean(), erm[min_key].astype(float).mean()
        rows.append(
            {
                "Method": method,
                "Groups": groups,
                "Seeds": len(part),
                "ΔRecall@20 vs ERM": f"{100 * change:+.1f}%",
                "CV@20 (ERM)": f"{cv:.4f} ({cv_erm:.4f})",
                "MIN@20 (ERM)": f"{low:.4f} ({low_erm:.4f})",
                "lower CV": "yes" if cv < cv_erm else "no",
                "higher MIN": "yes" if low > low_erm else "no",
                "claim holds": "yes" if cv < cv_erm and low > low_erm and change >= -0.02 else "no",
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep-dir", type=Path, action="append", default=[], help="a sweep directory")
    parser.add_argument(
        "--runs", type=Path, action="append", default=[], help="a per-run CSV written by an earlier call"
    )
    parser.add_argument("--command", action="append", default=[], help="command line that made a sweep")
    parser.add_argument("--notes", type=Path, help="a markdown file appended after the tables")
    parser.add_argument("--out", type=Path, default=Path("docs") / "results_methods.md")
    args = parser.parse_args()
    frames = [pd.read_csv(path, keep_default_na=False, na_values=[""]) for path in args.runs]
    runs = pd.concat([*frames, collect(args.sweep_dir)], ignore_index=True)
    if runs.empty:
        raise SystemExit(f"no completed job in {[str(d) for d in args.sweep_dir + args.runs]}")
    runs = runs.drop_duplicates(subset=["method", "groups", "seed"], keep="last")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        *report_header(
            "Fairness methods: accuracy and item-side fairness (BiFair Table 2 protocol)",
            f"Generated by `scripts/method_table.py` on {when}.",
            args.command or [f"(sweeps in {', '.join(str(d) for d in args.sweep_dir)})"],
        ),
        "Test split, full ranking with training and validation items masked, K = 20; mean ± sample std over",
        "seeds. `Balances`: the item groups the method optimises for (`method.groups`); every run is",
        "evaluated on both group kinds. CV: std / mean of the group utilities (lower is fairer); MIN: mean",
        "utility of the worst 25% of groups (higher is fairer).",
        "",
        to_markdown(results_table(runs)),
        "",
        "## Against ERM (BiFair's claim: lower CV and higher MIN, Recall@20 within 2%)",
        "",
        "Means over seeds; each method is compared on the groups it balances.",
        "",
        to_markdown(claims) if not (claims := claim_table(runs)).empty else "(no ERM run or no other method)",
        "",
    ]
    if args.notes is not None:
        parts += [args.notes.read_text(), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))
    metric_keys = [k for k in runs if k.startswith(("test/", "train/", "time/"))]
    keep = ["sweep", "job", "overrides", "method", "groups", "seed", *metric_keys]
    runs[[k for k in keep if k in runs]].to_csv(runs_path(args.out), index=False)
    print("\n".join(parts))
    print(f"written to {args.out} and {runs_path(args.out)}")


if __name__ == "__main__":
    main()

"""BiFair's group weights over training, from the per-epoch lines its runs log.

    python scripts/bifair_weights.py --sweep-dir DIR [--sweep-dir DIR ...] [--rows CSV ...] [--out FILE.png]

BiFair and BiFair-Separate log, at the end of every epoch, the mean group weights over the epoch's steps and
the mean group losses (``bifair epoch N: mean group weights [...], mean group losses [...]`` in each job's
``train.log``). This script collects them from the job directories of the given sweeps (label: the method
with its ``method.*`` options other than the groups, e.g. ``bifair [weighting=eq10_lp]``) and writes
(``--out`` default: docs/results_methods/bifair_weights.png)

- ``<out>.csv``: one row per (sweep, job, epoch, group) with the weight and the loss;
- ``<out>.png``: left, popularity groups: the tail group's mean weight per epoch (mean over seeds, band =
  min..max); right, genre groups: per epoch, the Spearman correlation over the genres between group weight
  and group loss (> 0: the weights favour the higher-loss groups), mean over seeds.

``--rows`` adds the rows of a CSV written by an earlier call (e.g. the committed one, whose sweeps are no
longer on disk), so a plot can hold batches run at different times.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fairbench.data.groups import GROUP_KIND_NAMES  # noqa: E402
from fairbench.report.jobs import load_job  # noqa: E402

LINE = re.compile(
    r"(bifair(?:_separate)?) epoch (\d+): mean group weights \[([^\]]*)\], mean group losses \[([^\]]*)\]"
)


def parse_log(text: str) -> list[tuple[int, list[float], list[float | None]]]:
    """(epoch, weights, losses) of every BiFair epoch line of a log."""
    rows = []
    for match in LINE.finditer(text):
        weights = [float(x) for x in match.group(3).split(",") if x.strip()]
        losses = [None if x.strip() == "None" else float(x) for x in match.group(4).split(",") if x.strip()]
        rows.append((int(match.group(2)), weights, losses))
    return rows


def method_label(overrides: dict[str, str]) -> str:
    """The ``method`` option followed by its ``method.*`` overrides other than ``method.groups``."""
    options = [
        f"{k.removeprefix('method.')}={v}"
        for k, v in overrides.items()
        if k.startswith("method.") and k != "method.groups"
    ]
    method = overrides.get("method", "erm")
    return f"{method} [{', '.join(options)}]" if options else method


def collect(sweep_dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for sweep in sweep_dirs:
        for path in sorted(p for p in sweep.iterdir() if (p / "train.log").exists()):
            job = load_job(path)
            label = method_label(job.overrides)
            groups = GROUP_KIND_NAMES.get(str(job.config.method.get("groups")), "-")
            for epoch, weights, losses in parse_log((path / "train.log").read_text()):
                for group, (weight, loss) in enumerate(zip(weights, losses, strict=True)):
                    rows.append(
                        {
                            "sweep": str(sweep),
                            "job": path.name,
                            "method": label,
                            "groups": groups,
                            "seed": int(job.seed),
                            "epoch": epoch,
                            "group": group,
                            "weight": weight,
                            "loss": loss,
                        }
                    )
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame, out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    pop = frame[(frame["groups"] == "pop") & (frame["group"] == 1)]
    for method, part in pop.groupby("method", sort=False):
        per_epoch = part.groupby("epoch")["weight"]
        mean, low, high = per_epoch.mean(), per_epoch.min(), per_epoch.max()
        (line,) = left.plot(mean.index, mean.values, marker=".", label=method)
        left.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.15)
    left.axhline(0.5, color="grey", lw=0.5, ls="--")
    left.set(title="popularity groups: tail weight", xlabel="epoch", ylabel="mean weight of the tail group")
    left.set_ylim(-0.02, 1.02)
    left.legend(fontsize=7)
    genre = frame[(frame["groups"] == "genre") & frame["loss"].notna()]
    for method, part in genre.groupby("method", sort=False):
        corr = (
            part.groupby(["seed", "epoch"])
            .apply(lambda g: g["weight"].corr(g["loss"], method="spearman"), include_groups=False)
            .groupby("epoch")
            .mean()
        )
        right.plot(corr.index, corr.values, marker=".", label=method)
    right.axhline(0.0, color="grey", lw=0.5, ls="--")
    right.set(
        title="genre groups: Spearman(weight, loss) over genres",
        xlabel="epoch",
        ylabel="> 0: higher-loss genres weighted up",
    )
    right.set_ylim(-1.02, 1.02)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep-dir", type=Path, action="append", default=[], help="a sweep directory")
    parser.add_argument("--rows", type=Path, action="append", default=[], help="a CSV of an earlier call")
    parser.add_argument("--out", type=Path, default=Path("docs") / "results_methods" / "bifair_weights.png")
    args = parser.parse_args()
    earlier = [pd.read_csv(path) for path in args.rows]
    frame = pd.concat([*earlier, collect(args.sweep_dir)], ignore_index=True)
    if frame.empty:
        raise SystemExit(f"no BiFair epoch line in {[str(d) for d in args.sweep_dir]} or {args.rows}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out.with_suffix(".csv"), index=False)
    plot(frame, args.out)
    summary = frame.groupby(["method", "groups", "epoch", "group"])[["weight", "loss"]].mean().reset_index()
    print(summary[summary["epoch"] < 3].to_string(index=False))
    print(f"written to {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()

"""Seconds per training epoch of every fairness method, relative to ERM measured in the same process.

    python scripts/bench_methods.py [--epochs N] [--methods erm,bifair,...] [--threads T] [hydra overrides...]

Every method trains the default experiment's model (``model=alpharec`` on ``dataset=ml100k`` unless
overridden) from the same initialisation for 1 + N epochs; the first epoch is a warm-up and is not counted,
and no evaluation runs between the timed epochs (an epoch's time is the gap between consecutive
``on_epoch_end`` calls). ERM runs first and last, and the ratios divide by the mean of its two timings, whose
spread shows the noise of the machine; ratios of process CPU time are given too (less sensitive to other
processes on a shared machine). With ``--repeats R`` the whole sequence runs R times and the table
shows the median seconds and the median of the per-repeat ratios (sturdier on a shared machine). Method
options such as ``method.groups=genre`` apply to every method that has them; a method entry
``name+key=value+...`` times one method with its own options (e.g.
``bifair+gradient_space=representation+fd_scheme=forward``, BiFair's cheaper variant).
Results: a table on stdout and ``outputs/bench/methods.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fairbench.config import compose_config, list_options
from fairbench.pipeline import Inputs, load_inputs, prepare, train
from fairbench.runtime import resolve_device

DEFAULT_METHODS = (
    "erm",
    "reweight",
    "groupdro",
    "drorec",
    "popdro",
    "multifr",
    "itfr",
    "bifair",
    "bifair+gradient_space=representation+fd_scheme=forward",
    "bifair_separate",
)


def split_entry(entry: str) -> tuple[str, list[str]]:
    """``name+key=value+...`` -> (name, ["method.key=value", ...])."""
    name, *options = entry.split("+")
    return name, [f"method.{option}" for option in options]


def epoch_seconds(entry: str, overrides: list[str], epochs: int, inputs: Inputs) -> dict:
    """Train method ``entry`` for 1 + ``epochs`` epochs; the per-epoch seconds after the warm-up epoch."""
    name, own = split_entry(entry)
    overrides = [*overrides, *own]
    cfg = compose_config([f"method={name}", *[o for o in overrides if not o.startswith("method.")]])
    OmegaConf.set_struct(cfg, False)
    for override in overrides:  # method options only where the method has them (e.g. groups)
        key, _, value = override.partition("=")
        if key.startswith("method.") and key[len("method.") :] in cfg.method:
            cfg.merge_with_dotlist([f"{key}={value}"])
    exp = prepare(cfg, inputs)
    exp.trainer.max_epochs, exp.trainer.eval_every = epochs + 1, 10**9
    exp.trainer.progress, exp.trainer.checkpoint = False, False
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def timed_end(epoch: int) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    train(exp, validate=False, on_epoch_end=timed_end)
    per_epoch, cpu_per_epoch = np.diff(stamps), np.diff(cpu_stamps)
    return {
        "method": entry,
        "groups": exp.method.group_kind,
        "epochs_timed": len(per_epoch),
        "seconds_per_epoch": float(per_epoch.mean()),
        "seconds_per_epoch_min": float(per_epoch.min()),
        "cpu_seconds_per_epoch": float(cpu_per_epoch.mean()),
    }


def summarize(name: str, index: int, repeats: list[list[dict]]) -> dict:
    """Median seconds and median per-repeat ratios (wall and CPU time) of the ``index``-th run of a repeat."""
    summary: dict = {"method": name, "groups": repeats[0][index]["groups"]}
    for key, prefix in (("seconds_per_epoch", ""), ("cpu_seconds_per_epoch", "cpu_")):
        ratios, seconds = [], []
        for rows in repeats:
            erm = float(np.mean([r[key] for r in rows if r["method"] == "erm"]))
            value = erm if name == "erm" else rows[index][key]
            seconds.append(value)
            ratios.append(value / erm)
        summary[key] = float(np.median(seconds))
        summary[f"{prefix}ratio_vs_erm"] = float(np.median(ratios))
        summary[f"{prefix}ratios_per_repeat"] = ratios
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per method (after one warm-up)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method names")
    parser.add_argument("--repeats", type=int, default=1, help="run the whole sequence this many times")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)"
    )
    parser.add_argument("--out", default="outputs/bench/methods.json", help="where to write the results")
    args, overrides = parser.parse_known_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted({split_entry(m)[0] for m in methods} - set(list_options()["method"]))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list_options()['method']}")

    cfg = compose_config([o for o in overrides if not o.startswith("method.")])
    inputs = load_inputs(cfg)
    device, data = resolve_device(cfg.device), inputs.data

    order = ["erm", *[m for m in methods if m != "erm"], "erm"]
    repeats: list[list[dict]] = []
    for repeat in range(args.repeats):
        rows = []
        for name in order:
            row = epoch_seconds(name, overrides, args.epochs, inputs)
            rows.append(row)
            print(
                f"  [{repeat + 1}/{args.repeats}] {name:<56} {row['seconds_per_epoch']:8.2f} s/epoch "
                f"(cpu {row['cpu_seconds_per_epoch']:.2f} s)",
                flush=True,
            )
        repeats.append(rows)
    results = [summarize(name, index, repeats) for index, name in enumerate(order[:-1])]
    print(
        f"\n{'method':<56} {'groups':<6} {'s/epoch':>9} {'x erm':>7} {'cpu x erm':>10}  wall ratio per repeat"
    )
    for r in results:
        spread = ", ".join(f"{x:.2f}" for x in r["ratios_per_repeat"])
        label = f"{r['method']:<56} {str(r['groups']):<6} {r['seconds_per_epoch']:>9.2f}"
        print(f"{label} {r['ratio_vs_erm']:>7.2f} {r['cpu_ratio_vs_erm']:>10.2f}  {spread}")
    erm_runs = [[r["seconds_per_epoch"] for r in rows if r["method"] == "erm"] for rows in repeats]
    print("erm wall s/epoch (first, last) per repeat: " + "; ".join(f"{a:.2f}, {b:.2f}" for a, b in erm_runs))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "overrides": overrides,
        "epochs_timed": args.epochs,
        "repeats": args.repeats,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "dataset": data.name,
        "model": cfg.model._target_,
        "erm_seconds_per_epoch_runs": erm_runs,
        "methods": results,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Synthetic full-ranking benchmark: fairbench's ``full_ranking_topk`` vs a naive batched loop.

    python scripts/bench_ranking.py                         (default sizes, 1 thread, a few minutes)
    python scripts/bench_ranking.py --sizes 100kx100k --repeats 3
    python scripts/bench_ranking.py --all --max-users 20000 (the issue's grid, per-user cost from 20k users)

Problem: random float32 user and item embeddings (d=64 by default), scores = user @ item^T, a random training
history of ``--history`` items per user that must be masked (CSR), K=20, batches of 1024 users. Sizes are
USERSxITEMS with k/M suffixes; ``--all`` is the grid {10k, 100k, 1M} users x {10k, 100k} items.

Contenders, on the same embeddings and history, in the same process:
  fairbench  ``full_ranking_topk(lambda u: U[u] @ V.T, users, history, k, batch_size)``: the evaluator's
             path (input checks, deterministic tie rule, -1 padding).
  naive      per batch: GEMM, write -inf at the batch's history entries (indices precomputed outside the
             timing), ``torch.topk(scores, k)``, copy the indices out. No tie rule, no checks.

Timing: the users are cut into chunks of ``--chunk-batches`` batches; on every chunk both contenders run back
to back (alternating which goes first), and each pass over all users is repeated ``--repeats`` times, after
an untimed warm-up of each on the first chunk. Ranking cost is linear in users, so a chunk is a small
complete run (fairbench gets the chunk's rows of the history matrix and ranks them with one call).
Reported: per contender the median over passes of the wall-clock seconds for all users, ``ratio`` =
fairbench / naive of those medians, ``paired`` = the median over chunks of the per-chunk wall-clock ratio,
which cancels load that varies over time, and ``cpu paired`` = the same from process CPU seconds
(``time.process_time``), which also leaves out the time the process waits for a core: with one thread, the
figure to read on a shared, oversubscribed machine. ``rows differing`` counts users whose lists differ,
possible only through exact score ties, where torch.topk's order is unspecified (the json's
``rows_differing_not_by_ties`` counts rows whose lists do not hold the same scores in the same order: 0).

Threads: torch runs with ``--threads`` intra-op threads (default 1; OMP_NUM_THREADS and MKL_NUM_THREADS are
set to the same value before torch is imported). One thread gives stable ratios on shared machines; compare
ratios, not seconds, across machines.

Large sizes: ``--max-users N`` times the first N users only (a problem built with N users and the full item
count) and scales the seconds to all users (``est_seconds_all_users`` in the json; the table marks such
rows with ``~``).

Results: printed as a table and written to outputs/bench/bench_ranking.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

DEFAULT_SIZES = "10kx10k,100kx10k,10kx100k"
ALL_SIZES = "10kx10k,10kx100k,100kx10k,100kx100k,1Mx10k,1Mx100k"
SUFFIXES = {"k": 1_000, "m": 1_000_000}
TABLE_HEADER = (
    "|     users |   items |  fairbench s |    naive s | ratio | paired | cpu paired | rows differing |\n"
    "|-----------|---------|--------------|------------|-------|--------|------------|----------------|"
)


def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = SUFFIXES.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for token in text.split(","):
        users, _, items = token.lower().partition("x")
        if not items:
            raise SystemExit(f"size {token!r} is not USERSxITEMS, e.g. 10kx100k")
        sizes.append((parse_count(users), parse_count(items)))
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"USERSxITEMS list (default {DEFAULT_SIZES})")
    parser.add_argument("--all", action="store_true", help=f"the issue's grid: {ALL_SIZES}")
    parser.add_argument("--dim", type=int, default=64, help="embedding size d")
    parser.add_argument("--k", type=int, default=20, help="ranking cut-off K")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per score block")
    parser.add_argument("--chunk-batches", type=int, default=4, help="batches per interleaved chunk")
    parser.add_argument("--history", type=int, default=50, help="masked (training) items per user")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over all users")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--max-users", type=int, default=None, help="time at most this many users per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench/bench_ranking.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import numpy as np
    import scipy.sparse as sp
    import torch

    from fairbench.metrics import full_ranking_topk

    torch.set_num_threads(args.threads)

    def make_problem(n_users: int, n_items: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        user_emb = torch.randn(n_users, args.dim, generator=generator)
        item_t = torch.randn(n_items, args.dim, generator=generator).T.contiguous()
        rng = np.random.default_rng(seed)
        per_user = min(args.history, n_items)
        columns = rng.integers(0, n_items, size=(n_users, per_user))
        columns.sort(axis=1)
        history = sp.csr_matrix(
            (np.ones(columns.size, dtype=np.float32), columns.ravel(), np.arange(n_users + 1) * per_user),
            shape=(n_users, n_items),
        )
        history.sum_duplicates()
        return user_emb, item_t, history

    def run_fairbench(user_emb, item_t, history) -> np.ndarray:
        users = np.arange(user_emb.shape[0])
        return full_ranking_topk(lambda u: user_emb[u] @ item_t, users, history, args.k, args.batch_size)

    def run_naive(user_emb, item_t, masks) -> np.ndarray:
        indptr, rows, columns = masks
        n_users = user_emb.shape[0]
        out = np.empty((n_users, args.k), dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, n_users, args.batch_size):
                end = min(start + args.batch_size, n_users)
                scores = user_emb[start:end] @ item_t
                lo, hi = indptr[start], indptr[end]
                scores[rows[lo:hi] - start, columns[lo:hi]] = float("-inf")
                out[start:end] = torch.topk(scores, args.k, dim=1).indices.numpy()
        return out

    def tie_differences(emb, item_t, rows: np.ndarray, first: np.ndarray, second: np.ndarray) -> int:
        """How many of these rows list the same scores in the same order (lists that differ among ties).
        Scores are recomputed with the contenders' batch GEMM: a GEMM's last bits may depend on its shape."""
        same_rows = 0
        with torch.inference_mode():
            for row, one, other in zip(rows, first, second, strict=True):
                if (one < 0).any() or (other < 0).any():
                    continue
                start = row // args.batch_size * args.batch_size
                scores = (emb[start : start + args.batch_size] @ item_t)[row - start]
                same_rows += bool(torch.equal(scores[torch.from_numpy(one)], scores[torch.from_numpy(other)]))
        return same_rows

    def chunk_inputs(user_emb, history, start: int, end: int):
        """Both contenders' inputs for users start..end-1 (prepared outside the timing)."""
        part = history[start:end]
        rows = np.repeat(np.arange(end - start, dtype=np.int64), np.diff(part.indptr))
        masks = (part.indptr, torch.from_numpy(rows), torch.from_numpy(part.indices.astype(np.int64)))
        return user_emb[start:end], part, masks

    def timed(fn, *fn_args):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*fn_args)
        return time.perf_counter() - wall, time.process_time() - cpu, value

    sizes = parse_sizes(ALL_SIZES if args.all else args.sizes)
    chunk = args.chunk_batches * args.batch_size
    results = []
    print(
        f"threads={args.threads} d={args.dim} k={args.k} batch={args.batch_size} history={args.history} "
        f"chunk={chunk} users repeats={args.repeats}"
    )
    print(TABLE_HEADER)
    for n_users, n_items in sizes:
        timed_users = min(n_users, args.max_users) if args.max_users else n_users
        user_emb, item_t, history = make_problem(timed_users, n_items, args.seed)
        chunks = [
            chunk_inputs(user_emb, history, start, min(start + chunk, timed_users))
            for start in range(0, timed_users, chunk)
        ]
        emb, part, masks = chunks[0]
        run_fairbench(emb, item_t, part)
        run_naive(emb, item_t, masks)
        seconds: dict[str, list[float]] = {"fairbench": [], "naive": []}
        cpu_seconds: dict[str, list[float]] = {"fairbench": [], "naive": []}
        chunk_ratios: list[float] = []
        cpu_chunk_ratios: list[float] = []
        differing = unexplained = 0
        for repeat in range(args.repeats):
            totals = {"fairbench": 0.0, "naive": 0.0}
            cpu_totals = {"fairbench": 0.0, "naive": 0.0}
            differing = unexplained = 0
            for index, (emb, part, masks) in enumerate(chunks):
                first_fairbench = (repeat + index) % 2 == 0
                elapsed, cpu = {}, {}
                for name in ("fairbench", "naive") if first_fairbench else ("naive", "fairbench"):
                    if name == "fairbench":
                        elapsed[name], cpu[name], fairbench_lists = timed(run_fairbench, emb, item_t, part)
                    else:
                        elapsed[name], cpu[name], naive_lists = timed(run_naive, emb, item_t, masks)
                    totals[name] += elapsed[name]
                    cpu_totals[name] += cpu[name]
                chunk_ratios.append(elapsed["fairbench"] / elapsed["naive"])
                cpu_chunk_ratios.append(cpu["fairbench"] / max(cpu["naive"], 1e-9))
                rows = np.flatnonzero((fairbench_lists != naive_lists).any(axis=1))
                differing += rows.size
                by_ties = tie_differences(emb, item_t, rows, fairbench_lists[rows], naive_lists[rows])
                unexplained += rows.size - by_ties
            for name in totals:
                seconds[name].append(totals[name])
                cpu_seconds[name].append(cpu_totals[name])
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        row = {
            "users": n_users,
            "items": n_items,
            "timed_users": timed_users,
            "seconds": seconds,
            "median_seconds": medians,
            "ratio": medians["fairbench"] / medians["naive"],
            "paired_ratio": statistics.median(chunk_ratios),
            "chunk_ratios": chunk_ratios,
            "cpu_seconds": cpu_seconds,
            "cpu_paired_ratio": statistics.median(cpu_chunk_ratios),
            "cpu_chunk_ratios": cpu_chunk_ratios,
            "rows_differing": differing,
            "rows_differing_not_by_ties": unexplained,
        }
        if timed_users != n_users:
            row["est_seconds_all_users"] = {
                name: value * n_users / timed_users for name, value in medians.items()
            }
        results.append(row)
        print_row(row)
        del user_emb, item_t, history, chunks

    keys = ("dim", "k", "batch_size", "chunk_batches", "history", "repeats", "threads", "max_users", "seed")
    report = {
        "config": {key: getattr(args, key) for key in keys}
        | {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


def print_row(row: dict) -> None:
    estimated = "est_seconds_all_users" in row
    seconds = row["est_seconds_all_users"] if estimated else row["median_seconds"]
    mark = "~" if estimated else " "
    print(
        f"| {row['users']:>9} | {row['items']:>7} | {mark}{seconds['fairbench']:>11.2f} | "
        f"{mark}{seconds['naive']:>9.2f} | {row['ratio']:.3f} | {row['paired_ratio']:>6.3f} | "
        f"{row['cpu_paired_ratio']:>10.3f} | {row['rows_differing']:>14} |"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

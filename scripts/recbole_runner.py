"""The RecBole side of scripts/bench_recbole.py: one timed RecBole 1.2.1 run, printed as one JSON line.

    .venv-recbole/bin/python scripts/recbole_runner.py --model LightGCN --epochs 3 --data-file <ml-100k.inter>

Runs in RecBole's own virtual environment (see `make bench-recbole`); it imports nothing from fairbench.
Settings follow fairbench's ID-based defaults (conf/model/{mf,lightgcn}.yaml, conf/trainer/id_based.yaml) and
its general protocol on ml100k (conf/dataset/protocol/general.yaml); scripts/bench_recbole.py lists what
still differs. Steps and what each is timed as:

    import      recbole and torch
    data        Config, create_dataset (rating >= 3, users with >= 20 interactions), data_preparation
                (per-user random 40/30/30 split, uniform negative sampler, full-sort loaders)
    build       the model (LightGCN: the normalised adjacency) and the Trainer (Adam)
    epochs      each `Trainer._train_epoch` (negative sampling, forward, backward, step), as RecBole's own
                "training time" per epoch; `fit` runs without validation and saves nothing
    eval        one full-sort evaluation of the test split (Recall, NDCG, Hit at 10 and 20), scoring
                ``--eval-users`` users per batch (fairbench: trainer.eval_batch_size = 1024 users)

The line starts with ``BENCH `` and holds the seconds of each step, the per-epoch seconds, CPU seconds of
the epochs, dataset sizes and the test metrics. Files RecBole insists on writing (tensorboard events, an
empty checkpoint folder) go to ``--workdir`` (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

MODELS = ("BPR", "LightGCN")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=MODELS, required=True, help="BPR (= fairbench mf) or LightGCN")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--data-file", type=Path, required=True, help="RecBole's ml-100k.inter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-users", type=int, default=1024, help="users scored per full-sort batch")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where RecBole writes (default: temporary)"
    )
    return parser.parse_args(argv)


def recbole_config(model: str, epochs: int, data_root: Path, checkpoint_dir: Path, seed: int) -> dict:
    """RecBole settings matching fairbench's mf / lightgcn defaults on ml100k as far as RecBole allows."""
    return {
        "model": model,
        "dataset": "ml-100k",
        "data_path": str(data_root),
        "checkpoint_dir": str(checkpoint_dir),
        "use_gpu": False,
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        "worker": 0,
        # data: fairbench's general protocol (rating >= 3, then users with >= 20 interactions, per-user
        # random 40/30/30 split; no item filter)
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "val_interval": {"rating": "[3,inf)"},
        "user_inter_num_interval": "[20,inf)",
        "eval_args": {"split": {"RS": [0.4, 0.3, 0.3]}, "group_by": "user", "order": "RO", "mode": "full"},
        # model: embedding 64, LightGCN 2 layers, L2 1e-4 * (squared norms of the batch's layer-0
        # embeddings) / 2 averaged over the batch (require_pow=True is fairbench's reg_weight / 2 * |e|^2;
        # RecBole's BPR has no embedding L2 term at all)
        "embedding_size": 64,
        "n_layers": 2,
        "reg_weight": 1e-4,
        "require_pow": True,
        # training: Adam lr 1e-3, 2048 (user, positive) pairs per step, one uniform negative per pair drawn
        # outside the user's training items
        "epochs": epochs,
        "learner": "adam",
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "train_batch_size": 2048,
        "train_neg_sample_args": {
            "distribution": "uniform",
            "sample_num": 1,
            "alpha": 1.0,
            "dynamic": False,
            "candidate_num": 0,
        },
        "shuffle": True,
        "eval_step": epochs + 1,
        "metrics": ["Recall", "NDCG", "Hit"],
        "topk": [10, 20],
        "valid_metric": "Recall@20",
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value pairs from the command line itself
    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    out: dict = {"import_seconds": time.perf_counter() - STARTED}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recbole-bench-"))
    data_root = workdir / "data"
    (data_root / "ml-100k").mkdir(parents=True, exist_ok=True)
    link = data_root / "ml-100k" / "ml-100k.inter"
    if not link.exists():
        link.symlink_to(args.data_file.resolve())
    os.chdir(workdir)  # RecBole writes log_tensorboard/ into the working directory
    try:
        started = time.perf_counter()
        config = Config(
            model=args.model,
            dataset="ml-100k",
            config_dict=recbole_config(args.model, args.epochs, data_root, workdir / "saved", args.seed),
        )
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        config["eval_batch_size"] = args.eval_users * dataset.item_num  # users per full-sort batch
        train_data, _valid_data, test_data = data_preparation(config, dataset)
        out["data_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = Trainer(config, model)
        out["build_seconds"] = time.perf_counter() - started

        epoch_seconds: list[float] = []
        epoch_cpu_seconds: list[float] = []
        train_epoch = trainer._train_epoch

        def timed_epoch(*a, **kw):
            started, cpu_started = time.perf_counter(), time.process_time()
            loss = train_epoch(*a, **kw)
            epoch_seconds.append(time.perf_counter() - started)
            epoch_cpu_seconds.append(time.process_time() - cpu_started)
            return loss

        trainer._train_epoch = timed_epoch
        started = time.perf_counter()
        trainer.fit(train_data, valid_data=None, saved=False, show_progress=False, verbose=False)
        out["train_seconds"] = time.perf_counter() - started
        out["epoch_seconds"], out["epoch_cpu_seconds"] = epoch_seconds, epoch_cpu_seconds

        started = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        out["eval_seconds"] = time.perf_counter() - started
        out["test"] = {k: float(v) for k, v in result.items()}
        out |= {
            "users": dataset.user_num - 1,  # RecBole counts the padding id 0
            "items": dataset.item_num - 1,
            "train_interactions": len(train_data._dataset),
            "steps_per_epoch": len(train_data),
            "threads": torch.get_num_threads(),
            "versions": {"recbole": _version("recbole"), "torch": torch.__version__},
            "inner_seconds": time.perf_counter() - STARTED,
        }
    finally:
        os.chdir("/")
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("BENCH " + json.dumps(out), flush=True)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()

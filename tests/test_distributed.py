"""Data-parallel training: how an optimiser step's micro-batches are dealt out over the processes, and a
2-process CPU (gloo) BIGRec run on a tiny causal LM that takes the same steps as one process with the same
global batch."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fairbench.config import compose_config
from fairbench.distributed import DistContext, check_data_parallel, owns_step, rank_steps
from fairbench.errors import UserError
from fairbench.methods.groupdro import GroupDRO
from fairbench.methods.itfr import ITFR
from fairbench.methods.reweight import Reweight
from fairbench.pipeline import prepare, train
from tests.helpers.cli import single_run_dir
from tests.helpers.data_parallel import alpharec_fit, free_port, spawn_alpharec, spawn_training
from tests.test_bigrec import tiny_overrides


def test_rank_steps_deal_out_each_window_of_the_single_process_run():
    # 9 micro-batches, 2 accumulated per process, 2 processes: windows of 4, the last one has 1 micro-batch
    assert rank_steps(9, 2, DistContext(2, 0)) == [[0, 2], [4, 6], [8]]
    assert rank_steps(9, 2, DistContext(2, 1)) == [[1, 3], [5, 7], []]
    for n_steps, accumulate, world in itertools.product((1, 5, 9, 12), (1, 2, 3), (1, 2, 3, 4)):
        single = rank_steps(n_steps, accumulate * world, DistContext())
        per_rank = [rank_steps(n_steps, accumulate, DistContext(world, r)) for r in range(world)]
        assert all(len(windows) == len(single) for windows in per_rank)  # every rank takes every step
        for w, steps in enumerate(single):
            dealt = [s for windows in per_rank for s in windows[w]]
            assert sorted(dealt) == steps  # the same micro-batches, each in exactly one process
            assert max(len(windows[w]) for windows in per_rank) <= accumulate
            for r, windows in enumerate(per_rank):
                window = accumulate * world
                assert all(owns_step(s, window, DistContext(world, r)) for s in windows[w])


def test_methods_that_cannot_be_split_over_processes_are_refused():
    check_data_parallel(Reweight())  # stateless weights: exact across processes
    with pytest.raises(UserError, match="combines per-group gradients"):
        check_data_parallel(ITFR())
    with pytest.raises(UserError, match="updates its own state"):
        check_data_parallel(GroupDRO())


def parallel_overrides(model_dir: Path, cache: Path, accumulate: int) -> list[str]:
    # LoRA dropout 0: its masks come from each process's own random stream, which cannot follow the
    # single process's draws once the micro-batches are split, so with dropout the two runs differ
    return tiny_overrides(
        model_dir,
        cache,
        "model.lora.dropout=0",
        "dataset.protocol.max_train_samples=17",  # 9 micro-batches of 2: the last window has one
        "trainer.batch_size=2",
        f"trainer.accumulate_grad_batches={accumulate}",
        "trainer.progress=false",
        "trainer.lr=1e-2",  # large steps: a gradient that is not summed over the processes shows at once
        "method=reweight",
    )


@pytest.mark.slow  # ~60 s on 2 busy cores: two fresh processes import torch, transformers and peft
def test_two_processes_take_the_steps_of_one_process_with_the_same_global_batch(
    tiny_lm_dir, tmp_path, single_thread
):
    cache = tmp_path / "cache"
    single = prepare(compose_config(parallel_overrides(tiny_lm_dir, cache, accumulate=4)))
    fitted = train(single, None)
    ranks = spawn_training(2, parallel_overrides(tiny_lm_dir, cache, accumulate=2), tmp_path / "dp")
    assert len(fitted.step_losses) == 6  # 2 epochs of 3 steps (8 + 8 + 1 samples)
    for saved in ranks:
        diff = max(abs(a - b) for a, b in zip(saved["step_losses"], fitted.step_losses, strict=True))
        print(f"max |step loss difference| = {diff:.2e}")
        assert diff < 1e-5
        for row, expected in zip(saved["history"], fitted.history, strict=True):
            assert row.keys() == expected.keys()
            for key in expected:
                assert row[key] == pytest.approx(expected[key], abs=1e-5), key
        reference = single.model.trainable_state_dict()
        assert saved["state"].keys() == reference.keys()
        worst = max(float((saved["state"][k] - v).abs().max()) for k, v in reference.items())
        print(f"max |adapter parameter difference| = {worst:.2e}")
        for key, value in reference.items():
            torch.testing.assert_close(saved["state"][key], value, rtol=1e-4, atol=1e-6)
    # one adapter for both processes; rank 0 alone wrote the checkpoints
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=0, atol=0)
    assert (tmp_path / "dp" / "run" / "checkpoints" / "last.ckpt").is_file()


LAUNCHERS = {  # the README's forms, with 2 CPU processes
    "torchrun": ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    + ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "{port}"],
}


@pytest.mark.slow  # ~50 s each: two processes start the whole run from the command line
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launched_module_writes_one_run_directory_with_the_single_process_trajectory(
    tiny_lm_dir, tmp_path, single_thread, launcher
):
    cache, out = tmp_path / "cache", tmp_path / "outputs"
    single = prepare(compose_config(parallel_overrides(tiny_lm_dir, cache, accumulate=4)))
    fitted = train(single, None)
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", *(a.format(port=free_port()) for a in LAUNCHERS[launcher])]
    command += ["-m", "fairbench.cli", "train", *parallel_overrides(tiny_lm_dir, cache, accumulate=2)]
    env = os.environ | {
        "FAIRBENCH_OUTPUTS": str(out),
        "PYTHONPATH": str(repo),  # this checkout's fairbench, also under an editable install of another
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.glob("runs/*/*"))) == 1  # one run directory for both processes
    run_dir = single_run_dir(out)
    assert {"metrics.json", "history.csv", "generations.jsonl", "train.log"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert done.stdout.count("test results") == 1  # rank 0 alone prints the table
    history = pd.read_csv(run_dir / "history.csv")
    expected = pd.DataFrame(fitted.history)
    pd.testing.assert_frame_equal(history, expected, check_exact=False, atol=1e-6, rtol=0)
    best = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
    for key, value in single.model.trainable_state_dict().items():
        torch.testing.assert_close(best[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "seed=0,1"], "one launch per job"),
        (["method=groupdro"], "updates its own state"),
    ],
)
def test_what_a_launch_cannot_run_ends_with_one_message_before_work(tmp_path, args, message):
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env |= {"MASTER_PORT": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "fairbench.cli", "train", *args, "logger=none"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.slow  # ~25 s on 2 busy cores (two fresh processes)
def test_a_pair_model_with_sampled_negatives_takes_the_single_process_steps(tmp_path, single_thread):
    # every process draws every micro-batch's negatives from the epoch's stream, keeping only its own
    single = alpharec_fit(accumulate=4)
    for saved in spawn_alpharec(2, tmp_path):
        assert len(saved["step_losses"]) == len(single["step_losses"])
        diff = max(abs(a - b) for a, b in zip(saved["step_losses"], single["step_losses"], strict=True))
        assert diff < 1e-6
        for key, value in single["state"].items():
            torch.testing.assert_close(saved["state"][key], value, rtol=1e-5, atol=1e-6)

"""Running the ``fairbench`` command as a user does: a real subprocess in its own output folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FAIRBENCH = str(Path(sys.executable).parent / "fairbench")
ROOT = Path(__file__).resolve().parents[2]
QUICK = ["trainer.max_epochs=2", "trainer.progress=false"]


def fairbench(
    *args: str, out: Path, env: dict | None = None, timeout: int = 600, as_module: bool = False
) -> subprocess.CompletedProcess:
    """``fairbench *args``; with ``as_module``, ``python -m fairbench.cli *args``."""
    out.mkdir(parents=True, exist_ok=True)
    full_env = os.environ | {"FAIRBENCH_OUTPUTS": str(out), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    # the package of this checkout, also when the environment's editable install points at another one
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [*([sys.executable, "-m", "fairbench.cli"] if as_module else [FAIRBENCH]), *args],
        env=full_env | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=out,
    )


def single_run_dir(out: Path) -> Path:
    (run_dir,) = [p.parent for p in out.glob("runs/*/*/metrics.json")]
    return run_dir


def run_quick_job(out: Path) -> float | None:
    """One ``trainer=quick`` epoch run in this process through the Hydra task (``fairbench.cli.run_job``),
    writing its run directory to ``out``; returns what the task returns to a sweeper."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from fairbench.cli import run_job
    from fairbench.config import compose_config

    cfg = compose_config(
        ["trainer=quick", "trainer.max_epochs=1", "trainer.progress=false", "logger=none"],
        return_hydra_config=True,
    )
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return run_job(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))

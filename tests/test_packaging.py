"""The config tree ships inside the wheel and is found after a non-editable install, from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_finds_every_config(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("fairbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"fairbench/conf/{name}" for name in shipped} <= names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import fairbench; from fairbench.config import compose_config, validate_config; "
        "cfg = compose_config([], return_hydra_config=True); assert not validate_config(cfg); "
        "print(fairbench.__file__); print(cfg.model._target_)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(site)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert str(site) in result.stdout and "fairbench.models.alpharec.AlphaRec" in result.stdout

"""scripts/gpu_check.sh --dry-run: the prepared GPU run's plan parses on any machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_gpu_run_plan_parses(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("gpu_tests", "refine_ffhq1024", "load_sweep", "refine_mobile1024"):
        assert step in run.stdout
    assert "every command parses" in run.stdout
    collected = int(run.stdout.strip().splitlines()[-1].split("/")[0])  # "12/286 tests collected …"
    assert collected >= 10  # the gpu-marked tests exist and are collected without CUDA

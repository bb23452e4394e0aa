"""A description of the machine a figure was measured on, recorded with every benchmark result."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch


def describe() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_label(info: dict[str, Any] | None = None) -> str:
    """A short name for the machine: the GPU's (``nvidia-h100-80gb-hbm3``) or ``cpu-<n>core``."""
    info = info or describe()
    if info.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", str(info["gpu"]).lower()).strip("-")
    return f"cpu-{info['cores']}core"


def results_dir(root: str | Path = Path(__file__).parent / "results") -> Path:
    """Where a run's figures go by default: ``benchmarks/results/<date>-<machine>/``."""
    return Path(root) / f"{datetime.date.today().isoformat()}-{machine_label()}"


def save_record(path: str | Path, benchmark: str, results: Any, **context: Any) -> Path:
    """Write ``{"benchmark", **context, "machine", "results"}`` as JSON and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark, **context, "machine": describe(), "results": results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path

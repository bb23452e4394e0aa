"""Where a benchmark's figures go, and the record that carries the machine they were measured on
(:func:`anonymixer.machine.describe`)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

from anonymixer.machine import describe


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

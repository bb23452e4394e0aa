"""ONNX models → TensorRT plans with a dynamic-batch optimisation profile (min 1, opt, max).

Needs the ``gpu`` extra (``tensorrt``) and a CUDA device: a plan is built for, and only runs on,
the GPU model and TensorRT version it was built with — both are recorded in ``<name>.plan.json``
beside each plan. A timing cache (``timing.cache``) in the output folder makes rebuilds fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16")


class TensorRTUnavailable(RuntimeError):
    pass


def _require_tensorrt():  # returns the tensorrt module
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable("TensorRT is not installed: pip install '.[gpu]' on a machine with a GPU") from exc
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "no CUDA device: TensorRT plans are built on the GPU they will run on (use the onnxruntime or "
            "embedded target on CPU-only machines)"
        )
    return trt


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp16",
    max_batch: int = 16,
    opt_batch: int | None = None,
    workspace_gib: float = 8.0,
) -> dict[str, dict]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    trt = _require_tensorrt()
    import torch

    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((onnx_dir / "onnx_manifest.json").read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = out / "timing.cache"
    config_template = builder.create_builder_config()
    timing_cache = config_template.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    opt = opt_batch or max(1, max_batch // 2)
    results = {}
    for name, facts in manifest["models"].items():
        start = time.perf_counter()
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_dir / facts["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{name}: TensorRT cannot parse the ONNX graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        dims = facts["input"]["dims"]
        profile = builder.create_optimization_profile()
        profile.set_shape(facts["input"]["name"], (1, *dims), (opt, *dims), (max_batch, *dims))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"{name}: TensorRT failed to build an engine (see the log above)")
        (out / f"{name}.plan").write_bytes(bytes(plan))
        results[name] = {
            "plan": f"{name}.plan",
            "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "precision": precision,
            "profile": {"min": 1, "opt": opt, "max": max_batch},
            "build_s": round(time.perf_counter() - start, 1),
        }
        (out / f"{name}.plan.json").write_text(json.dumps(results[name], indent=2) + "\n")
        print(f"{name}: {results[name]['build_s']} s", file=sys.stderr)
    cache_path.write_bytes(bytes(timing_cache.serialize()))
    return results

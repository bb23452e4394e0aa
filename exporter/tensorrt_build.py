"""ONNX models → TensorRT plans with a dynamic-batch optimisation profile (min 1, opt, max), and the
plan check that compares each plan with onnxruntime before a repository may use it.

Needs the ``gpu`` extra (``tensorrt``) and a CUDA device: a plan is built for, and only runs on,
the GPU model and TensorRT version it was built with — both are recorded in ``<name>.plan.json``
beside each plan. A timing cache (``timing.cache``) in the output folder makes rebuilds fast.

Plan check (``python -m exporter tensorrt … --check``): every plan runs on the same seeded inputs
as onnxruntime (CPU provider, the reference) at batch 1 and at the repository's max batch, and must
stay within these limits:

* fp32 plans: max |plan − onnxruntime| / max |onnxruntime| ≤ ``FP32_MAX_RELATIVE`` (1e-3);
* fp16/bf16 plans: the FR network's templates (``embedding``) each at cosine ≥ ``MIN_TEMPLATE_COSINE``
  (0.999) with onnxruntime's; images (``image``, compared after clamping to [-1, 1], peak-to-peak 2)
  each at PSNR ≥ ``MIN_IMAGE_PSNR_DB`` (40 dB: RMS error ≤ 1 % of the range, about 2.5 of 255 grey
  levels); latents (``w``, ``w_plus``) each within ``LATENT_MAX_RELATIVE`` (1 %, in norm);

and the plan's optimisation profile must take batch 1 up to the repository's ``max_batch_size``. The
verdict is written into ``<name>.plan.json``; ``exporter.repository`` refuses a plan without a
passing verdict. The comparison (``check_plan``) is a pure function of two runners (array in, array
out), so it is tested without TensorRT: onnxruntime against onnxruntime, and against a perturbed graph.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "bf16")
FP32_MAX_RELATIVE = 1e-3
MIN_TEMPLATE_COSINE = 0.999
MIN_IMAGE_PSNR_DB = 40.0
# Not from a measurement yet: fp16 keeps ~3 significant digits per op; the first GPU run will tell
# how much of this margin real plans use.
LATENT_MAX_RELATIVE = 1e-2

Runner = Callable[[np.ndarray], np.ndarray]  # a batch of inputs → the batch of outputs


class TensorRTUnavailable(RuntimeError):
    pass


class PlanCheckError(RuntimeError):
    """A plan that failed its check (or was never checked): its name and what failed."""


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


# --- the plan check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """A plan's optimisation profile for its input: batch range and per-item dims."""

    min: int
    opt: int
    max: int
    item_dims: tuple[int, ...]


def _items(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float64)


def max_relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def max_item_relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    g, r = _items(got), _items(ref)
    return float((np.linalg.norm(g - r, axis=1) / np.maximum(np.linalg.norm(r, axis=1), 1e-12)).max())


def min_cosine(got: np.ndarray, ref: np.ndarray) -> float:
    g, r = _items(got), _items(ref)
    norms = np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    return float(((g * r).sum(axis=1) / norms).min())


def min_psnr_db(got: np.ndarray, ref: np.ndarray) -> float:
    """The worst item's PSNR over [-1, 1] (what is shown, so both are clamped first; peak-to-peak 2)."""
    g, r = np.clip(_items(got), -1, 1), np.clip(_items(ref), -1, 1)
    mse = ((g - r) ** 2).mean(axis=1).max()
    return float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))


@dataclass(frozen=True)
class Criterion:
    metric: str
    measure: Callable[[np.ndarray, np.ndarray], float]
    limit: float
    at_least: bool  # the measure must be ≥ limit (similarities) rather than ≤ (errors)

    def worst(self, values: list[float]) -> float:
        return min(values) if self.at_least else max(values)

    def holds(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit


def criterion(output_name: str, precision: str) -> Criterion:
    """What a plan's output is held to: by its precision, and for reduced precision by what it is."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return Criterion("max relative error", max_relative_error, FP32_MAX_RELATIVE, at_least=False)
    if output_name == "embedding":
        return Criterion("min template cosine", min_cosine, MIN_TEMPLATE_COSINE, at_least=True)
    if output_name == "image":
        return Criterion("min PSNR (dB)", min_psnr_db, MIN_IMAGE_PSNR_DB, at_least=True)
    return Criterion("max per-item relative error", max_item_relative_error, LATENT_MAX_RELATIVE, at_least=False)


@dataclass(frozen=True)
class PlanCheck:
    name: str
    precision: str
    metric: str
    limit: float
    worst: float | None  # None: never run (no batch the profile takes)
    batches: tuple[int, ...]
    profile: Profile
    max_batch_size: int
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    def record(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_plan(
    name: str,
    facts: dict,
    plan: Runner,
    reference: Runner,
    *,
    precision: str,
    profile: Profile,
    max_batch_size: int,
) -> PlanCheck:
    """Compare one plan with the reference on the same seeded inputs at batch 1 and ``max_batch_size``
    (those the profile takes), and check that its profile covers 1…``max_batch_size``.
    ``facts``: the model's entry in onnx_manifest.json."""
    from exporter.onnx_export import Signature, sample_input

    dims, out_dims = tuple(facts["input"]["dims"]), tuple(facts["output"]["dims"])
    rule = criterion(facts["output"]["name"], precision)
    problems = []
    if profile.min > 1 or profile.max < max_batch_size:
        problems.append(
            f"its optimisation profile takes batches {profile.min}–{profile.max}, "
            f"the repository's max_batch_size needs 1–{max_batch_size}"
        )
    if profile.item_dims != dims:
        problems.append(f"its profile's item shape {list(profile.item_dims)} is not the model's {list(dims)}")
    sig = Signature(facts["input"]["name"], dims, facts["output"]["name"], out_dims)
    batches = tuple(b for b in sorted({1, max_batch_size}) if profile.min <= b <= profile.max)
    values = []
    for batch in batches:
        x = sample_input(sig, batch, seed=batch)
        got, ref = np.asarray(plan(x)), np.asarray(reference(x))
        if got.shape != (batch, *out_dims):
            problems.append(f"batch {batch}: output shape {list(got.shape)}, expected {[batch, *out_dims]}")
        elif not np.isfinite(got).all():
            problems.append(f"batch {batch}: non-finite outputs")
        else:
            values.append(rule.measure(got, ref))
    worst = rule.worst(values) if values else None
    if worst is not None and not rule.holds(worst):
        relation = "≥" if rule.at_least else "≤"
        problems.append(f"{rule.metric} {worst:.4g} vs onnxruntime, must be {relation} {rule.limit:g} ({precision})")
    return PlanCheck(name, precision, rule.metric, rule.limit, worst, batches, profile, max_batch_size, tuple(problems))


def onnxruntime_runner(path: str | Path) -> Runner:
    """The reference: the ONNX graph on onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    return lambda x: session.run([out.name], {inp.name: x})[0]


def tensorrt_runner(plan_path: str | Path) -> tuple[Runner, Profile]:
    """A deserialised plan as a runner (host arrays in and out, device buffers from torch), and its profile."""
    trt = _require_tensorrt()
    import torch

    plan_path = Path(plan_path)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise PlanCheckError(f"{plan_path.name}: TensorRT cannot load it (built for another GPU or TensorRT version?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    (inp,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    (out,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    for tensor in (inp, out):  # the repository's configs say FP32 in and out, whatever the plan computes in
        if engine.get_tensor_dtype(tensor) != trt.DataType.FLOAT:
            raise PlanCheckError(f"{plan_path.name}: tensor {tensor} is {engine.get_tensor_dtype(tensor)}, not FP32")
    low, opt, high = (tuple(shape) for shape in engine.get_tensor_profile_shape(inp, 0))
    profile = Profile(low[0], opt[0], high[0], tuple(high[1:]))
    context = engine.create_execution_context()

    def run(x: np.ndarray) -> np.ndarray:
        device_in = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        if not context.set_input_shape(inp, tuple(x.shape)):
            raise PlanCheckError(f"{plan_path.name}: the plan refuses input shape {list(x.shape)}")
        device_out = torch.empty(tuple(context.get_tensor_shape(out)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(inp, device_in.data_ptr())
        context.set_tensor_address(out, device_out.data_ptr())
        stream = torch.cuda.current_stream()  # the copy above ran on it: TensorRT's work queues behind it
        if not context.execute_async_v3(stream.cuda_stream):
            raise PlanCheckError(f"{plan_path.name}: TensorRT failed to run a batch of {len(x)}")
        stream.synchronize()
        return device_out.cpu().numpy()

    return run, profile


def check_plans(
    onnx_dir: str | Path,
    plans_dir: str | Path,
    *,
    max_batch_size: int,
    open_plan: Callable[[Path], tuple[Runner, Profile]] = tensorrt_runner,
) -> dict[str, PlanCheck]:
    """Check every plan of ``plans_dir`` against its ONNX graph, record each verdict in its
    ``<name>.plan.json``, and raise PlanCheckError naming every plan that failed (``open_plan``: how a
    plan file becomes a runner, TensorRT's but in tests)."""
    onnx_dir, plans = Path(onnx_dir), Path(plans_dir)
    manifest = json.loads((onnx_dir / "onnx_manifest.json").read_text())
    results = {}
    for name, facts in manifest["models"].items():
        record_path = plans / f"{name}.plan.json"
        record = json.loads(record_path.read_text())
        plan, profile = open_plan(plans / f"{name}.plan")
        result = check_plan(
            name,
            facts,
            plan,
            onnxruntime_runner(onnx_dir / facts["file"]),
            precision=record["precision"],
            profile=profile,
            max_batch_size=max_batch_size,
        )
        record["check"] = result.record()
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        verdict = "ok" if result.passed else "FAILED: " + "; ".join(result.problems)
        measured = "not run" if result.worst is None else f"{result.worst:.4g}"
        print(f"{name}.plan ({result.precision}): {result.metric} {measured} — {verdict}", file=sys.stderr)
        results[name] = result
    failed = [r for r in results.values() if not r.passed]
    if failed:
        raise PlanCheckError(
            "TensorRT plans failed their check against onnxruntime:\n"
            + "\n".join(f"  {r.name}.plan: {'; '.join(r.problems)}" for r in failed)
        )
    return results


def recorded_problems(plans_dir: str | Path, name: str, max_batch_size: int) -> list[str]:
    """Why the plan ``name`` in ``plans_dir`` may not go into a repository of this ``max_batch_size``
    (empty: it may), from the verdict ``check_plans`` recorded; the plan file itself must exist."""
    record_path = Path(plans_dir) / f"{name}.plan.json"
    rerun = "build and check it with `python -m exporter tensorrt … --check`"
    if not record_path.is_file():
        return [f"no {record_path.name} beside it: {rerun}"]
    check = json.loads(record_path.read_text()).get("check")
    if check is None:
        return [f"it was never compared with onnxruntime: {rerun}"]
    problems = list(check["problems"])
    covered = check["profile"]["max"]
    if covered < max_batch_size:
        problems.append(f"its profile takes batches up to {covered}, the repository needs {max_batch_size}")
    return problems

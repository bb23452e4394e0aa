"""ONNX models (+ optional TensorRT plans) → a complete Triton model repository.

Targets (DESIGN §3):

* ``embedded`` — the Triton 2.51 server inside the nvidia-pytriton wheel (Python backend only):
  each network is a thin Python-backend model (``optimizer_backend.onnx_model``) running
  onnxruntime, with the CUDA execution provider on ``KIND_GPU`` instances, or TensorRT through
  onnxruntime's TensorRT execution provider (``--ort-provider tensorrt``). With ``stages_via="torch"``
  the anonymixer model runs every network in-process, so the networks stay ``KIND_CPU``.
* ``onnxruntime`` — the NGC image's ONNX Runtime backend (``platform: "onnxruntime_onnx"``), with the
  TensorRT execution accelerator on GPU instances.
* ``tensorrt`` — the NGC image's TensorRT backend (``platform: "tensorrt_plan"``), plans from
  ``python -m exporter tensorrt --check``: a plan without a passing comparison with onnxruntime, or
  whose profile stops below ``max_batch_size``, is refused before anything is written.

``config.pbtxt`` files are built as ``ModelConfig`` protobuf messages (the schema tritonclient
ships) and written in text format, so they are valid by construction; the dims come from the
ONNX manifest, the batching and instance settings from the arguments below.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from anonymixer import bundle
from anonymixer.bundle import config_framing
from anonymixer.config import Overrides, resolve_settings
from anonymixer.face_detection import WEIGHT_FILES, packaged_weights_dir

TARGETS = ("embedded", "onnxruntime", "tensorrt")
REPOSITORY_ALGORITHM = "repository parameter 'algorithm'"  # the repository layer's name (anonymixer.config)
BUNDLE_FOLDER = "bundle"  # the anonymixer model's bundle, in its version folder
DETECTOR_WEIGHTS = "mtcnn"  # the face detector's weight files, in its version folder
SHIM = (
    '"""Triton entry point; the logic lives in {module}."""\n\nfrom {module} import TritonPythonModel  # noqa: F401\n'
)


@dataclass(frozen=True)
class RepositoryOptions:
    target: str = "embedded"
    max_batch_size: int = 16
    max_queue_delay_us: int = 1000  # how long the dynamic batcher waits to fill a batch
    gpus: tuple[int, ...] = ()  # empty: KIND_CPU instances
    instances: int = 1  # per GPU (or on the CPU)
    ort_provider: str = "cuda"  # embedded target on GPU: "cuda" or "tensorrt"
    trt_precision: str = "FP16"  # onnxruntime target: TensorRT accelerator precision
    # the anonymixer model
    protect_max_batch: int = 8  # items per execute (one refinement batch, before augmented views)
    max_image_pixels: int = 16_000_000  # larger aligned faces are refused before decoding
    protect_queue_delay_us: int = 20000  # wait this long for more requests to share a refinement
    max_queue_size: int = 64  # requests waiting beyond this are refused at once
    queue_timeout_s: float = 300.0  # a request still queued after this is refused
    algorithm: str = "{}"  # JSON object of ProtectConfig overrides
    stages_via: str = "bls"  # "bls" | "torch" for the gradient-free stages
    # scene mode (anonymixer_scene + face_detector)
    scene_max_batch: int = 4  # photos per execute
    scene: str = "{}"  # JSON object of SceneConfig overrides
    detector: str = "{}"  # JSON object of DetectorConfig overrides
    max_photo_pixels: int = 40_000_000  # larger photos are refused before decoding

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "tensorrt" and not self.gpus:
            raise ValueError("the tensorrt target needs GPUs (--gpus 0,…): TensorRT plans run on a GPU only")
        if not 1 <= self.max_batch_size <= 1024 or self.instances < 1:
            raise ValueError("max_batch_size must be in [1, 1024] and instances ≥ 1")


def networks_on_gpu(options: RepositoryOptions) -> bool:
    """Whether the exported networks get KIND_GPU instances. On the embedded target with every stage
    in-process (``stages_via="torch"``) the anonymixer model never calls them, so they stay KIND_CPU,
    stated in their configs: a GPU machine without onnxruntime-gpu can then serve (a KIND_GPU
    network there fails to load, optimizer_backend.onnx_model)."""
    return bool(options.gpus) and (options.target != "embedded" or options.stages_via == "bls")


def network_config(name: str, facts: dict, options: RepositoryOptions) -> mc.ModelConfig:
    """The ``ModelConfig`` of one exported network (``facts``: its entry in onnx_manifest.json)."""
    config = mc.ModelConfig(name=name, max_batch_size=options.max_batch_size)
    on_gpu = networks_on_gpu(options)
    if options.target == "embedded":
        config.backend = "python"
        config.parameters["model_file"].string_value = "model.onnx"
        if on_gpu:
            config.parameters["execution_provider"].string_value = options.ort_provider
            # the Python backend copies inputs to the CPU unless told not to: BLS callers on the GPU
            # hand over device tensors, which onnx_model then runs on where they are
            config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
    elif options.target == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
        if options.gpus:
            accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accel.parameters["precision_mode"] = options.trt_precision
            accel.parameters["max_workspace_size_bytes"] = str(4 << 30)
    else:
        config.platform = "tensorrt_plan"
        config.default_model_filename = "model.plan"
    for spec, field in ((facts["input"], config.input), (facts["output"], config.output)):
        field.add(name=spec["name"], data_type=mc.TYPE_FP32, dims=spec["dims"])
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add(count=options.instances)
    if on_gpu:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(options.gpus)
    else:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    warm = config.model_warmup.add(name=f"{name}_warmup", batch_size=1)
    warm.inputs[facts["input"]["name"]].data_type = mc.TYPE_FP32
    warm.inputs[facts["input"]["name"]].dims.extend(facts["input"]["dims"])
    warm.inputs[facts["input"]["name"]].random_data = True
    return config


def algorithm_overrides(algorithm: str) -> Overrides:
    """The repository layer of the anonymixer model's settings: its ``algorithm`` parameter
    (``--algorithm``), a JSON object of ProtectConfig values."""
    values = json.loads(algorithm)
    if not isinstance(values, dict):
        raise ValueError(f"algorithm must be a JSON object, got {algorithm!r}")
    return Overrides(REPOSITORY_ALGORITHM, values)


def anonymixer_config(embedding_size: int, options: RepositoryOptions) -> mc.ModelConfig:
    """The public ``anonymixer`` model: BYTES in, PNG + template out, queue bounded in size and time."""
    config = mc.ModelConfig(name="anonymixer", backend="python", max_batch_size=options.protect_max_batch)
    for name, dtype, optional in (
        ("IMAGE", mc.TYPE_STRING, False),
        ("KEY", mc.TYPE_STRING, False),
        ("GROUP", mc.TYPE_INT64, True),
        ("STEPS", mc.TYPE_INT32, True),
    ):
        config.input.add(name=name, data_type=dtype, dims=[1], optional=optional)
    config.output.add(name="PROTECTED", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="TEMPLATE", data_type=mc.TYPE_FP32, dims=[embedding_size])
    config.output.add(name="ORIGINAL_SIMILARITY", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="DERIVATION", data_type=mc.TYPE_STRING, dims=[1])  # stored with templates
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = options.protect_queue_delay_us
    batching.default_queue_policy.max_queue_size = options.max_queue_size
    batching.default_queue_policy.default_timeout_microseconds = int(options.queue_timeout_s * 1e6)
    batching.default_queue_policy.allow_timeout_override = True
    batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
    _instance_on_first_gpu(config, options)
    params = {
        "bundle": BUNDLE_FOLDER,
        "algorithm": options.algorithm,
        "network_max_batch": str(options.max_batch_size),
        "max_image_pixels": str(options.max_image_pixels),
        **{f"{stage}_via": options.stages_via for stage in ("encode", "render", "embed")},
    }
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def _instance_on_first_gpu(config: mc.ModelConfig, options: RepositoryOptions) -> None:
    group = config.instance_group.add(count=1)
    if options.gpus:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(options.gpus[:1])
    else:
        group.kind = mc.ModelInstanceGroup.KIND_CPU


def face_detector_config(options: RepositoryOptions) -> mc.ModelConfig:
    """MTCNN as a Python model on the CPU (a cascade with crops and NMS between its networks)."""
    config = mc.ModelConfig(name="face_detector", backend="python", max_batch_size=options.scene_max_batch)
    config.input.add(name="image", data_type=mc.TYPE_FP32, dims=[3, -1, -1])
    config.output.add(name="faces", data_type=mc.TYPE_FP32, dims=[-1, 15])
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.instance_group.add(count=options.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    json.loads(options.detector)
    config.parameters["weights"].string_value = DETECTOR_WEIGHTS
    config.parameters["detector"].string_value = options.detector
    return config


def scene_config(options: RepositoryOptions, bundle_config: dict) -> mc.ModelConfig:
    """The public ``anonymixer_scene`` model: photos in, photos with every face protected out;
    faces aligned with the bundle's framing unless ``options.scene`` says otherwise, STEPS up to the
    anonymixer model's ``max_steps`` (its settings: the bundle's under the repository's)."""
    config = mc.ModelConfig(name="anonymixer_scene", backend="python", max_batch_size=options.scene_max_batch)
    for name, dtype, optional in (
        ("IMAGE", mc.TYPE_STRING, False),
        ("KEY", mc.TYPE_STRING, False),
        ("STEPS", mc.TYPE_INT32, True),
    ):
        config.input.add(name=name, data_type=dtype, dims=[1], optional=optional)
    config.output.add(name="IMAGE", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="FACES", data_type=mc.TYPE_FP32, dims=[-1, 15])
    config.output.add(name="FACE_ACTIONS", data_type=mc.TYPE_STRING, dims=[-1])
    config.dynamic_batching.max_queue_delay_microseconds = options.protect_queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = options.max_queue_size
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    settings = resolve_settings(bundle_config, algorithm_overrides(options.algorithm))
    params = {
        "scene": json.dumps({"framing": config_framing(bundle_config), **json.loads(options.scene)}),
        "max_image_pixels": str(options.max_photo_pixels),
        "protect_max_batch": str(options.protect_max_batch),
        "max_steps": str(settings.config.max_steps),
    }
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def write_config(folder: Path, config: mc.ModelConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.pbtxt"
    path.write_text(text_format.MessageToString(config))
    return path


def read_config(path: str | Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` with Triton's schema (raises on any unknown field or typo)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def require_checked_plans(engines_dir: str | Path | None, models: dict[str, dict], max_batch_size: int) -> None:
    """Every model needs its plan, compared with onnxruntime by ``python -m exporter tensorrt --check``
    (the verdict in ``<name>.plan.json``) and with a profile up to ``max_batch_size``."""
    from exporter.tensorrt_build import PlanCheckError, recorded_problems

    if engines_dir is None:
        raise ValueError("the tensorrt target needs --engines DIR (from `python -m exporter tensorrt`)")
    failures = []
    for name in models:
        plan = Path(engines_dir) / f"{name}.plan"
        if not plan.is_file():
            raise FileNotFoundError(f"{plan}: no TensorRT plan for {name}")
        failures += [f"  {plan}: {problem}" for problem in recorded_problems(engines_dir, name, max_batch_size)]
    if failures:
        raise PlanCheckError("refusing to write a repository with these TensorRT plans:\n" + "\n".join(failures))


def build_repository(
    onnx_dir: str | Path,
    out_dir: str | Path,
    options: RepositoryOptions,
    engines_dir: str | Path | None = None,
    bundle_dir: str | Path | None = None,
) -> dict[str, Path]:
    """One model folder per exported network, plus, when ``bundle_dir`` is given, the ``anonymixer``
    model (its bundle copied into its version folder) and scene mode (``face_detector`` with the
    MTCNN weights of the installed facenet-pytorch wheel, ``anonymixer_scene``); returns
    {model name: folder}."""
    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    manifest = json.loads((onnx_dir / "onnx_manifest.json").read_text())
    if options.target == "tensorrt":  # before anything is written: no repository with unchecked plans
        require_checked_plans(engines_dir, manifest["models"], options.max_batch_size)
    models = {}
    for name, facts in manifest["models"].items():
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        version = folder / "1"
        version.mkdir(parents=True)
        write_config(folder, network_config(name, facts, options))
        if options.target == "tensorrt":
            shutil.copy2(Path(engines_dir) / f"{name}.plan", version / "model.plan")
        else:
            shutil.copy2(onnx_dir / facts["file"], version / "model.onnx")
        if options.target == "embedded":
            (version / "model.py").write_text(SHIM.format(module="optimizer_backend.onnx_model"))
        models[name] = folder
    if bundle_dir is not None:
        bundle_config = bundle.read_config(bundle_dir)
        folder = out / "anonymixer"
        if folder.exists():
            shutil.rmtree(folder)
        embedding_size = manifest["bundle"]["face_embedder"]["embedding_size"]
        write_config(folder, anonymixer_config(embedding_size, options))
        shutil.copytree(bundle_dir, folder / "1" / BUNDLE_FOLDER)
        (folder / "1" / "model.py").write_text(SHIM.format(module="optimizer_backend.anonymixer_model"))
        models["anonymixer"] = folder
        for name, config, module in (
            ("face_detector", face_detector_config(options), "optimizer_backend.detector_model"),
            (
                "anonymixer_scene",
                scene_config(options, bundle_config),
                "optimizer_backend.scene_model",
            ),
        ):
            folder = out / name
            if folder.exists():
                shutil.rmtree(folder)
            write_config(folder, config)
            (folder / "1").mkdir()
            (folder / "1" / "model.py").write_text(SHIM.format(module=module))
            models[name] = folder
        (out / "face_detector" / "1" / DETECTOR_WEIGHTS).mkdir()
        for file in WEIGHT_FILES.values():
            shutil.copy2(packaged_weights_dir() / file, out / "face_detector" / "1" / DETECTOR_WEIGHTS / file)
    (out / "repository.json").write_text(
        json.dumps({"target": options.target, "models": sorted(models), "bundle": manifest["bundle"]}, indent=2) + "\n"
    )
    return models

"""Triton Python-backend model that serves one ONNX network through onnxruntime (``embedded`` target).

The Triton 2.51 server in the nvidia-pytriton wheel has only the Python backend, so each ONNX
model of the contract runs inside this thin model. Every ``execute`` call concatenates the
requests Triton's dynamic batcher hands over into one batch, runs it once, and splits the result
back per request. A request whose input has the wrong shape gets its own error; its batch-mates
still run.

Parameters (``config.pbtxt``): ``model_file`` (default ``model.onnx``, in the version folder),
``intra_op_threads`` (default 0: onnxruntime decides), ``execution_provider`` for ``KIND_GPU``
instances: ``cuda`` (default) or ``tensorrt`` (onnxruntime's TensorRT provider, FP16, with an
engine cache beside the model). A ``KIND_GPU`` instance whose onnxruntime lacks the provider (or
cannot start it) fails to load, saying so: it never serves on the CPU instead.

CPU instances run on numpy arrays (``as_numpy``). GPU instances keep tensors on the GPU: inputs
come as DLPack (device memory when the caller's were, ``FORCE_CPU_ONLY_INPUT_TENSORS: "no"``),
are batched with torch on the instance's device and bound to onnxruntime with ``io_binding``,
and the outputs go back to Triton as DLPack device tensors — no round trip through host memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from optimizer_backend.heartbeat import beating

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - lets the module be imported for tests and docs
    pb_utils = None

GPU_PROVIDERS = {"cuda": ("CUDAExecutionProvider",), "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider")}


class ProviderError(RuntimeError):
    pass


def model_parameters(model_config: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, str]:
    """A model's ``config.pbtxt`` string parameters; the ``required`` ones, which the repository
    always writes (their defaults are defined there: exporter.repository), must be present."""
    params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
    missing = [name for name in required if name not in params]
    if missing:
        raise ValueError(
            f"{model_config.get('name', 'this model')}: config.pbtxt lacks parameter(s) {missing}; "
            "build the repository with `python -m exporter repository`"
        )
    return params


def split_rows(array: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(counts)[:-1]) if counts else []


def gpu_providers(requested: str, device: int, available: list[str], cache: Path) -> list[Any]:
    """onnxruntime's providers for a KIND_GPU instance on ``device``, best first; ProviderError when
    this onnxruntime lacks one it needs."""
    if requested not in GPU_PROVIDERS:
        raise ProviderError(f"execution_provider must be one of {sorted(GPU_PROVIDERS)}, got {requested!r}")
    missing = [p for p in GPU_PROVIDERS[requested] if p not in available]
    if missing:
        raise ProviderError(
            f"a KIND_GPU instance (GPU {device}) needs onnxruntime's {' and '.join(missing)}, but this "
            f"onnxruntime offers only {available}: install onnxruntime-gpu in the server's Python environment, "
            "or build the repository without --gpus (KIND_CPU instances)"
        )
    providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    if requested == "tensorrt":
        trt = {
            "device_id": device,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
        }
        providers.insert(0, ("TensorrtExecutionProvider", trt))
    return providers


def require_started(requested: str, started: list[str]) -> None:
    """onnxruntime drops a GPU provider it cannot start (missing CUDA or cuDNN libraries) with only a
    warning and runs the graph on the CPU: refuse that instead."""
    missing = [p for p in GPU_PROVIDERS[requested] if p not in started]
    if missing:
        raise ProviderError(
            f"onnxruntime could not start {' and '.join(missing)} (its session runs on {started}); its warnings "
            "above say why (usually CUDA or cuDNN libraries that do not match this onnxruntime-gpu)"
        )


def run_bound(session: Any, input_name: str, output_name: str, batch: Any, output_dims: tuple[int, ...]) -> Any:
    """One onnxruntime run on torch tensors where they are (``batch.device``; CUDA or CPU): io_binding
    points onnxruntime at torch's buffers, so nothing is copied through host memory."""
    import torch

    batch = batch.contiguous()
    out = torch.empty((len(batch), *output_dims), dtype=torch.float32, device=batch.device)
    kind, index = batch.device.type, batch.device.index or 0
    binding = session.io_binding()
    binding.bind_input(input_name, kind, index, np.float32, list(batch.shape), batch.data_ptr())
    binding.bind_output(output_name, kind, index, np.float32, list(out.shape), out.data_ptr())
    if batch.is_cuda:  # torch wrote the batch on its own stream; onnxruntime reads it on another
        torch.cuda.current_stream(batch.device).synchronize()
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()  # done before Triton (or another process) reads ``out``
    return out


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        self.model_config = json.loads(args["model_config"])
        params = model_parameters(self.model_config)
        folder = Path(args["model_repository"]) / args["model_version"]
        self.device = None  # None: numpy on the CPU; a torch.device: tensors stay on it
        providers: list[Any] = ["CPUExecutionProvider"]
        requested = params.get("execution_provider", "cuda")
        name = args.get("model_name", "onnx model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        model_file = str(folder / params.get("model_file", "model.onnx"))
        try:  # a ProviderError fails the load, which Triton reports with this message
            if args.get("model_instance_kind") == "GPU":
                import torch

                index = int(args.get("model_instance_device_id", 0))
                providers = gpu_providers(requested, index, ort.get_available_providers(), folder / "trt_cache")
                self.device = torch.device("cuda", index)
            self.session = ort.InferenceSession(model_file, options, providers=providers)
            if self.device is not None:
                require_started(requested, self.session.get_providers())
        except ProviderError as exc:
            raise ProviderError(f"{name}: {exc}") from None
        pb_utils.Logger.log_info(f"{name}: onnxruntime providers {self.session.get_providers()}")
        (self.input,) = self.model_config["input"]
        (self.output,) = self.model_config["output"]
        self.item_shape = tuple(int(d) for d in self.input["dims"])
        self.output_dims = tuple(int(d) for d in self.output["dims"])

    def _take(self, tensor: Any) -> Any:
        """A request's input: a numpy array on CPU instances, a torch tensor on the instance's device
        on GPU ones (zero-copy when Triton hands over device memory)."""
        if self.device is None:
            return tensor.as_numpy()
        from torch.utils.dlpack import from_dlpack

        return from_dlpack(tensor.to_dlpack()).to(self.device)

    def _run(self, arrays: list[Any]) -> Any:
        if self.device is None:
            batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            return self.session.run([self.output["name"]], {self.input["name"]: batch})[0]
        import torch

        batch = torch.cat(arrays) if len(arrays) > 1 else arrays[0]
        return run_bound(self.session, self.input["name"], self.output["name"], batch, self.output_dims)

    def _tensor(self, part: Any) -> Any:
        if self.device is None:
            return pb_utils.Tensor(self.output["name"], np.ascontiguousarray(part, dtype=np.float32))
        from torch.utils.dlpack import to_dlpack

        return pb_utils.Tensor.from_dlpack(self.output["name"], to_dlpack(part.contiguous()))

    @beating
    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        arrays, owners = [], []
        for i, request in enumerate(requests):
            array = self._take(pb_utils.get_input_tensor_by_name(request, self.input["name"]))
            dtype = str(array.dtype).removeprefix("torch.")  # numpy's and torch's names alike
            if dtype != "float32" or tuple(array.shape[1:]) != self.item_shape:
                message = (
                    f"input '{self.input['name']}': expected FP32 [batch, {', '.join(map(str, self.item_shape))}], "
                    f"got {dtype} {list(array.shape)}"
                )
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                continue
            arrays.append(array)
            owners.append(i)
        if arrays:
            result, counts = self._run(arrays), [len(a) for a in arrays]
            parts = split_rows(result, counts) if self.device is None else result.split(counts)
            for i, part in zip(owners, parts, strict=True):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[self._tensor(part)])
        return responses

    def finalize(self) -> None:
        self.session = None

"""Triton Python-backend model that serves one ONNX network through onnxruntime (``embedded`` target).

The Triton 2.51 server in the nvidia-pytriton wheel has only the Python backend, so each ONNX
model of the contract runs inside this thin model. Every ``execute`` call concatenates the
requests Triton's dynamic batcher hands over into one batch, runs it once, and splits the result
back per request. A request whose input has the wrong shape gets its own error; its batch-mates
still run.

Parameters (``config.pbtxt``): ``model_file`` (default ``model.onnx``, in the version folder),
``intra_op_threads`` (default 0: onnxruntime decides), ``execution_provider`` for ``KIND_GPU``
instances: ``cuda`` (default) or ``tensorrt`` (onnxruntime's TensorRT provider, FP16, with an
engine cache beside the model). CPU instances, or a GPU instance whose onnxruntime lacks the
provider, run on the CPU provider (the log says which).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - lets the module be imported for tests and docs
    pb_utils = None


def model_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def split_rows(array: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(counts)[:-1]) if counts else []


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        self.model_config = json.loads(args["model_config"])
        params = model_parameters(self.model_config)
        folder = Path(args["model_repository"]) / args["model_version"]
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            device = int(args.get("model_instance_device_id", 0))
            available = ort.get_available_providers()
            if params.get("execution_provider") == "tensorrt" and "TensorrtExecutionProvider" in available:
                cache = str(folder / "trt_cache")
                trt = {
                    "device_id": device,
                    "trt_fp16_enable": True,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": True,
                }
                providers.insert(0, ("TensorrtExecutionProvider", trt))
            if "CUDAExecutionProvider" in available:
                providers.insert(len(providers) - 1, ("CUDAExecutionProvider", {"device_id": device}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        model_file = str(folder / params.get("model_file", "model.onnx"))
        self.session = ort.InferenceSession(model_file, options, providers=providers)
        pb_utils.Logger.log_info(f"{args['model_name']}: onnxruntime providers {self.session.get_providers()}")
        (self.input,) = self.model_config["input"]
        (self.output,) = self.model_config["output"]
        self.item_shape = tuple(int(d) for d in self.input["dims"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        arrays, owners = [], []
        for i, request in enumerate(requests):
            array = pb_utils.get_input_tensor_by_name(request, self.input["name"]).as_numpy()
            if array.dtype != np.float32 or tuple(array.shape[1:]) != self.item_shape:
                message = (
                    f"input '{self.input['name']}': expected FP32 [batch, {', '.join(map(str, self.item_shape))}], "
                    f"got {array.dtype} {list(array.shape)}"
                )
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                continue
            arrays.append(array)
            owners.append(i)
        if arrays:
            batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            (result,) = self.session.run([self.output["name"]], {self.input["name"]: batch})
            for i, part in zip(owners, split_rows(result, [len(a) for a in arrays]), strict=True):
                tensor = pb_utils.Tensor(self.output["name"], np.ascontiguousarray(part, dtype=np.float32))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self) -> None:
        self.session = None

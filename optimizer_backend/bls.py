"""Business-logic-scripting (BLS) stages: the gradient-free calls of the algorithm sent to the
exported network models of the same Triton server, tensors passed through DLPack (zero-copy when
they already live where the callee wants them). On the GPU a stage's input is handed over only
once torch's stream has finished writing it; the callee (``onnx_model``) returns its outputs
synchronised, so they are read at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from anonymixer.bundle import Bundle
from anonymixer.stages import Stages, torch_stages
from optimizer_backend.heartbeat import heartbeat

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

STAGE_MODELS = {  # stage → (model, input, output)
    "encode": ("e4e_encoder", "image", "w_plus"),
    "render": ("stylegan2_synthesis", "w_plus", "image"),
    "embed": ("face_embedder", "face", "embedding"),
}
VIA = ("bls", "torch")


class BLSError(RuntimeError):
    pass


def bls_error_in(exc: BaseException) -> BLSError | None:
    """The BLSError that ``exc`` is or was raised from (its cause or context chain), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BLSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def bls_call(model: str, inputs: list[Any], outputs: list[str], **kwargs: Any) -> Any:
    """One BLS request to ``model`` of this server; its error becomes a BLSError naming the model."""
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs, **kwargs)
    with heartbeat().waiting():  # the callee's queue and work are its own: judged by its own heartbeat
        response = request.exec()
    if response.has_error():
        raise BLSError(f"{model}: {response.error().message()}")
    return response


def bls_stage(model: str, input_name: str, output_name: str, max_batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        outputs = []
        memory = None
        x = x.float().contiguous()
        if x.is_cuda:
            memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, x.device.index or 0)
            # A DLPack capsule (to_dlpack) hands over a pointer, not torch's stream: Triton, and the
            # callee's process through CUDA IPC, would read the memory without waiting for kernels
            # still writing it on torch's stream (only a tensor passed with __dlpack__ gets a stream
            # to wait on, and only in newer Python backends). So wait before any chunk leaves.
            torch.cuda.current_stream(x.device).synchronize()
        for chunk in x.split(max_batch):  # rows of a contiguous tensor: each chunk is contiguous
            tensor = pb_utils.Tensor.from_dlpack(input_name, to_dlpack(chunk))
            kwargs = {"preferred_memory": memory} if memory is not None else {}
            response = bls_call(model, [tensor], [output_name], **kwargs)
            out = pb_utils.get_output_tensor_by_name(response, output_name)
            outputs.append(from_dlpack(out.to_dlpack()).to(x.device))
        return torch.cat(outputs)

    return call


def build_stages(model: Bundle, via: dict[str, str], max_batch: int) -> Stages:
    """Stages for the Protector: each either a BLS call to its exported model or the bundle's module."""
    local = torch_stages(model)
    chosen = {}
    for stage, (name, inp, out) in STAGE_MODELS.items():
        how = via[stage]
        if how not in VIA:
            raise ValueError(f"{stage}_via must be one of {VIA}, got {how!r}")
        chosen[stage] = bls_stage(name, inp, out, max_batch) if how == "bls" else getattr(local, stage)
    return Stages(**chosen)

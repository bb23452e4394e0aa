"""What every Python-backend model of this repository does with requests and responses: read the
named inputs, answer a rejected request (logged and counted by reason), pad ragged outputs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from optimizer_backend.metrics import ModelMetrics

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


# What Triton says of a model that is down (its stub dead, unloaded, loading): worth a retry.
MODEL_DOWN_MESSAGES = ("is not healthy", "unavailable", "not ready", "not found", "no available versions")


def says_model_down(message: str) -> bool:
    message = message.lower()
    return any(sign in message for sign in MODEL_DOWN_MESSAGES)


# The request id of the supervisor's liveness probes (optimizer_backend/supervisor.py).
PROBE_REQUEST_ID = "anonymixer-supervisor-probe"


def probe_answer(request: Any) -> Any | None:
    """The answer to a supervisor probe — it proves this stub runs ``execute`` — or None for any
    other request. Probes are not logged or counted as errors: they come every few seconds."""
    if request.request_id() != PROBE_REQUEST_ID:
        return None
    return pb_utils.InferenceResponse(error=pb_utils.TritonError("alive", pb_utils.TritonError.INVALID_ARG))


def read_inputs(request: Any, names: Iterable[str]) -> dict[str, np.ndarray | None]:
    """The request's inputs by name; None for an optional input it does not carry."""
    out = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        out[name] = None if tensor is None else tensor.as_numpy()
    return out


def error_response(model: str, metrics: ModelMetrics, message: str, reason: str, status: int) -> Any:
    """An error answer for one request; the message names the input, item and problem, never a key."""
    metrics.error(reason)
    pb_utils.Logger.log_warn(f"{model}: rejected a request: {message}")
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, status))


def pad_stack(rows: Sequence[Sequence[Any]], item_shape: tuple[int, ...], dtype: Any, fill: Any = 0) -> np.ndarray:
    """Per-item lists of different lengths → one [B, longest, *item_shape] array, ``fill`` as padding."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0), *item_shape), fill, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row):
            out[i, : len(row)] = row
    return out

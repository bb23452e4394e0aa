"""What every Python-backend model of this repository does with requests and responses: read the
named inputs, answer a rejected request (logged and counted by reason), pad ragged outputs."""

from __future__ import annotations

import secrets
import traceback
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


# How a model that loaded but cannot serve answers a probe (UNSUPPORTED): not ready, and a reload
# would load the same bundle and settings again, so the supervisor does not reload it.
CANNOT_SERVE = "cannot serve: "


def probe_answer(request: Any, cannot_serve: str | None = None) -> Any | None:
    """The answer to a supervisor probe — it proves this stub runs ``execute``, or says why it
    cannot serve — or None for any other request. Probes are not logged or counted as errors:
    they come every few seconds."""
    if request.request_id() != PROBE_REQUEST_ID:
        return None
    if cannot_serve is not None:
        error = pb_utils.TritonError(CANNOT_SERVE + cannot_serve, pb_utils.TritonError.UNSUPPORTED)
    else:
        error = pb_utils.TritonError("alive", pb_utils.TritonError.INVALID_ARG)
    return pb_utils.InferenceResponse(error=error)


def internal_error(model: str, doing: str, exc: BaseException) -> str:
    """Log ``exc`` with its traceback under a new error id; the message for the requests it
    failed names the id (a user quotes it, the operator finds the traceback), never the details."""
    error_id = secrets.token_hex(6)
    pb_utils.Logger.log_error(f"{model}: error {error_id} while {doing}:\n{traceback.format_exc()}")
    return f"{model}: internal error while {doing}: {type(exc).__name__} (error id {error_id} in the server's log)"


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

"""A Python-backend model that hangs on request, for the supervisor's fault tests.

Input ``MODE`` (INT32 [1]): 0 answers at once (the supervisor's zero probe is one), 1 hangs while
its heartbeat says busy (wedged in the middle of work: the beats stop), 2 hangs while its heartbeat
says idle (wedged outside any work: only a probe that never returns shows it).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from optimizer_backend.heartbeat import heartbeat


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        modes = [int(pb_utils.get_input_tensor_by_name(r, "MODE").as_numpy().ravel()[0]) for r in requests]
        if max(modes) > 0:
            heartbeat().beat("busy" if max(modes) == 1 else "idle")
            threading.Event().wait()  # never set: the stub is wedged until the supervisor kills it
        out = pb_utils.Tensor("ECHO", np.array([[0]], dtype=np.int32))
        return [pb_utils.InferenceResponse(output_tensors=[out]) for _ in requests]

"""The ``face_detector`` Triton Python-backend model: MTCNN (anonymixer.face_detection) on the CPU.

Input ``image`` FP32 [3, H, W] (RGB, 0–255; any size); output ``faces`` FP32 [N, 15] per image
(box, score, 5 landmarks, left to right). MTCNN is a cascade with data-dependent crops and
non-maximum suppression between its three small networks, so it is served as one Python model
rather than as ONNX graphs. Images of one request share a shape; when their face counts differ
the shorter lists are padded with zero rows (score 0 marks padding).

Parameters (written by ``exporter.repository``): ``weights`` (folder in the version folder holding
pnet.pt, rnet.pt and onet.pt), ``detector`` (JSON object of DetectorConfig overrides).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anonymixer.config import config_from_dict
from anonymixer.face_detection import ROW, DetectorConfig, FaceDetector
from optimizer_backend.heartbeat import beating
from optimizer_backend.onnx_model import model_parameters
from optimizer_backend.responses import pad_stack

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(json.loads(args["model_config"]), ("weights", "detector"))
        folder = Path(args["model_repository"]) / args["model_version"] / params["weights"]
        config = config_from_dict(DetectorConfig, json.loads(params["detector"]))
        self.detector = FaceDetector(folder, config)

    @beating
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            if images.ndim != 4 or images.shape[1] != 3:
                error = pb_utils.TritonError(f"image: shape must be [batch, 3, H, W], got {list(images.shape)}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            photos = np.clip(np.round(images), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
            faces = pad_stack([self.detector.detect(photo) for photo in photos], (ROW,), np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("faces", faces)]))
        return responses

"""The ``anonymixer_scene`` Triton Python-backend model: whole photos in, every face protected.

Inputs per item: ``IMAGE`` (an encoded photo, EXIF orientation honoured), ``KEY`` (1–1024 bytes),
optional ``STEPS`` (INT32, passed on). Outputs: ``IMAGE`` (the photo, PNG or JPEG), ``FACES`` FP32
[N, 15] (box, score, 5 landmarks per detected face, left to right) and ``FACE_ACTIONS`` BYTES [N]
(``protected`` | ``blurred`` | ``kept``: what happened to each face). When the items of one
request hold different numbers of faces, the shorter lists are padded with zero rows and empty
actions.

Per ``execute``: decode every photo → detect (BLS to ``face_detector``) → plan and align the
faces (anonymixer.scene) → protect all faces of all requests together (BLS to ``anonymixer``,
in chunks of its max batch, one group per face) → paste back, blur small faces → encode. A bad
request gets its own error; a failed protection fails the requests it served, never returning
an unprotected face.

Parameters (``config.pbtxt``, strings): ``scene`` (JSON object of SceneConfig overrides),
``max_image_pixels`` (default 40 M), ``protect_max_batch`` (the ``anonymixer`` model's max
batch, default 8), ``max_steps`` (default 500), ``output_format`` (``png`` default, or ``jpeg``).
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
from PIL import Image

from anonymixer.face_detection import ROW, shrink_for_detection
from anonymixer.scene import SceneConfig, SceneFace, compose, plan_faces, to_protect
from optimizer_backend.bls import BLSError, bls_call
from optimizer_backend.decode import ItemError, PhotoItem, decode_image, encode_png, parse_scene_request
from optimizer_backend.metrics import ModelMetrics
from optimizer_backend.onnx_model import model_parameters
from optimizer_backend.responses import error_response, pad_stack, read_inputs

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

DEFAULT_MAX_PHOTO_PIXELS = 40_000_000
OUTPUT_FORMATS = ("png", "jpeg")
INPUTS = ("IMAGE", "KEY", "STEPS")


def encode_photo(image: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return encode_png(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(json.loads(args["model_config"]))
        self.config = SceneConfig.from_dict(json.loads(params.get("scene", "{}")))
        self.max_pixels = int(params.get("max_image_pixels", str(DEFAULT_MAX_PHOTO_PIXELS)))
        self.protect_batch = int(params.get("protect_max_batch", "8"))
        self.max_steps = int(params.get("max_steps", "500"))
        self.output_format = params.get("output_format", "png")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        self.name = args["model_name"]
        self.metrics = ModelMetrics(self.name)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        plans: dict[int, list[tuple[PhotoItem, list[SceneFace]]]] = {}
        for r, request in enumerate(requests):
            start = time.perf_counter()
            try:
                items = parse_scene_request(
                    read_inputs(request, INPUTS), max_steps=self.max_steps, max_pixels=self.max_pixels
                )
                decoded = time.perf_counter()
                self.metrics.stage("decode", decoded - start)
                plans[r] = [
                    (item, plan_faces(item.photo, self._detect(item.photo), item.key, self.config)) for item in items
                ]
                self.metrics.stage("detect", time.perf_counter() - decoded)
            except ItemError as exc:
                responses[r] = self._error(str(exc), exc.code, pb_utils.TritonError.INVALID_ARG)
            except BLSError as exc:
                responses[r] = self._error(f"face detection failed: {exc}", "internal", pb_utils.TritonError.INTERNAL)

        # Every face of every request, protected together (one group each), by STEPS value.
        by_steps: dict[int | None, list[tuple[int, SceneFace]]] = {}
        for r, plan in plans.items():
            for item, faces in plan:
                by_steps.setdefault(item.steps, []).extend((r, face) for face in to_protect(faces))
        protected: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}  # request → why its faces could not be protected
        start = time.perf_counter()
        for steps, group in by_steps.items():
            for first in range(0, len(group), self.protect_batch):
                chunk = group[first : first + self.protect_batch]
                try:
                    images = self._protect([face for _, face in chunk], steps)
                except BLSError as exc:
                    pb_utils.Logger.log_error(f"{self.name}: protection failed: {exc}")
                    failed.update((r, str(exc)) for r, _ in chunk)
                    continue
                protected.update((id(face), image) for (_, face), image in zip(chunk, images, strict=True))
        self.metrics.stage("protect", time.perf_counter() - start)

        for r, plan in plans.items():
            if r in failed:
                responses[r] = self._error(
                    f"face protection failed: {failed[r]}", "internal", pb_utils.TritonError.INTERNAL
                )
                continue
            start = time.perf_counter()
            photos = [
                compose(item.photo, faces, [protected[id(f)] for f in to_protect(faces)], self.config)
                for item, faces in plan
            ]
            responses[r] = pb_utils.InferenceResponse(output_tensors=self._outputs(photos, [f for _, f in plan]))
            self.metrics.stage("compose", time.perf_counter() - start)
            self.metrics.items.increment(sum(len(to_protect(faces)) for _, faces in plan))
        return responses

    def _detect(self, photo: np.ndarray) -> np.ndarray:
        # Shrink here, not in the detector: a 40 M pixel photo is 480 MB as FP32 in shared memory.
        small, scale = shrink_for_detection(photo, self.config.detect_max_side)
        image = pb_utils.Tensor("image", small.transpose(2, 0, 1)[None].astype(np.float32))
        faces = pb_utils.get_output_tensor_by_name(bls_call("face_detector", [image], ["faces"]), "faces").as_numpy()[0]
        faces = faces[faces[:, 4] > 0].copy()  # drop the padding rows
        faces[:, :4] /= scale
        faces[:, 5:] /= scale
        return faces

    def _protect(self, faces: list[SceneFace], steps: int | None) -> list[np.ndarray]:
        n = len(faces)
        inputs = [
            pb_utils.Tensor("IMAGE", np.array([[encode_png(f.aligned)] for f in faces], dtype=np.object_)),
            pb_utils.Tensor("KEY", np.array([[f.key.reveal()] for f in faces], dtype=np.object_)),
            pb_utils.Tensor("GROUP", np.arange(n, dtype=np.int64)[:, None]),
        ]
        if steps is not None:
            inputs.append(pb_utils.Tensor("STEPS", np.full((n, 1), steps, dtype=np.int32)))
        pngs = pb_utils.get_output_tensor_by_name(bls_call("anonymixer", inputs, ["PROTECTED"]), "PROTECTED").as_numpy()
        return [decode_image(bytes(row[0]), i) for i, row in enumerate(pngs)]

    def _outputs(self, photos: list[np.ndarray], plans: list[list[SceneFace]]) -> list[Any]:
        detections = pad_stack([[f.detection for f in faces] for faces in plans], (ROW,), np.float32)
        actions = pad_stack([[f.action.encode() for f in faces] for faces in plans], (), np.object_, b"")
        images = np.array([[encode_photo(p, self.output_format)] for p in photos], dtype=np.object_)
        return [
            pb_utils.Tensor("IMAGE", images),
            pb_utils.Tensor("FACES", detections),
            pb_utils.Tensor("FACE_ACTIONS", actions),
        ]

    def _error(self, message: str, reason: str, status: int) -> Any:
        return error_response(self.name, self.metrics, message, reason, status)

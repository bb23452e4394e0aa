"""The ``anonymixer_scene`` Triton Python-backend model: whole photos in, every face protected.

Inputs per item: ``IMAGE`` (an encoded photo, EXIF orientation honoured), ``KEY`` (1–1024 bytes),
optional ``STEPS`` (INT32, passed on). Outputs: ``IMAGE`` (the photo, PNG or JPEG), ``FACES`` FP32
[N, 15] (box, score, 5 landmarks per detected face, left to right) and ``FACE_ACTIONS`` BYTES [N]
(``protected`` | ``blurred`` | ``kept``: what happened to each face). When the items of one
request hold different numbers of faces, the shorter lists are padded with zero rows and empty
actions.

Per ``execute``: decode every photo → detect (BLS to ``face_detector``) → plan and align the
faces (anonymixer.scene) → protect all faces of all requests together (BLS to ``anonymixer``,
in chunks of its max batch, one group per face) → paste back, blur small faces → encode.

Failures reach only the requests they touch; a failed protection fails the requests it served,
never returning an unprotected face. A bad input is INVALID_ARG (naming the item). A failed BLS
call answers ``face detection failed: …`` or ``face protection failed: …``: UNAVAILABLE when the
called model is down (its message says so: not ready, not found, unavailable, not healthy; clients
retry UNAVAILABLE), else INTERNAL. Any other exception answers the requests it stopped INTERNAL
``<model>: internal error while <stage>: <type>`` and is logged with its traceback (which holds
code and messages, never a key).

Parameters (``config.pbtxt``, strings, written by ``exporter.repository``, which holds their
defaults): ``scene`` (JSON object of SceneConfig overrides), ``max_image_pixels``,
``protect_max_batch`` (the ``anonymixer`` model's max batch), ``max_steps`` (the ``anonymixer``
model's); optional ``output_format`` (``png``, the default, or ``jpeg``).
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
from optimizer_backend.heartbeat import beating
from optimizer_backend.metrics import ModelMetrics
from optimizer_backend.onnx_model import model_parameters
from optimizer_backend.responses import (
    error_response,
    internal_error,
    pad_stack,
    probe_answer,
    read_inputs,
    says_model_down,
)

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

OUTPUT_FORMATS = ("png", "jpeg")
INPUTS = ("IMAGE", "KEY", "STEPS")
PARAMETERS = ("scene", "max_image_pixels", "protect_max_batch", "max_steps")

Plan = list[tuple[PhotoItem, list[SceneFace]]]
Failure = tuple[str, str, int]  # message, metrics reason, status


def encode_photo(image: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return encode_png(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = model_parameters(json.loads(args["model_config"]), PARAMETERS)
        self.config = SceneConfig.from_dict(json.loads(params["scene"]))
        self.max_pixels = int(params["max_image_pixels"])
        self.protect_batch = int(params["protect_max_batch"])
        self.max_steps = int(params["max_steps"])
        self.output_format = params.get("output_format", OUTPUT_FORMATS[0])
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        self.name = args["model_name"]
        self.metrics = ModelMetrics(self.name)

    @beating
    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [probe_answer(request) for request in requests]
        plans: dict[int, Plan] = {}
        for r, request in enumerate(requests):
            if responses[r] is not None:
                continue
            plan = self._plan(request)
            if isinstance(plan, list):
                plans[r] = plan
            else:
                responses[r] = self._respond(plan)

        # Every face of every request, protected together (one group each), by STEPS value.
        by_steps: dict[int | None, list[tuple[int, SceneFace]]] = {}
        for r, plan in plans.items():
            for item, faces in plan:
                by_steps.setdefault(item.steps, []).extend((r, face) for face in to_protect(faces))
        protected: dict[int, np.ndarray] = {}
        start = time.perf_counter()
        for steps, group in by_steps.items():
            for first in range(0, len(group), self.protect_batch):
                chunk = group[first : first + self.protect_batch]
                stage = "protecting the faces"
                try:
                    pngs = self._protect([face for _, face in chunk], steps)
                    stage = "decoding the protected faces"
                    images = [decode_image(png, i, self.max_pixels) for i, png in enumerate(pngs)]
                except Exception as exc:  # the chunk's requests fail; the other chunks go on
                    failure = self._failure("face protection" if isinstance(exc, BLSError) else stage, exc)
                    for r in dict.fromkeys(r for r, _ in chunk):
                        responses[r] = responses[r] or self._respond(failure)
                    continue
                protected.update((id(face), image) for (_, face), image in zip(chunk, images, strict=True))
        self.metrics.stage("protect", time.perf_counter() - start)

        for r, plan in plans.items():
            if responses[r] is None:
                responses[r] = self._compose(plan, protected)
        return responses

    def _plan(self, request: Any) -> Plan | Failure:
        """The request's photos and their planned faces, or why it failed."""
        start = time.perf_counter()
        try:
            items = parse_scene_request(
                read_inputs(request, INPUTS), max_steps=self.max_steps, max_pixels=self.max_pixels
            )
        except ItemError as exc:
            return str(exc), exc.code, pb_utils.TritonError.INVALID_ARG
        except Exception as exc:
            return self._failure("decoding the request", exc)
        decoded = time.perf_counter()
        self.metrics.stage("decode", decoded - start)
        plan = []
        for item in items:
            stage = "detecting faces"
            try:
                detections = self._detect(item.photo)
                stage = "planning the faces"
                plan.append((item, plan_faces(item.photo, detections, item.key, self.config)))
            except Exception as exc:
                return self._failure("face detection" if isinstance(exc, BLSError) else stage, exc)
        self.metrics.stage("detect", time.perf_counter() - decoded)
        return plan

    def _compose(self, plan: Plan, protected: dict[int, np.ndarray]) -> Any:
        """The request's answer: its photos with their faces pasted back, or its error."""
        start = time.perf_counter()
        stage = "compositing the photo"
        try:
            photos = [
                compose(item.photo, faces, [protected[id(f)] for f in to_protect(faces)], self.config)
                for item, faces in plan
            ]
            stage = "encoding the output"
            outputs = self._outputs(photos, [f for _, f in plan])
        except Exception as exc:
            return self._respond(self._failure(stage, exc))
        self.metrics.stage("compose", time.perf_counter() - start)
        self.metrics.items.increment(sum(len(to_protect(faces)) for _, faces in plan))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _failure(self, stage: str, exc: Exception) -> Failure:
        """The answer for the requests ``exc`` stopped: ``stage`` is what they were doing, or for a
        BLSError the call that failed (``face detection``, ``face protection``)."""
        if isinstance(exc, BLSError):
            message = f"{stage} failed: {exc}"
            pb_utils.Logger.log_error(f"{self.name}: {message}")
            if says_model_down(str(exc)):
                return message, "unavailable", pb_utils.TritonError.UNAVAILABLE
            return message, "internal", pb_utils.TritonError.INTERNAL
        return internal_error(self.name, stage, exc), "internal", pb_utils.TritonError.INTERNAL

    def _detect(self, photo: np.ndarray) -> np.ndarray:
        # Shrink here, not in the detector: a 40 M pixel photo is 480 MB as FP32 in shared memory.
        small, scale = shrink_for_detection(photo, self.config.detect_max_side)
        image = pb_utils.Tensor("image", small.transpose(2, 0, 1)[None].astype(np.float32))
        faces = pb_utils.get_output_tensor_by_name(bls_call("face_detector", [image], ["faces"]), "faces").as_numpy()[0]
        faces = faces[faces[:, 4] > 0].copy()  # drop the padding rows
        faces[:, :4] /= scale
        faces[:, 5:] /= scale
        return faces

    def _protect(self, faces: list[SceneFace], steps: int | None) -> list[bytes]:
        """The protected faces as the ``anonymixer`` model returns them (PNG)."""
        n = len(faces)
        inputs = [
            pb_utils.Tensor("IMAGE", np.array([[encode_png(f.aligned)] for f in faces], dtype=np.object_)),
            pb_utils.Tensor("KEY", np.array([[f.key.reveal()] for f in faces], dtype=np.object_)),
            pb_utils.Tensor("GROUP", np.arange(n, dtype=np.int64)[:, None]),
        ]
        if steps is not None:
            inputs.append(pb_utils.Tensor("STEPS", np.full((n, 1), steps, dtype=np.int32)))
        pngs = pb_utils.get_output_tensor_by_name(bls_call("anonymixer", inputs, ["PROTECTED"]), "PROTECTED").as_numpy()
        return [bytes(row[0]) for row in pngs]

    def _outputs(self, photos: list[np.ndarray], plans: list[list[SceneFace]]) -> list[Any]:
        detections = pad_stack([[f.detection for f in faces] for faces in plans], (ROW,), np.float32)
        actions = pad_stack([[f.action.encode() for f in faces] for faces in plans], (), np.object_, b"")
        images = np.array([[encode_photo(p, self.output_format)] for p in photos], dtype=np.object_)
        return [
            pb_utils.Tensor("IMAGE", images),
            pb_utils.Tensor("FACES", detections),
            pb_utils.Tensor("FACE_ACTIONS", actions),
        ]

    def _respond(self, failure: Failure) -> Any:
        return error_response(self.name, self.metrics, *failure)

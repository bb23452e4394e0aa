"""The ``anonymixer`` Triton Python-backend model: the public entry of the service (DESIGN §4).

Inputs per item: ``IMAGE`` (encoded aligned face), ``KEY`` (1–1024 bytes), optional ``GROUP``
(INT64; items of one request with one group are one person, refined jointly, so they must share
their key and their STEPS) and ``STEPS`` (INT32). Outputs: ``PROTECTED`` (PNG), ``TEMPLATE`` (FP32
[D]) and ``ORIGINAL_SIMILARITY`` (FP32 [1]), both of exactly the returned PNG's pixels, and
``DERIVATION`` (BYTES [1], UTF-8): the identity derivation that made the face
(anonymixer.keys.identity_derivation of the settings), which clients store with templates.

Every ``execute`` decodes and validates each request on its own (a bad request gets its own error,
naming the input, item and reason), then refines the items of all good requests in one batch per
distinct STEPS value (a group never spans two). Network calls without gradients go to the exported
models through BLS (or in-process torch: the ``*_via`` parameters); the refinement runs in torch on
this instance's device, and the keys' latents in fp32 torch on the CPU (never the served
``stylegan2_mapping``, whatever its precision: a key means one face on every deployment). A
request cancelled by its client (its deadline passed while it queued, say) is answered CANCELLED
without being refined; the loop stops early once every request of the batch is cancelled. Keys
are never logged.

Failures reach only the requests they touch. A refinement batch out of memory (the device's, or the
``memory_budget_mib`` of ``algorithm``) is split in halves, whole groups, and retried, each split
logged as a warning; the requests of a group that does not fit even alone are answered INTERNAL
``out of memory: …``. A failed BLS call to a network model answers the requests of its batch
UNAVAILABLE ``<model>: a network model is unavailable, retry: …`` (clients retry UNAVAILABLE);
any other error INTERNAL.

A bundle without an encoder (``mobile1024``) inverts each distinct face by optimisation in this
instance's torch (the ``invert`` stage of the metrics). A bundle and settings the core cannot
protect with (an ``e4e`` attribute loss without an encoder, say) still load: every request is
answered UNSUPPORTED with the reason, while the bundle's network models serve as usual.

Parameters (``config.pbtxt``, all strings, written by ``exporter.repository``, which holds their
defaults): ``bundle`` (folder in the version folder), ``algorithm`` (JSON object of ProtectConfig
overrides: the repository layer of the settings, anonymixer.config), ``encode_via``,
``render_via``, ``embed_via`` (``bls`` | ``torch``), ``network_max_batch`` (the
networks' max_batch_size), ``max_image_pixels``; optional ``salt_file`` (deployment salt; the
``ANONYMIXER_SALT_FILE`` environment variable overrides it).
"""

from __future__ import annotations

import contextlib
import json
import locale
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anonymixer import bundle
from anonymixer.bundle import BundleError
from anonymixer.config import resolve_settings
from anonymixer.keys import identity_derivation, salt_fingerprint
from anonymixer.protect import OutOfMemory, ProtectedFace, Protector
from exporter.repository import algorithm_overrides
from optimizer_backend.bls import STAGE_MODELS, bls_error_in, build_stages
from optimizer_backend.decode import Item, ItemError, encode_png, parse_request
from optimizer_backend.heartbeat import beating, heartbeat
from optimizer_backend.metrics import ModelMetrics
from optimizer_backend.onnx_model import model_parameters
from optimizer_backend.responses import error_response, internal_error, probe_answer, read_inputs

try:  # only importable inside the Triton Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

INPUTS = ("IMAGE", "KEY", "GROUP", "STEPS")
PARAMETERS = ("bundle", "algorithm", "network_max_batch", "max_image_pixels", *(f"{s}_via" for s in STAGE_MODELS))


def read_salt(params: dict[str, str]) -> tuple[bytes, str]:
    """(the deployment salt, what to log of it): the file's bytes exactly as they are — a salt is
    bytes, not text, and a byte stripped would silently give every key another face."""
    path = os.environ.get("ANONYMIXER_SALT_FILE") or params.get("salt_file")
    if not path:
        return b"", "no deployment salt"
    salt = Path(path).read_bytes()
    said = f"deployment salt from {path}: {len(salt)} bytes, fingerprint {salt_fingerprint(salt)}"
    if salt != salt.strip():
        said += (
            f" (it begins or ends with whitespace, which is part of the salt; before 2026-12-05 it was "
            f"stripped: fingerprint then {salt_fingerprint(salt.strip())})"
        )
    return salt, said


def utf8_text_files() -> None:
    """Make UTF-8 the default encoding of text files in this stub. Triton's stub starts Python
    without taking the locale from the environment, so it runs in the C locale (ASCII), and
    torch.compile opens its UTF-8 kernel templates with the default encoding."""
    if locale.getpreferredencoding(False).replace("-", "").lower() != "utf8":
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        utf8_text_files()
        config = json.loads(args["model_config"])
        params = model_parameters(config, PARAMETERS)
        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
        else:
            self.device = torch.device("cpu")
        folder = Path(args["model_repository"]) / args["model_version"]
        model = bundle.load(folder / params["bundle"], self.device)
        settings = resolve_settings(model.config, algorithm_overrides(params["algorithm"]))
        protect_config = settings.config
        via = {stage: params[f"{stage}_via"] for stage in STAGE_MODELS}
        stages = build_stages(model, via, int(params["network_max_batch"]))
        self.max_pixels = int(params["max_image_pixels"])
        self.metrics = ModelMetrics(args["model_name"])
        self.name = args["model_name"]
        self.derivation = identity_derivation(protect_config).encode()
        if model.notice:
            pb_utils.Logger.log_info(f"{self.name}: {model.notice}")
        self.unsupported: str | None = None
        try:
            salt, said = read_salt(params)
            pb_utils.Logger.log_info(f"{self.name}: {said}")
            beat = heartbeat().beat
            self.protector = Protector(
                model, protect_config, salt=salt, stages=stages, on_inversion_step=lambda *_: beat()
            )
        except BundleError as exc:
            self.unsupported = f"{self.name} cannot protect faces with this server's bundle: {exc}"
            pb_utils.Logger.log_warn(self.unsupported)
            return
        pb_utils.Logger.log_info(
            f"{self.name}: {model.config['profile']} bundle on {self.device}, stages {via}, "
            f"identity derivation {self.derivation.decode()}, "
            f"inversion {self.protector.inversion}"
            + (f" ({protect_config.inversion_steps} steps)" if self.protector.inversion == "optimize" else "")
            + f", steps {protect_config.steps}, views {protect_config.views}; settings: {settings.describe()}"
        )
        # Derive the refinement batch limit (on CUDA: measure a step's memory) and compile the
        # synthesis for the batch buckets now (the inversion shares it), so that no request pays for either.
        start = time.perf_counter()
        items = int(config.get("max_batch_size", 0)) * (1 + protect_config.views)  # views join refined items
        compiled = self.protector.scheduler.warm_up(max_items=items or None)
        pb_utils.Logger.log_info(
            f"{self.name}: refinement warm-up in {time.perf_counter() - start:.1f} s: at most "
            f"{self.protector.scheduler.limit() or 'any number of'} items per refinement batch"
            + (f", synthesis compiled ({protect_config.compile}) for batches {compiled}" if compiled else "")
        )

    @beating
    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [probe_answer(request, self.unsupported) for request in requests]
        if self.unsupported is not None:
            return [
                answer or self._error(self.unsupported, "unsupported", pb_utils.TritonError.UNSUPPORTED)
                for answer in responses
            ]
        start = time.perf_counter()
        parsed: dict[int, list[Item]] = {}
        for r, request in enumerate(requests):
            if responses[r] is not None:
                continue
            if request.is_cancelled():  # its caller gave up while it queued: refining it helps no one
                responses[r] = self._cancelled()
                continue
            try:
                parsed[r] = parse_request(
                    read_inputs(request, INPUTS), max_steps=self.protector.config.max_steps, max_pixels=self.max_pixels
                )
            except ItemError as exc:
                responses[r] = self._error(str(exc), exc.code, pb_utils.TritonError.INVALID_ARG)
        self.metrics.stage("decode", time.perf_counter() - start)

        # One refinement per distinct STEPS value; group ids are scoped to their request.
        by_steps: dict[int, list[tuple[int, int]]] = {}
        for r, items in parsed.items():
            for j, item in enumerate(items):
                by_steps.setdefault(self.protector.config.steps_for(item.steps), []).append((r, j))
        results: dict[tuple[int, int], Any] = {}
        cancelled: set[int] = set()
        for steps, members in by_steps.items():
            owners = {r for r, _ in members}
            groups = {}
            for r, j in members:
                group = parsed[r][j].group
                groups[(r, j)] = groups.setdefault(("g", r, group) if group is not None else ("i", r, j), len(groups))

            def check_cancelled(step: int, cos: torch.Tensor, owners: set[int] = owners) -> bool:
                heartbeat().beat()  # a step done: progress the supervisor sees without queueing
                cancelled.update(r for r in owners if requests[r].is_cancelled())
                return not owners <= cancelled

            try:
                outcomes = self.protector.protect_each(
                    [parsed[r][j].image for r, j in members],
                    [parsed[r][j].key for r, j in members],
                    groups=[groups[m] for m in members],
                    steps=steps,
                    on_step=check_cancelled,
                )
            except Exception as exc:  # a failure of this batch must not take the instance down
                message, reason, status = self._failure(exc)
                for r in owners:
                    responses[r] = responses[r] or self._error(message, reason, status)
                continue
            for split in self.protector.splits:
                pb_utils.Logger.log_warn(f"{self.name}: {split}")
            for stage, seconds in self.protector.timings.items():
                self.metrics.stage(stage, seconds)
            self.metrics.batch.observe(self.protector.refined_items)
            faces = [o for o in outcomes if isinstance(o, ProtectedFace)]
            self.metrics.steps.increment(max((f.steps for f in faces), default=0))
            for (r, j), outcome in zip(members, outcomes, strict=True):
                if isinstance(outcome, ProtectedFace):
                    results[(r, j)] = outcome
                elif isinstance(outcome, OutOfMemory):
                    responses[r] = responses[r] or self._error(
                        f"out of memory: {outcome.message}", "out_of_memory", pb_utils.TritonError.INTERNAL
                    )
                else:  # Stopped: never refined, so never answered as protected
                    cancelled.add(r)

        for r, items in parsed.items():
            if responses[r] is not None:
                continue
            if r in cancelled:
                responses[r] = self._cancelled()
                continue
            faces = [results[(r, j)] for j in range(len(items))]
            responses[r] = pb_utils.InferenceResponse(output_tensors=self._outputs(faces))
            self.metrics.items.increment(len(faces))
            for face in faces:
                self.metrics.similarity.observe(face.original_similarity)
        return responses

    def _outputs(self, faces: list[Any]) -> list[Any]:
        pngs = np.array([[encode_png(f.image)] for f in faces], dtype=np.object_)
        templates = np.stack([f.template for f in faces]).astype(np.float32)
        similarity = np.array([[f.original_similarity] for f in faces], dtype=np.float32)
        derivation = np.array([[self.derivation]] * len(faces), dtype=np.object_)
        return [
            pb_utils.Tensor("PROTECTED", pngs),
            pb_utils.Tensor("TEMPLATE", templates),
            pb_utils.Tensor("ORIGINAL_SIMILARITY", similarity),
            pb_utils.Tensor("DERIVATION", derivation),
        ]

    def _failure(self, exc: Exception) -> tuple[str, str, int]:
        """(message, metrics reason, status) for the requests of a batch that raised ``exc``."""
        bls = bls_error_in(exc)
        if bls is not None:  # the network model may be back at the client's retry
            message = f"{self.name}: a network model is unavailable, retry: {bls}"
            pb_utils.Logger.log_error(message)
            return message, "network_unavailable", pb_utils.TritonError.UNAVAILABLE
        return internal_error(self.name, "protecting faces", exc), "internal", pb_utils.TritonError.INTERNAL

    def _cancelled(self) -> Any:
        self.metrics.error("cancelled")
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)
        )

    def _error(self, message: str, reason: str, status: int) -> Any:
        return error_response(self.name, self.metrics, message, reason, status)

    def finalize(self) -> None:
        self.protector = None

"""``AnonymixerClient``: the synchronous gRPC client (thread-safe, one channel, lazy connect)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient

from anonymixer_client.errors import (
    AnonymixerError,
    DerivationMismatchError,
    ModelNotReadyError,
    RetryBudget,
    backoff,
    map_error,
)
from anonymixer_client.metrics import ClientMetrics
from anonymixer_client.types import (
    CallRecord,
    ImageLike,
    Key,
    KeyLike,
    ModelStatistics,
    ProtectedFace,
    ProtectedScene,
    Template,
    Vector,
    Verification,
    encode_image,
)
from anonymixer_client.wire import (
    API_KEY_HEADER,
    MODEL,
    SCENE_MODEL,
    build_inputs,
    channel_args,
    in_input_order,
    normalise_keys,
    parse_faces,
    parse_scene,
    plan_chunks,
)

DEFAULT_THRESHOLD = 0.5  # cosine between protected templates; calibrate it on your data (the privacy evaluation)
T = TypeVar("T")


def verification(face: ProtectedFace, template: Template | Vector, threshold: float) -> Verification:
    """The probe ``face`` scored against ``template``. A :class:`Template` of another derivation than
    the face's raises :class:`DerivationMismatchError`; one that records none (written before
    derivations were) is compared with a warning, as is any template against a face from a server
    that reports none: nothing says they differ, and such templates were all made by derivation v1.
    A bare vector is compared as it is (its caller keeps track of where it came from)."""
    if isinstance(template, Template):
        if template.derivation is not None and face.derivation is not None:
            if template.derivation != face.derivation:
                raise DerivationMismatchError(
                    f"the template was made by identity derivation {template.derivation!r} but this server "
                    f"protects faces with {face.derivation!r}: the same key gives another face here, so they "
                    "cannot be compared; enroll again on this server"
                )
        else:
            warnings.warn(
                f"cannot check the identity derivation (template: {template.derivation!r}, server: "
                f"{face.derivation!r}); comparing anyway",
                stacklevel=3,
            )
        vector = template.vector
    else:
        vector = np.asarray(template, dtype=np.float32)
    score = float(np.dot(face.template, vector))
    return Verification(score=score, is_match=score >= threshold, threshold=threshold, face=face)


def enrolled(faces: list[ProtectedFace]) -> Template:
    """The normalised mean of ``faces``' templates, with their derivation; faces of two derivations
    (chunks answered by differently configured replicas) raise :class:`DerivationMismatchError`."""
    derivations = sorted({f.derivation for f in faces}, key=str)
    if len(derivations) > 1:
        raise DerivationMismatchError(
            f"the photos of one enrolment came back from identity derivations {derivations}: "
            "the service's replicas are configured differently"
        )
    mean = np.mean([f.template for f in faces], axis=0)
    vector = (mean / np.linalg.norm(mean)).astype(np.float32)
    return Template(vector=vector, images=len(faces), derivation=derivations[0] if derivations else None)


class AnonymixerClient:
    """Synchronous client. ``with AnonymixerClient("host:8001") as c: c.protect([...], key)``.

    ``root_certificates`` is the path of a PEM file (the CA of a TLS server); ``private_key`` and
    ``certificate_chain`` are this client's PEM key and certificate for a server with mutual TLS;
    ``api_key`` is sent as the ``api-key`` header (a server started with ``--api-key-file``).
    ``timeout_s`` is the deadline of every call, retries included; a call that meets a retryable
    error (``ServerUnavailableError``, ``ModelUnavailableError``: a model restarting) is tried
    again with jittered backoff, at most ``retries`` times, while its deadline allows; a busy
    refusal (``ServiceBusyError``: the service's queue is full) is tried again until the deadline,
    which then raises ``DeadlineExceededError`` saying how often it was refused. Every request the
    client sends is reported, once done or failed for good, as a :class:`CallRecord` to
    ``metrics`` and to ``on_call`` (its timings: what a load benchmark needs).
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        retries: int = 30,
        max_concurrency: int = 4,
        metrics: ClientMetrics | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.url, self.ssl, self.root_certificates = url, ssl, root_certificates
        self.private_key, self.certificate_chain = private_key, certificate_chain
        self.headers = {API_KEY_HEADER: api_key} if api_key else None
        self.timeout_s, self.retries, self.max_concurrency = timeout_s, retries, max_concurrency
        self.metrics, self.on_call = metrics, on_call
        self._client: Any = None
        self._max_batch: int | None = None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    def _grpc(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = grpcclient.InferenceServerClient(
                    self.url,
                    ssl=self.ssl or bool(self.certificate_chain),
                    root_certificates=self.root_certificates,
                    private_key=self.private_key,
                    certificate_chain=self.certificate_chain,
                    channel_args=channel_args(),
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> AnonymixerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(
                *args, client_timeout=kwargs.pop("client_timeout", self.timeout_s), headers=self.headers, **kwargs
            )
        except Exception as exc:
            raise map_error(exc) from None

    def _retrying(
        self,
        attempt: Callable[[float], T],
        failed: Callable[[AnonymixerError, RetryBudget], None] | None = None,
        started: float | None = None,
    ) -> tuple[T, RetryBudget]:
        """``attempt(seconds left)`` until it succeeds or fails for good: (its result, the budget that
        counted its retries). ``failed(error, budget)`` hears of a final failure before it is raised.
        ``started``: when the call this attempt belongs to began (its deadline counts from then)."""
        budget = RetryBudget(self.timeout_s, self.retries)
        if started is not None:
            budget.started = started
        while True:
            try:
                return attempt(budget.remaining()), budget
            except AnonymixerError as error:
                delay = budget.next_delay(error)
                if delay is None:
                    final = budget.final(error)
                    if failed is not None:
                        failed(final, budget)
                    raise final from None
            if self.metrics:
                self.metrics.retries.inc()
            time.sleep(delay)

    def _request(
        self,
        method: str,
        model: str,
        build: Callable[[], tuple[list[Any], int]],
        parse: Callable[[Any], tuple[T, int]],
        items: int,
        index: list[int] | None = None,
        started: float | None = None,
    ) -> T:
        """One request to ``model`` with retries: ``build()`` gives its tensors and the bytes they
        carry, ``parse(result)`` the answer and the bytes it carried; its :class:`CallRecord` goes
        to the observers, and ``index`` maps error item numbers to the caller's list."""
        start = time.perf_counter()
        inputs, sent = build()
        built = time.perf_counter()

        def attempt(seconds: float) -> Any:
            try:
                return self._grpc().infer(model, inputs, client_timeout=seconds, headers=self.headers)
            except Exception as exc:
                raise map_error(exc, index=index) from None

        def record(outcome: str, parse_seconds: float, received: int, budget: RetryBudget) -> None:
            seconds, build_seconds = time.perf_counter() - start, built - start
            timings = (seconds, build_seconds, parse_seconds)
            self._record(CallRecord(method, outcome, items, *timings, sent, received, budget.made, budget.refused))

        result, budget = self._retrying(
            attempt, lambda error, spent: record(type(error).__name__, 0.0, 0, spent), started
        )
        answered = time.perf_counter()
        value, received = parse(result)
        record("ok", time.perf_counter() - answered, received, budget)
        return value

    def _record(self, call: CallRecord) -> None:
        if self.metrics:
            self.metrics.observe(call)
        if self.on_call:
            self.on_call(call)

    def wait_until_ready(self, timeout_s: float = 60.0, model: str = MODEL) -> None:
        """Poll (with backoff) until the server and ``model`` are ready; a server may start later."""
        deadline, polls, last = time.monotonic() + timeout_s, 0, "no answer"
        while True:
            try:
                if self._call(self._grpc().is_server_ready, client_timeout=5) and self._call(
                    self._grpc().is_model_ready, model, client_timeout=5
                ):
                    return
                last = f"model {model} is not ready"
            except AnonymixerError as exc:
                last = str(exc)
            delay = backoff(polls)
            if time.monotonic() + delay > deadline:
                raise ModelNotReadyError(f"{self.url}: not ready after {timeout_s:.0f} s ({last})")
            if self.metrics:
                self.metrics.retries.inc()
            time.sleep(delay)
            polls += 1

    def health(self) -> dict[str, Any]:
        """Server and service-model readiness, the server's and the ready models' versions, and batch
        settings. (The repository index is not open to callers: ``anonymixer serve`` restricts it to
        its supervisor.)"""
        grpc = self._grpc()
        meta = self._call(grpc.get_server_metadata, as_json=True)
        models, versions = {}, {}
        for name in (MODEL, SCENE_MODEL):
            try:
                models[name] = "READY" if self._call(grpc.is_model_ready, name) else "UNAVAILABLE"
            except AnonymixerError:
                models[name] = "NOT SERVED"
            if models[name] == "READY":
                versions[name] = list(self._call(grpc.get_model_metadata, name, as_json=True).get("versions", []))
        info: dict[str, Any] = {
            "server": meta.get("name"),
            "version": meta.get("version"),
            "ready": bool(self._call(grpc.is_server_ready)),
            "models": models,
            "model_versions": versions,
        }
        if models[MODEL] == "READY":
            config = self._call(grpc.get_model_config, MODEL, as_json=True)["config"]
            info["max_batch_size"] = int(config.get("max_batch_size", 0))
            info["dynamic_batching"] = config.get("dynamic_batching", {})
        return info

    def statistics(self, model: str = MODEL) -> ModelStatistics:
        """Triton's counters for ``model`` since it loaded (retried like a call)."""
        stats, _ = self._retrying(
            lambda seconds: self._call(
                self._grpc().get_inference_statistics, model, as_json=True, client_timeout=seconds
            )
        )
        return ModelStatistics.from_triton(model, stats["model_stats"][0])

    def max_batch(self) -> int:
        """The server's max batch (asked once, retried like a call: a server may be restarting)."""
        if self._max_batch is None:
            config, _ = self._retrying(
                lambda seconds: self._call(self._grpc().get_model_config, MODEL, as_json=True, client_timeout=seconds)
            )
            self._max_batch = max(1, int(config["config"].get("max_batch_size", 1)))
        return self._max_batch

    # -- the service ------------------------------------------------------------------------
    def protect(
        self,
        images: Sequence[ImageLike],
        key: KeyLike | Sequence[KeyLike],
        *,
        groups: Sequence[int] | None = None,
        steps: int | None = None,
    ) -> list[ProtectedFace]:
        """Protected faces in input order. Large inputs go in chunks of the server's max batch, in
        parallel; a group is never split across chunks (items of one group are refined together).
        The call has one deadline, ``timeout_s`` from now, whatever the number of chunks: a chunk
        that waits for a free place among ``max_concurrency`` spends the same deadline."""
        started = time.monotonic()
        payload = [encode_image(im) for im in images]
        keys = normalise_keys(key, len(payload))
        chunks = plan_chunks(len(payload), groups, self.max_batch())
        with ThreadPoolExecutor(min(self.max_concurrency, len(chunks)) or 1) as pool:
            parts = list(pool.map(lambda c: self._protect_chunk(c, payload, keys, groups, steps, started), chunks))
        return in_input_order(chunks, parts)

    def _protect_chunk(
        self,
        chunk: list[int],
        payload: list[bytes],
        keys: list[bytes],
        groups: Sequence[int] | None,
        steps: int | None,
        started: float,
    ) -> list[ProtectedFace]:
        images = [payload[i] for i in chunk]

        def build() -> tuple[list[Any], int]:
            chunk_groups = None if groups is None else [groups[i] for i in chunk]
            return build_inputs(grpcclient, images, [keys[i] for i in chunk], chunk_groups, steps), sum(
                map(len, images)
            )

        def parse(result: Any) -> tuple[list[ProtectedFace], int]:
            faces = parse_faces(result)
            return faces, sum(len(f.png) + f.template.nbytes for f in faces)

        return self._request("protect", MODEL, build, parse, len(chunk), index=chunk, started=started)

    def enroll(self, images: Sequence[ImageLike], key: KeyLike) -> Template:
        """A person's photos (one group) → one template: the normalised mean of the protected templates."""
        return enrolled(self.protect(images, key, groups=[0] * len(images)))

    def verify(
        self, image: ImageLike, key: KeyLike, template: Template | Vector, *, threshold: float = DEFAULT_THRESHOLD
    ) -> Verification:
        return verification(self.protect([image], key)[0], template, threshold)

    def protect_scene(self, image: ImageLike, key: KeyLike, *, steps: int | None = None) -> ProtectedScene:
        """A whole photo with every face protected (or blurred, if too small), and what was found.
        Raises ``NotServedError`` if the server has no scene model."""
        raw = encode_image(image)
        secret = Key.of(key).reveal()

        def parse(result: Any) -> tuple[ProtectedScene, int]:
            scene = parse_scene(result)
            return scene, len(scene.data)

        return self._request(
            "protect_scene",
            SCENE_MODEL,
            lambda: (build_inputs(grpcclient, [raw], [secret], None, steps), len(raw)),
            parse,
            1,
        )

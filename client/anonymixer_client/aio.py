"""``AsyncAnonymixerClient``: the asyncio twin of :class:`~anonymixer_client.AnonymixerClient`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import tritonclient.grpc.aio as grpcaio

from anonymixer_client.client import DEFAULT_THRESHOLD, enrolled, verification
from anonymixer_client.errors import AnonymixerError, ModelNotReadyError, RetryBudget, backoff, map_error
from anonymixer_client.types import (
    ImageLike,
    Key,
    KeyLike,
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

T = TypeVar("T")


class AsyncAnonymixerClient:
    """``async with AsyncAnonymixerClient(url) as c: faces = await c.protect([...], key)``; the
    arguments mean what they mean for :class:`~anonymixer_client.AnonymixerClient`."""

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
    ) -> None:
        self.url, self.ssl, self.root_certificates = url, ssl, root_certificates
        self.private_key, self.certificate_chain = private_key, certificate_chain
        self.headers = {API_KEY_HEADER: api_key} if api_key else None
        self.timeout_s, self.retries = timeout_s, retries
        self._client: Any = None
        self._max_batch: int | None = None

    def _grpc(self) -> Any:
        if self._client is None:
            self._client = grpcaio.InferenceServerClient(
                self.url,
                ssl=self.ssl or bool(self.certificate_chain),
                root_certificates=self.root_certificates,
                private_key=self.private_key,
                certificate_chain=self.certificate_chain,
                channel_args=channel_args(),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> AsyncAnonymixerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Any, *args: Any, client_timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            return await fn(*args, client_timeout=client_timeout or self.timeout_s, headers=self.headers, **kwargs)
        except Exception as exc:
            raise map_error(exc) from None

    async def wait_until_ready(self, timeout_s: float = 60.0, model: str = MODEL) -> None:
        deadline, polls, last = time.monotonic() + timeout_s, 0, "no answer"
        while True:
            try:
                if await self._call(self._grpc().is_server_ready, client_timeout=5) and await self._call(
                    self._grpc().is_model_ready, model, client_timeout=5
                ):
                    return
                last = f"model {model} is not ready"
            except AnonymixerError as exc:
                last = str(exc)
            delay = backoff(polls)
            if time.monotonic() + delay > deadline:
                raise ModelNotReadyError(f"{self.url}: not ready after {timeout_s:.0f} s ({last})")
            await asyncio.sleep(delay)
            polls += 1

    async def _retrying(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        """``await attempt(seconds left)`` until it succeeds or fails for good (``RetryBudget``: busy
        refusals until the deadline, other retryable errors at most ``retries`` times)."""
        budget = RetryBudget(self.timeout_s, self.retries)
        while True:
            try:
                return await attempt(budget.remaining())
            except AnonymixerError as error:
                delay = budget.next_delay(error)
                if delay is None:
                    raise budget.final(error) from None
            await asyncio.sleep(delay)

    async def max_batch(self) -> int:
        if self._max_batch is None:
            config = await self._retrying(
                lambda seconds: self._call(self._grpc().get_model_config, MODEL, as_json=True, client_timeout=seconds)
            )
            self._max_batch = max(1, int(config["config"].get("max_batch_size", 1)))
        return self._max_batch

    async def protect(
        self,
        images: Sequence[ImageLike],
        key: KeyLike | Sequence[KeyLike],
        *,
        groups: Sequence[int] | None = None,
        steps: int | None = None,
    ) -> list[ProtectedFace]:
        payload = [encode_image(im) for im in images]
        keys = normalise_keys(key, len(payload))
        chunks = plan_chunks(len(payload), groups, await self.max_batch())

        async def one(chunk: list[int]) -> list[ProtectedFace]:
            inputs = build_inputs(
                grpcaio,
                [payload[i] for i in chunk],
                [keys[i] for i in chunk],
                None if groups is None else [groups[i] for i in chunk],
                steps,
            )

            async def attempt(seconds: float) -> list[ProtectedFace]:
                try:
                    result = await self._grpc().infer(MODEL, inputs, client_timeout=seconds, headers=self.headers)
                except Exception as exc:
                    raise map_error(exc, index=chunk) from None
                return parse_faces(result)

            return await self._retrying(attempt)

        parts = await asyncio.gather(*(one(c) for c in chunks))
        return in_input_order(chunks, list(parts))

    async def enroll(self, images: Sequence[ImageLike], key: KeyLike) -> Template:
        return enrolled(await self.protect(images, key, groups=[0] * len(images)))

    async def verify(
        self, image: ImageLike, key: KeyLike, template: Template | Vector, *, threshold: float = DEFAULT_THRESHOLD
    ) -> Verification:
        return verification((await self.protect([image], key))[0], template, threshold)

    async def protect_scene(self, image: ImageLike, key: KeyLike, *, steps: int | None = None) -> ProtectedScene:
        """A whole photo with every face protected (or blurred, if too small), and what was found.
        Cancelling the awaiting task cancels the call on the server too (its refinement stops)."""
        inputs = build_inputs(grpcaio, [encode_image(image)], [Key.of(key).reveal()], None, steps)

        async def attempt(seconds: float) -> ProtectedScene:
            try:
                result = await self._grpc().infer(SCENE_MODEL, inputs, client_timeout=seconds, headers=self.headers)
            except Exception as exc:
                raise map_error(exc) from None
            return parse_scene(result)

        return await self._retrying(attempt)

"""What each tab does: the service's calls for one browser session, and what the page shows of
their answers. Every call is made through :mod:`anonymixer_client`; what a session uploads, its
key and its template arrive as arguments and leave as return values (Gradio keeps them per
session), never in module or instance state."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
from PIL import Image

from anonymixer_client import AnonymixerError, ProtectedFace, ProtectedScene, ServerUnavailableError, Template
from anonymixer_client.client import DEFAULT_THRESHOLD, enrolled, verification
from webui.connection import Connection
from webui.keys import key_of

P = ParamSpec("P")
T = TypeVar("T")
TICK_S = 1.0  # how often a running call's elapsed time is shown
PROGRESS = gr.Progress()  # the default Gradio looks for to hand each event its own tracker


def user_errors(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The service's (or the key's) own message in the page, not a traceback. Gradio shows a
    ``gr.Error``'s text as it is; the client's messages name the item and the problem, never a key."""

    @functools.wraps(handler)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except ServerUnavailableError as exc:  # gRPC's own words name the address, not what it means
            raise gr.Error(f"the service is unreachable: {exc}", print_exception=False) from None
        except (AnonymixerError, ValueError, OSError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapped


async def with_progress(call: Awaitable[T], progress: gr.Progress, what: str) -> T:
    """Await ``call``, showing how long it has run. When the page cancels the event (its Stop
    button), the task awaiting here is cancelled, and so is the call: the async client cancels the
    gRPC request, and the server drops it from its refinement."""
    task = asyncio.ensure_future(call)
    started = time.monotonic()
    try:
        while True:
            # seconds as steps of unknown total: Gradio shows the count with its unit (but no desc) and no
            # made-up percentage; a bare desc, without a count, is not shown at all
            progress((round(time.monotonic() - started), None), unit=f"s · {what}")
            done, _ = await asyncio.wait({task}, timeout=TICK_S)
            if done:
                return task.result()
    finally:
        task.cancel()


def photo_list(files: list[str] | str | None) -> list[str]:
    paths = [files] if isinstance(files, str) else list(files or [])
    if not paths:
        raise ValueError("upload at least one photo")
    return paths


def similarity_text(face: ProtectedFace) -> str:
    return f"cos(protected, original) {face.original_similarity:+.3f}"


def verdict(score: float, threshold: float) -> str:
    said = "**match**" if score >= threshold else "**no match**"
    return f"score {score:+.3f} — {said} (threshold {threshold:.2f})"


class Views:
    """The tabs' handlers for one service (the connection is shared; nothing of a user is kept)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def _protect(self, images: list[Any], keys: list[Any], groups: list[int] | None) -> list[ProtectedFace]:
        async with self.connection.async_client() as client:
            return await client.protect(images, keys, groups=groups)

    async def _scene(self, image: str, key: Any) -> ProtectedScene:
        async with self.connection.async_client() as client:
            return await client.protect_scene(image, key)

    @user_errors
    async def protect(
        self, photos: list[str] | None, typed: str, loaded: bytes | None, progress: gr.Progress = PROGRESS
    ) -> tuple[list[tuple[Any, str]], str, Template, str]:
        """Photos of one person → each protected face beside its original, and the enrolled template
        (one request: the photos are refined jointly, as one person)."""
        key, paths = key_of(typed, loaded), photo_list(photos)
        call = self._protect(paths, [key] * len(paths), [0] * len(paths))
        faces = await with_progress(call, progress, f"protecting {len(paths)} photo(s) on the service")
        gallery: list[tuple[Any, str]] = []
        rows = ["| photo | cos(protected, original) |", "| --- | --- |"]
        for number, (path, face) in enumerate(zip(paths, faces, strict=True), start=1):
            gallery += [(path, f"{number}: original"), (face.image, f"{number}: protected · {similarity_text(face)}")]
            rows.append(f"| {number} | {face.original_similarity:+.3f} |")
        template = enrolled(faces)
        note = (
            f"Enrolled: a template of {template.images} protected photo(s)"
            f" (derivation `{template.derivation}`). Verify another photo of the person below."
        )
        return gallery, "\n".join(rows), template, note

    @user_errors
    async def verify(
        self,
        probe: str | None,
        typed: str,
        loaded: bytes | None,
        template: Template | None,
        threshold: float = DEFAULT_THRESHOLD,
        progress: gr.Progress = PROGRESS,
    ) -> tuple[Image.Image, str]:
        """A probe photo under the key, scored against the session's enrolled template."""
        if template is None:
            raise ValueError("enroll first: protect photos of the person above")
        key, path = key_of(typed, loaded), photo_list(probe)[0]
        face = (await with_progress(self._protect([path], [key], None), progress, "protecting the probe"))[0]
        result = verification(face, template, threshold)
        return face.image, verdict(result.score, threshold)

    @user_errors
    async def revoke(
        self, photo: str | None, typed: str, loaded: bytes | None, new_key: str, progress: gr.Progress = PROGRESS
    ) -> tuple[Image.Image, Image.Image, str]:
        """One photo under the current key and a new one, side by side, with their cross-key score."""
        key, path = key_of(typed, loaded), photo_list(photo)[0]
        if not new_key:
            raise ValueError("type a new key to revoke the current one")
        fresh = key_of(new_key, None)
        if fresh == key:
            raise ValueError("the new key is the current key: type another")
        call = self._protect([path, path], [key, fresh], None)
        current, renewed = await with_progress(call, progress, "protecting the photo under both keys")
        score = float(np.dot(current.template, renewed.template))
        meaning = (
            "a template enrolled under the current key does not verify the new face: the new key revokes the old"
            if score < DEFAULT_THRESHOLD
            else "the two faces still match at this threshold: this photo is not revoked by the new key"
        )
        text = (
            f"Cross-key {verdict(score, DEFAULT_THRESHOLD)}: {meaning}.\n\n"
            f"Current key: {similarity_text(current)}; new key: {similarity_text(renewed)}."
        )
        return current.image, renewed.image, text

    @user_errors
    async def scene(
        self, photo: str | None, typed: str, loaded: bytes | None, progress: gr.Progress = PROGRESS
    ) -> tuple[Image.Image, tuple[Image.Image, list[tuple[tuple[int, int, int, int], str]]], str]:
        """A whole photo with every face replaced, where each face was and what was done to it."""
        key, path = key_of(typed, loaded), photo_list(photo)[0]
        scene = await with_progress(self._scene(path, key), progress, "finding and protecting every face")
        image = scene.image.convert("RGB")
        boxes = [
            ((round(f.box[0]), round(f.box[1]), round(f.box[2]), round(f.box[3])), f"{n}: {f.action}")
            for n, f in enumerate(scene.faces, start=1)
        ]
        rows = ["| face | box (x1, y1, x2, y2) | detector score | done |", "| --- | --- | --- | --- |"]
        rows += [
            f"| {n} | {', '.join(f'{v:.0f}' for v in f.box)} | {f.score:.3f} | {f.action} |"
            for n, f in enumerate(scene.faces, start=1)
        ]
        table = "\n".join(rows) if scene.faces else "No face found: the photo comes back as it was."
        return image, (image, boxes), table

"""The service's wire format, in one place: the request tensors both clients send, the responses
they read, and how a call's items are cut into requests (the server's max batch, groups whole).
Nothing else in the project builds or parses these tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from anonymixer_client.types import DetectedFace, Key, KeyLike, ProtectedFace, ProtectedScene

MODEL = "anonymixer"
SCENE_MODEL = "anonymixer_scene"
# anonymixer serve --api-key-file restricts inference to header api-key; Triton's gRPC endpoint
# reads restricted-protocol headers under this prefix
API_KEY_HEADER = "triton-grpc-protocol-api-key"


def channel_args() -> list[tuple[str, Any]]:
    """Large messages (whole photos); no gRPC-level retries: the client retries retryable errors
    itself, within each call's deadline (``RetryBudget``)."""
    return [
        ("grpc.enable_retries", 0),
        ("grpc.max_send_message_length", 256 << 20),
        ("grpc.max_receive_message_length", 256 << 20),
    ]


def build_inputs(
    module: Any, images: list[bytes], keys: list[bytes], groups: Sequence[int] | None, steps: int | None
) -> list[Any]:
    """The request tensors for ``tritonclient.grpc`` or ``tritonclient.grpc.aio`` (``module``)."""
    n = len(images)

    def tensor(name: str, array: npt.NDArray[Any], dtype: str) -> Any:
        t = module.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    inputs = [
        tensor("IMAGE", np.array([[im] for im in images], dtype=np.object_), "BYTES"),
        tensor("KEY", np.array([[k] for k in keys], dtype=np.object_), "BYTES"),
    ]
    if groups is not None:
        inputs.append(tensor("GROUP", np.asarray(groups, dtype=np.int64).reshape(n, 1), "INT64"))
    if steps is not None:
        inputs.append(tensor("STEPS", np.full((n, 1), steps, dtype=np.int32), "INT32"))
    return inputs


def parse_faces(result: Any) -> list[ProtectedFace]:
    pngs = result.as_numpy("PROTECTED")
    templates = result.as_numpy("TEMPLATE")
    sims = result.as_numpy("ORIGINAL_SIMILARITY")
    derivations = result.as_numpy("DERIVATION")  # None from a server that predates DERIVATION
    return [
        ProtectedFace(
            bytes(pngs[i, 0]),
            templates[i].astype(np.float32),
            float(sims[i, 0]),
            None if derivations is None else bytes(derivations[i, 0]).decode(),
        )
        for i in range(len(pngs))
    ]


def parse_scene(result: Any) -> ProtectedScene:
    """The first item of an ``anonymixer_scene`` response; padding rows (empty action) dropped."""
    rows = result.as_numpy("FACES")[0]
    actions = result.as_numpy("FACE_ACTIONS")[0]
    faces = [
        DetectedFace(
            box=(float(row[0]), float(row[1]), float(row[2]), float(row[3])),
            score=float(row[4]),
            landmarks=[(float(row[5 + 2 * k]), float(row[6 + 2 * k])) for k in range(5)],
            action=bytes(action).decode(),
        )
        for row, action in zip(rows, actions, strict=True)
        if action
    ]
    return ProtectedScene(bytes(result.as_numpy("IMAGE")[0, 0]), faces)


def normalise_keys(key: KeyLike | Sequence[KeyLike], n: int) -> list[bytes]:
    keys = [key] * n if isinstance(key, (Key, bytes, str)) else list(key)
    if len(keys) != n:
        raise ValueError(f"got {n} images but {len(keys)} keys (give one key, or one per image)")
    return [Key.of(k).reveal() for k in keys]


def plan_chunks(n: int, groups: Sequence[int] | None, size: int) -> list[list[int]]:
    """Item indices per request: at most ``size`` (the server's max batch), groups never split."""
    if groups is not None and len(groups) != n:
        raise ValueError(f"got {n} images but {len(groups)} groups")
    members: dict[object, list[int]] = {}
    for i in range(n):
        members.setdefault(("g", groups[i]) if groups is not None else ("i", i), []).append(i)
    chunks: list[list[int]] = [[]]
    for items in members.values():
        if len(items) > size:
            raise ValueError(f"a group of {len(items)} items is larger than the server's max batch ({size})")
        if chunks[-1] and len(chunks[-1]) + len(items) > size:
            chunks.append([])
        chunks[-1] += items
    return [c for c in chunks if c]


def in_input_order(chunks: list[list[int]], parts: list[list[ProtectedFace]]) -> list[ProtectedFace]:
    faces: dict[int, ProtectedFace] = {}
    for chunk, part in zip(chunks, parts, strict=True):
        faces.update(zip(chunk, part, strict=True))
    return [faces[i] for i in sorted(faces)]

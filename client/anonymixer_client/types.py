"""Keys and results."""

from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt
from PIL import Image

MAX_KEY_BYTES = 1024


class Key:
    """A user's secret key. ``repr``/``str`` never show it; it refuses to be pickled."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes | str) -> None:
        data = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not 1 <= len(data) <= MAX_KEY_BYTES:
            raise ValueError(f"a key must be 1–{MAX_KEY_BYTES} bytes, got {len(data)}")
        self._secret = data

    @classmethod
    def from_file(cls, path: str | Path) -> Key:
        return cls(Path(path).read_bytes().rstrip(b"\r\n"))

    @classmethod
    def of(cls, key: KeyLike) -> Key:
        return key if isinstance(key, Key) else cls(key)

    def reveal(self) -> bytes:
        return self._secret

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._secret).digest())

    def __repr__(self) -> str:
        return f"Key(<{len(self._secret)} bytes, redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("Key is not picklable: keys must not be written anywhere")


Vector = npt.NDArray[np.float32]
KeyLike = Union[Key, bytes, str]  # noqa: UP007 - a runtime alias
ImageLike = Union[str, Path, bytes, Image.Image, npt.NDArray[np.uint8]]  # noqa: UP007


@dataclass
class ProtectedFace:
    png: bytes  # the protected face, PNG
    template: Vector  # float32 [D], L2-normalised
    original_similarity: float  # cos(protected, original): near 0 means the identity is gone
    derivation: str | None = None  # the server's identity derivation; None from a server that predates it

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png))


@dataclass
class Template:
    """A person's protected template under one key: the normalised mean of protected templates.
    ``derivation`` names how the server turned the key into the protected identity (e.g.
    ``anonymixer/key-v1/paper/rows3-8/psi0.7``): a template verifies only against faces of the same
    derivation. None: unknown (a template written before derivations were recorded)."""

    vector: Vector
    images: int = 1
    derivation: str | None = None


@dataclass
class Verification:
    score: float
    is_match: bool
    threshold: float
    face: ProtectedFace | None = field(default=None, repr=False)


@dataclass
class DetectedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the photo's pixels (EXIF-rotated)
    score: float
    landmarks: list[tuple[float, float]]  # eyes, nose, mouth corners (left = image left)
    action: str  # "protected" | "blurred" (too small to protect) | "kept" (too small, left alone)


@dataclass
class ProtectedScene:
    data: bytes  # the photo with its faces replaced (PNG unless the server says otherwise)
    faces: list[DetectedFace]

    @property
    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data))


@dataclass(frozen=True)
class CallRecord:
    """One request the client sent (a chunk of ``protect``, or one ``protect_scene``), as the
    client's observers see it (``ClientMetrics``, ``on_call``). Never holds a key or a picture."""

    method: str  # "protect" | "protect_scene"
    outcome: str  # "ok", or the class name of the error the call raised
    items: int
    seconds: float  # from building the request to its parsed answer, retries and backoff included
    build_seconds: float  # building the request tensors (perf_analyzer's "Client Send")
    parse_seconds: float  # reading the answer into results (perf_analyzer's "Client Recv"; 0 on failure)
    bytes_sent: int  # the encoded images
    bytes_received: int  # the returned pictures and templates
    retries: int  # tries after the first, busy refusals' included
    busy_refusals: int = 0  # times the service refused it as busy (its queue full: ServiceBusyError)


@dataclass(frozen=True)
class ModelStatistics:
    """Triton's counters for one model since it loaded (its statistics API); times are summed over
    the successful requests."""

    model: str
    inference_count: int  # items inferred (a request of 4 faces counts 4)
    execution_count: int  # executions (dynamic batches) run
    success_count: int  # requests answered
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    @classmethod
    def from_triton(cls, model: str, stats: dict[str, Any]) -> ModelStatistics:
        """From one ``model_stats`` entry of Triton's statistics in JSON."""
        inference = stats.get("inference_stats", {})

        def part(name: str, unit: str) -> int:
            return int(inference.get(name, {}).get(unit, 0))

        return cls(
            model=model,
            inference_count=int(stats.get("inference_count", 0)),
            execution_count=int(stats.get("execution_count", 0)),
            success_count=part("success", "count"),
            queue_ns=part("queue", "ns"),
            compute_input_ns=part("compute_input", "ns"),
            compute_infer_ns=part("compute_infer", "ns"),
            compute_output_ns=part("compute_output", "ns"),
        )


def encode_image(image: ImageLike) -> bytes:
    """Paths and bytes go as they are (the server decodes); PIL images and uint8 arrays become PNG."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"arrays must be uint8, got {image.dtype}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"unsupported image type {type(image).__name__}")

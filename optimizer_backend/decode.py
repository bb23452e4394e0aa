"""Request decoding and validation for the ``anonymixer`` and ``anonymixer_scene`` models,
independent of Triton.

Each problem is a :class:`ItemError` that names the input, the item and the reason; the model turns
it into an error for that request alone. Keys are checked for length only and never appear in a
message.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from anonymixer.keys import MAX_KEY_BYTES, MIN_KEY_BYTES, SecretKey

MIN_SIDE = 16


class ItemError(ValueError):
    """A bad input item: ``str()`` is the message the client sees; ``code`` labels the metrics."""

    def __init__(self, input_name: str, item: int | None, reason: str, code: str) -> None:
        where = f"{input_name} item {item}" if item is not None else input_name
        super().__init__(f"{where}: {reason}")
        self.code = code


@dataclass
class Item:
    image: np.ndarray  # uint8 [S, S, 3], an aligned face
    key: SecretKey
    group: int | None
    steps: int | None


@dataclass
class PhotoItem:
    photo: np.ndarray  # uint8 [H, W, 3], EXIF orientation applied
    key: SecretKey
    steps: int | None


def decode_image(data: bytes, item: int, max_pixels: int, *, aligned: bool = True) -> np.ndarray:
    """Encoded JPEG/PNG/WebP/… → uint8 RGB [H, W, 3]; EXIF orientation applied, modes converted.
    An ``aligned`` face must be square."""
    if not data:
        raise ItemError("IMAGE", item, "empty", "empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # The header gives the size: refuse a decompression bomb before decoding a pixel.
            width, height = image.size
            if width * height > max_pixels:
                raise ItemError(
                    "IMAGE", item, f"{width}×{height} is over the limit of {max_pixels} pixels", "too_large"
                )
            image = ImageOps.exif_transpose(image)
            image.load()
    except ItemError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ItemError("IMAGE", item, f"over the pixel limit ({exc})", "too_large") from None
    except Exception as exc:  # PIL raises many types for broken data
        raise ItemError("IMAGE", item, f"cannot be decoded as an image ({type(exc).__name__})", "undecodable") from None
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    if aligned and h != w:
        raise ItemError("IMAGE", item, f"an aligned face must be square, got {w}×{h}", "not_square")
    if min(w, h) < MIN_SIDE:
        raise ItemError("IMAGE", item, f"too small ({w}×{h}; at least {MIN_SIDE} px)", "too_small")
    return rgb


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode → uint8 RGB: 16-bit scaled (not clipped), alpha composited over white, CMYK/P/L converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        return np.repeat(np.clip(np.round(arr), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_key(data: bytes, item: int) -> SecretKey:
    if not MIN_KEY_BYTES <= len(data) <= MAX_KEY_BYTES:
        reason = "empty" if not data else f"{len(data)} bytes; at most {MAX_KEY_BYTES}"
        raise ItemError("KEY", item, f"must be {MIN_KEY_BYTES}–{MAX_KEY_BYTES} bytes, got {reason}", "bad_key")
    return SecretKey(data)


def _rows(name: str, array: np.ndarray | None, n: int, dtypes: tuple[type, ...]) -> list | None:
    if array is None:
        return None
    if array.dtype.type not in dtypes:
        raise ItemError(name, None, f"wrong data type {array.dtype}", "bad_dtype")
    if array.ndim != 2 or array.shape[1] != 1:
        raise ItemError(name, None, f"shape must be [batch, 1], got {list(array.shape)}", "bad_shape")
    if array.shape[0] != n:
        raise ItemError(name, None, f"has {array.shape[0]} items but IMAGE has {n}", "batch_mismatch")
    return [row[0] for row in array]


def _common_rows(inputs: dict[str, np.ndarray | None], max_steps: int) -> tuple[list, list, list | None]:
    """The IMAGE, KEY and STEPS rows every model takes, checked for presence, type and shape."""
    images = inputs.get("IMAGE")
    if images is None or inputs.get("KEY") is None:
        raise ItemError("IMAGE" if images is None else "KEY", None, "missing", "missing_input")
    raw_images = _rows("IMAGE", images, images.shape[0] if images.ndim else 0, (np.object_, np.bytes_))
    assert raw_images is not None
    keys = _rows("KEY", inputs["KEY"], len(raw_images), (np.object_, np.bytes_))
    assert keys is not None
    steps = _rows("STEPS", inputs.get("STEPS"), len(raw_images), (np.int32,))
    for i, step in enumerate(steps or []):
        if not 0 <= step <= max_steps:
            raise ItemError("STEPS", i, f"{step} is out of range [0, {max_steps}]", "bad_steps")
    return raw_images, keys, steps


def parse_request(inputs: dict[str, np.ndarray | None], *, max_steps: int, max_pixels: int) -> list[Item]:
    """IMAGE/KEY/GROUP/STEPS arrays of one request (batch-first, [n, 1]) → validated items."""
    raw_images, keys, steps = _common_rows(inputs, max_steps)
    n = len(raw_images)
    groups = _rows("GROUP", inputs.get("GROUP"), n, (np.int64,))
    items = [
        Item(
            image=decode_image(bytes(raw_images[i]), i, max_pixels),
            key=decode_key(bytes(keys[i]), i),
            group=None if groups is None else int(groups[i]),
            steps=None if steps is None else int(steps[i]),
        )
        for i in range(n)
    ]
    first: dict[int, int] = {}
    for i, item in enumerate(items):
        if item.group is None:
            continue
        head = items[first.setdefault(item.group, i)]
        if head.key != item.key:
            reason = f"shares group {item.group} with item {first[item.group]} but not its key (one person, one key)"
            raise ItemError("GROUP", i, reason, "group_key_conflict")
        if head.steps != item.steps:
            # a group is one refinement (its consistency term), so it runs one number of steps
            reason = (
                f"shares group {item.group} with item {first[item.group]} but not its STEPS "
                f"({item.steps} vs {head.steps}; a group is refined jointly)"
            )
            raise ItemError("GROUP", i, reason, "group_steps_conflict")
    return items


def parse_scene_request(inputs: dict[str, np.ndarray | None], *, max_steps: int, max_pixels: int) -> list[PhotoItem]:
    """IMAGE/KEY/STEPS arrays of one ``anonymixer_scene`` request → validated photos."""
    raw_images, keys, steps = _common_rows(inputs, max_steps)
    return [
        PhotoItem(
            photo=decode_image(bytes(raw_images[i]), i, max_pixels, aligned=False),
            key=decode_key(bytes(keys[i]), i),
            steps=None if steps is None else int(steps[i]),
        )
        for i in range(len(raw_images))
    ]


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()

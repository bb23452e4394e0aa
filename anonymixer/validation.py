"""What a call to the pipeline must give: aligned faces, a key each, groups of one person and one
key. Each check raises ValueError naming the item and the problem (never a key's bytes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymixer.keys import SecretKey

KeyLike = SecretKey | bytes | bytearray | str


def check_image(image: object, index: int) -> np.ndarray:
    """An aligned face: uint8 [H, W, 3], square."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index}: expected a numpy uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: dtype must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: shape must be [H, W, 3] (RGB), got {list(image.shape)}")
    if image.shape[0] != image.shape[1] or image.shape[0] < 16:
        raise ValueError(f"image {index}: an aligned face must be square and at least 16 px, got {list(image.shape)}")
    return image


def check_images(images: Sequence[object]) -> list[np.ndarray]:
    images = list(images)
    if not images:
        raise ValueError("no images given")
    return [check_image(im, i) for i, im in enumerate(images)]


def check_keys(key: KeyLike | Sequence[KeyLike], n: int) -> list[SecretKey]:
    """One key for all ``n`` images, or one per image."""
    if isinstance(key, (SecretKey, bytes, bytearray, str)):
        key = [key] * n
    keys = list(key)
    if len(keys) != n:
        raise ValueError(f"got {n} images but {len(keys)} keys (give one key, or one per image)")
    out = []
    for i, k in enumerate(keys):
        try:
            out.append(SecretKey.of(k))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"key {i}: {exc}") from None
    return out


def check_groups(groups: Sequence[int] | None, keys: list[SecretKey]) -> list[int]:
    """Each item's group (each alone when None); the items of one group must share their key."""
    n = len(keys)
    if groups is None:
        return list(range(n))
    groups = list(groups)
    if len(groups) != n:
        raise ValueError(f"got {n} images but {len(groups)} groups")
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        if not isinstance(g, (int, np.integer)) or isinstance(g, bool):
            raise ValueError(f"group {i}: must be an integer, got {type(g).__name__}")
        j = first.setdefault(int(g), i)
        if keys[j] != keys[i]:
            raise ValueError(f"items {j} and {i} share group {g} but not their key (a group is one person, one key)")
    return [int(g) for g in groups]

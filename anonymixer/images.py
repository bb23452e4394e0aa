"""Conversions between pictures and the networks' tensors, and before/after grids.

Every network in the project takes RGB in [-1, 1]; rendering clamps to [-1, 1] and maps linearly
to uint8 (no per-image min–max stretch, so brightness means the same thing in every picture).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB, with its EXIF orientation applied."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def center_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, 3, H, W] on the same device: clamp, then a linear map."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3] (:func:`quantize`, as a picture's array)."""
    return quantize(images).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(columns: Sequence[torch.Tensor], path: str | Path, tile: int = 256, pad: int = 4) -> Path:
    """One row per item, one column per tensor in ``columns`` (each [B, 3, h, w] in [-1, 1])."""
    rows = columns[0].shape[0]
    grid = Image.new("RGB", (len(columns) * (tile + pad) + pad, rows * (tile + pad) + pad), (255, 255, 255))
    for c, images in enumerate(columns):
        for r, arr in enumerate(to_uint8(images)):
            grid.paste(
                Image.fromarray(arr).resize((tile, tile), Image.BICUBIC),
                (pad + c * (tile + pad), pad + r * (tile + pad)),
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path

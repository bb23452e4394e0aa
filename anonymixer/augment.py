"""Augmented views for the one-photo case (DESIGN §5, "One photo only").

Each view: horizontal flip (p 0.5), rotation ±10°, colour jitter (brightness 0.15, contrast 0.15,
saturation 0.10, hue 0.03) and a crop of 85–100 % of the side resized back. The parameters come
from a keyed stream — HKDF over HMAC-SHA256(key, SHA-256 of the image) — so a request is
reproducible on any machine and no torch RNG is used. Colour operations are applied in a fixed
order (brightness, contrast, saturation, hue); hue is a rotation in YIQ space.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anonymixer.keys import SecretKey, hkdf_sha256, uniforms

AUGMENT_INFO = b"anonymixer/v1/augment"
UNIFORMS_PER_VIEW = 9
MAX_VIEWS = 8


@dataclass(frozen=True)
class ViewParams:
    flip: bool
    angle_deg: float
    brightness: float
    contrast: float
    saturation: float
    hue: float  # fraction of a full turn
    crop_scale: float
    crop_x: float  # crop centre offset in normalised units, |offset| ≤ 1 − scale
    crop_y: float


def image_digest(image: np.ndarray) -> bytes:
    return hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).digest()


def view_params(key: SecretKey, image: np.ndarray, count: int) -> list[ViewParams]:
    """Parameters of ``count`` views of ``image`` (uint8 HWC) under ``key``."""
    if not 0 <= count <= MAX_VIEWS:
        raise ValueError(f"views must be in [0, {MAX_VIEWS}], got {count}")
    seed = hmac.new(key.reveal(), image_digest(image), hashlib.sha256).digest()
    stream = hkdf_sha256(seed, b"", AUGMENT_INFO, 8 * UNIFORMS_PER_VIEW * max(count, 1))
    u = uniforms(stream)
    views = []
    for v in range(count):
        a = u[v * UNIFORMS_PER_VIEW : (v + 1) * UNIFORMS_PER_VIEW]
        scale = 0.85 + 0.15 * a[6]
        views.append(
            ViewParams(
                flip=a[0] < 0.5,
                angle_deg=(2 * a[1] - 1) * 10.0,
                brightness=1 + (2 * a[2] - 1) * 0.15,
                contrast=1 + (2 * a[3] - 1) * 0.15,
                saturation=1 + (2 * a[4] - 1) * 0.10,
                hue=(2 * a[5] - 1) * 0.03,
                crop_scale=scale,
                crop_x=(2 * a[7] - 1) * (1 - scale),
                crop_y=(2 * a[8] - 1) * (1 - scale),
            )
        )
    return views


_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GRAY = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def apply_view(image: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """One view of ``image`` [3, H, W] in [-1, 1] (same size, same range)."""
    t = math.radians(p.angle_deg)
    sx = -p.crop_scale if p.flip else p.crop_scale
    # output → input sampling: p_in = centre + scale · R(θ) · flip · p_out (normalised coordinates)
    theta = torch.tensor(
        [
            [math.cos(t) * sx, -math.sin(t) * p.crop_scale, p.crop_x],
            [math.sin(t) * sx, math.cos(t) * p.crop_scale, p.crop_y],
        ],
        dtype=image.dtype,
        device=image.device,
    )
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    x = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    x = (x + 1) * 0.5
    x = x * p.brightness
    gray = torch.einsum("c,chw->hw", _GRAY.to(x), x)
    x = (x - gray.mean()) * p.contrast + gray.mean()
    gray = torch.einsum("c,chw->hw", _GRAY.to(x), x)
    x = gray + (x - gray) * p.saturation
    a = 2 * math.pi * p.hue
    rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    x = torch.einsum("dc,chw->dhw", (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).to(x), x)
    return x.clamp(0, 1) * 2 - 1


def augmented_views(image: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
    """[V, 3, H, W]: the views of ``image`` [3, H, W] (empty when ``params`` is)."""
    if not params:
        return image.new_zeros((0, *image.shape))
    return torch.stack([apply_view(image, p) for p in params])

"""Paste protected faces back into the photo, and blur faces too small to protect (DESIGN §5).

A protected face lives in the aligned frame (``aligned_size`` px, the e4e template) at the
generator's resolution; the photo → aligned transform of its detection brings it back. It is
blended in through a soft ellipse defined in the aligned frame (:class:`FaceMask`), after a
per-channel colour shift that makes it agree with the photo along the mask's soft edge. Pixels
where the mask is zero are never written: they stay bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from anonymixer.alignment import apply, invert, map_pixels, reframe


@dataclass(frozen=True)
class FaceMask:
    """A feathered ellipse in the aligned frame, given for a 256 px frame (scaled to others).

    The defaults are measured (benchmarks/paste_back_mask.py, 30 photos of ../shared, another
    person's face pasted in): MobileFaceNet cosine of the result to the original person falls from
    0.34 (axes 84×104) to 0.19 at these axes, with no added edge on the soft rim (mean gradient
    −0.09/255); at 1.3× an edge appears (+0.22) and the ellipse leaves the frame. A feather of 0.1
    leaks less identity than 0.2 (0.19 vs 0.24) with no visible seam.
    """

    center: tuple[float, float] = (128.0, 131.0)
    axes: tuple[float, float] = (101.0, 125.0)  # semi-axes (x, y)
    feather: float = 0.1  # soft-edge width, a fraction of the radius: alpha falls 1 → 0 over it

    def reframed(self, framing: str) -> FaceMask:
        """This mask (measured on e4e-framed faces) moved onto faces aligned with ``framing``: the
        same part of the face, so the seam stays where it was measured. The two templates differ by
        a scale and a shift (no rotation), which carry an axis-aligned ellipse to another."""
        matrix = reframe(framing)
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        (cx, cy), *_ = apply(matrix, np.array([self.center]))
        return FaceMask((float(cx), float(cy)), (self.axes[0] * scale, self.axes[1] * scale), self.feather)

    def alpha(self, u: np.ndarray, v: np.ndarray, aligned_size: int) -> np.ndarray:
        """Mask values at aligned-frame coordinates (u, v): 1 inside, 0 outside, smooth between."""
        scale = aligned_size / 256
        cx, cy = ((c + 0.5) * scale - 0.5 for c in self.center)
        return soft_edge(np.hypot((u - cx) / (self.axes[0] * scale), (v - cy) / (self.axes[1] * scale)), self.feather)

    def bounds(self, aligned_size: int) -> np.ndarray:
        """The corners [4, 2] of the ellipse's bounding box in the aligned frame."""
        scale = aligned_size / 256
        cx, cy = ((c + 0.5) * scale - 0.5 for c in self.center)
        ax, ay = (a * scale for a in self.axes)
        return np.array([[cx - ax, cy - ay], [cx + ax, cy - ay], [cx - ax, cy + ay], [cx + ax, cy + ay]])


def soft_edge(radius: np.ndarray, feather: float) -> np.ndarray:
    """1 for an elliptic radius ≤ 1 − feather, 0 beyond 1, smoothstep between (no kink at either end)."""
    t = np.clip((1 - radius) / feather, 0, 1)
    return t * t * (3 - 2 * t)


def blend(region: np.ndarray, content: np.ndarray, alpha: np.ndarray) -> None:
    """region ← (1 − α)·region + α·content, written only where α > 0 (elsewhere bit-identical)."""
    inside = alpha > 0
    mixed = region[inside] * (1 - alpha[inside, None]) + content[inside] * alpha[inside, None]
    region[inside] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def footprint(corners: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """Integer pixel box (x0, y0, x1, y1), end-exclusive, holding ``corners``, clipped to the photo."""
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def mask_box(
    matrix: np.ndarray, mask: FaceMask, aligned_size: int, shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """The photo box a face's mask can touch (see :func:`footprint`); None when it misses the photo."""
    return footprint(apply(invert(matrix), mask.bounds(aligned_size)), shape)


def mask_region(
    matrix: np.ndarray, mask: FaceMask, aligned_size: int, shape: tuple[int, ...]
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The photo box a face's mask can touch, the aligned-frame coordinates [h, w, 2] of its
    pixels and the mask there [h, w]; None when the mask misses the photo."""
    box = mask_box(matrix, mask, aligned_size, shape)
    if box is None:
        return None
    uv = map_pixels(matrix, *box)
    return box, uv, mask.alpha(uv[..., 0], uv[..., 1], aligned_size)


STRIP_PIXELS = 1 << 18  # photo pixels pasted or blurred at a time: ~60 bytes of temporaries each


def strips(y0: int, y1: int, width: int) -> list[tuple[int, int]]:
    """Bands of rows [top, bottom) of [y0, y1) holding at most STRIP_PIXELS pixels of ``width`` (≥ 1 row)."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    return [(top, min(top + rows, y1)) for top in range(y0, y1, rows)]


def colour_shift(face: np.ndarray, original: np.ndarray, mask: FaceMask) -> np.ndarray:
    """Per-channel offset that makes ``face`` match ``original`` (the aligned input, any size) on
    the mask's soft edge, where the two meet in the photo. float32 [3]."""
    size = face.shape[0]
    orig = torch.from_numpy(np.ascontiguousarray(original)).permute(2, 0, 1)[None].float()
    orig = F.interpolate(orig, size=(size, size), mode="area")[0].permute(1, 2, 0).numpy()
    coords = (np.arange(size) + 0.5) * (256 / size) - 0.5
    alpha = mask.alpha(coords[None, :], coords[:, None], 256)
    band = alpha * (1 - alpha)  # weight peaks mid-edge, zero inside and outside
    if band.sum() <= 0:
        return np.zeros(3, np.float32)
    diff = (orig - face.astype(np.float32)) * band[:, :, None]
    return (diff.sum((0, 1)) / band.sum()).astype(np.float32)


def paste_face(
    photo: np.ndarray,
    face: np.ndarray,
    matrix: np.ndarray,
    aligned_size: int,
    mask: FaceMask,
    shift: np.ndarray | None = None,
) -> None:
    """Blend ``face`` (uint8 [R, R, 3], the aligned frame at any resolution) into ``photo`` (uint8
    [H, W, 3], changed in place) through ``matrix`` (photo → aligned frame of ``aligned_size``)."""
    box = mask_box(matrix, mask, aligned_size, photo.shape)
    if box is None:
        return
    x0, y0, x1, y1 = box
    src = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None].float()
    # Band by band: a face filling a 40 M pixel photo would need gigabytes of coordinates at once.
    for top, bottom in strips(y0, y1, x1 - x0):
        uv = map_pixels(matrix, x0, top, x1, bottom)
        alpha = mask.alpha(uv[..., 0], uv[..., 1], aligned_size)
        if not (alpha > 0).any():
            continue
        # The face image spans the aligned frame exactly, so its normalised coordinate is 2(u+½)/A − 1
        # whatever its resolution.
        grid = torch.from_numpy((2 * (uv + 0.5) / aligned_size - 1)[None]).float()
        sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = sampled[0].permute(1, 2, 0).numpy()
        if shift is not None:
            sampled = sampled + shift
        blend(photo[top:bottom, x0:x1], sampled, alpha)


def blur_face(photo: np.ndarray, box: np.ndarray, feather: float = 0.2, margin: float = 0.15) -> None:
    """Blur the face in detection ``box`` (x1, y1, x2, y2) in place, inside a feathered ellipse a
    ``margin`` larger than the box; the blur radius (a quarter of the face) leaves no identity."""
    x1, y1, x2, y2 = box[:4]
    w, h = (x2 - x1) * (1 + 2 * margin), (y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    corners = np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy + h / 2]])
    found = footprint(corners, photo.shape)
    if found is None:
        return
    x0, y0, x1_, y1_ = found
    radius = float(max(2.0, max(w, h) / 4))
    pad = int(np.ceil(radius))
    # Blur a window a little larger than the ellipse so its edge sees real neighbours, not padding.
    wx0, wy0 = max(x0 - pad, 0), max(y0 - pad, 0)
    window = Image.fromarray(photo[wy0 : min(y1_ + pad, photo.shape[0]), wx0 : min(x1_ + pad, photo.shape[1])])
    blurred = np.asarray(window.filter(ImageFilter.GaussianBlur(radius)))
    for top, bottom in strips(y0, y1_, x1_ - x0):
        ys, xs = np.mgrid[top:bottom, x0:x1_]
        alpha = soft_edge(np.hypot((xs - cx) / (w / 2), (ys - cy) / (h / 2)), feather)
        blend(photo[top:bottom, x0:x1_], blurred[top - wy0 : bottom - wy0, x0 - wx0 : x1_ - wx0], alpha)

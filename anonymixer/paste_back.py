"""Paste protected faces back into the photo, and blur faces too small to protect (DESIGN §5).

A protected face lives in the aligned frame (``aligned_size`` px, the framing's template) at the
generator's resolution; the photo → aligned transform of its detection brings it back. What is
pasted is the skin both faces share (:mod:`anonymixer.face_region`), never more than the outer
ellipse :class:`FaceMask`; the face is first made to agree with the photo there
(:mod:`anonymixer.blending`: colour over a ring of skin, then a smooth seam correction), and shrunk
to about the photo's scale before it is sampled. Pixels where the mask is zero are never written:
they stay bit-identical. The choices are measured by ``python -m benchmarks.paste_back_quality``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from anonymixer.alignment import apply, invert, map_pixels, reframe, warp_photo
from anonymixer.blending import (
    grain_strength,
    laplacian_blend,
    match_colour,
    matched_detail,
    pixel_noise,
    seam_correction,
    shading_plane,
)
from anonymixer.face_region import MASK_SIZE, dilate, erode, gaussian_blur, resized, shared_face


@dataclass(frozen=True)
class FaceMask:
    """A feathered ellipse in the aligned frame, given for a 256 px frame (scaled to others).

    The defaults were measured (by the former benchmarks/paste_back_mask.py, 30 photos of ../shared, another
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


STRIP_PIXELS = 1 << 18  # photo pixels pasted or blurred at a time: ~60 bytes of temporaries each


def strips(y0: int, y1: int, width: int) -> list[tuple[int, int]]:
    """Bands of rows [top, bottom) of [y0, y1) holding at most STRIP_PIXELS pixels of ``width`` (≥ 1 row)."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    return [(top, min(top + rows, y1)) for top in range(y0, y1, rows)]


SUPPORT = 3  # px of face_region.MASK_SIZE: how far past the shared region the multi-band blend may write
SUPPORT_SOFTNESS = 1.5  # px of face_region.MASK_SIZE: the σ of that write's soft edge
OVERSAMPLING = 2  # the pasted face is area-shrunk to this many of its pixels per photo pixel, then sampled


@dataclass(frozen=True)
class PasteBack:
    """How a protected face goes back into its photo (SceneConfig's ``mask``, ``colour_match``, ``blend``)."""

    bound: FaceMask  # the outer bound, in the faces' own framing: nothing outside it is written
    template: np.ndarray  # the framing's five landmarks on 256 px
    colour_match: bool
    blend: str  # one of BLENDS


BLENDS = ("membrane", "laplacian", "feather")


@dataclass(frozen=True)
class Grain:
    """Luminance noise added to the pasted face at each photo pixel (:func:`grain_strength`)."""

    std: float  # 0–255
    seed: int  # from the protected face's own pixels: two photos never share a grain pattern


def blended_face(
    photo: np.ndarray,
    original: np.ndarray,
    generated: np.ndarray,
    matrix: np.ndarray,
    aligned_size: int,
    how: PasteBack,
    turn: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, Grain]:
    """The generated face made to agree with the photo (float [3, R, R], 0–255), where it is
    pasted (float [S, S] in [0, 1], the aligned frame at any resolution S) and the grain it needs
    at the photo's pixels: ``original`` is the aligned input (uint8, any size), ``generated`` the
    protected face (uint8 [R, R, 3]), ``turn`` how far the photo's face is turned
    (:func:`~anonymixer.face_region.turn_of`)."""
    size = generated.shape[0]
    coords = (torch.arange(MASK_SIZE, dtype=torch.float64) + 0.5) * (aligned_size / MASK_SIZE) - 0.5
    soft_bound = torch.from_numpy(how.bound.alpha(coords[None, :].numpy(), coords[:, None].numpy(), aligned_size))
    # A cell in from the ellipse: the alpha is interpolated between cells and must stay inside it.
    bound = erode(soft_bound > 0, 1)
    original_small, generated_small = resized(original, MASK_SIZE), resized(generated, MASK_SIZE)
    region = shared_face(original_small, generated_small, how.template, bound, turn)
    face = torch.from_numpy(np.ascontiguousarray(generated)).permute(2, 0, 1).float()
    if how.colour_match:
        face = match_colour(face, generated_small, original_small, region.ring)
        face = face + shading_plane(resized(face.permute(1, 2, 0), MASK_SIZE), original_small, region.ring, size)
    scale = pixels_per_photo_pixel(matrix, size, aligned_size)
    if how.blend == "membrane":
        face = face + seam_correction(resized(face.permute(1, 2, 0), MASK_SIZE), original_small, region.ring, size)
        alpha = region.alpha
    elif how.blend == "laplacian":
        full = F.interpolate(region.alpha[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        behind = torch.from_numpy(warp_photo(photo, rescaled(matrix, size / aligned_size), size, size)).permute(2, 0, 1)
        levels = max(1, int(np.log2(size / 32)) + 1)  # down to a 32 px face: colour blends over the whole face
        face = laplacian_blend(matched_detail(face, behind.float(), full > 0.5, scale), behind.float(), full, levels)
        # Low bands spread a little past the shared region, but not past the photo's face: beyond
        # its contour the generated skin's colour would glow over the background.
        alpha = gaussian_blur(dilate(region.alpha > 0, SUPPORT).float(), SUPPORT_SOFTNESS) * (bound & region.contour)
    else:
        alpha = region.alpha
    seed = int.from_bytes(hashlib.blake2b(np.ascontiguousarray(generated).tobytes(), digest_size=8).digest(), "little")
    # A face shrunk to the photo keeps its own fine detail; grain is for one pasted at about its
    # own size or larger, where the generator has nothing finer to give.
    grained = how.colour_match and scale < OVERSAMPLING
    std = measured_grain(photo, face, alpha, matrix, aligned_size) if grained else 0.0
    return face, alpha, Grain(std, seed)


def pixels_per_photo_pixel(matrix: np.ndarray, size: int, aligned_size: int) -> float:
    """How many pixels of a ``size`` px image of the aligned frame one photo pixel spans."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2])))) * size / aligned_size


def rescaled(matrix: np.ndarray, scale: float) -> np.ndarray:
    """A photo → aligned transform for the aligned frame drawn ``scale`` times larger (pixel centres kept)."""
    return np.vstack([matrix[0] * scale, matrix[1] * scale]) + np.array([[0, 0, 0.5 * scale - 0.5]] * 2)


def photo_scale_face(face: torch.Tensor, matrix: np.ndarray, aligned_size: int) -> torch.Tensor:
    """``face`` shrunk to about the photo's scale: sampling a 1024 px face at 200 px aliases."""
    per_photo_pixel = pixels_per_photo_pixel(matrix, face.shape[-1], aligned_size)
    if per_photo_pixel <= OVERSAMPLING:
        return face
    side = int(np.ceil(face.shape[-1] * OVERSAMPLING / per_photo_pixel))
    return F.interpolate(face[None], size=(side, side), mode="area")[0]


def sampled_face(
    face: torch.Tensor, alpha: torch.Tensor, matrix: np.ndarray, aligned_size: int, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``face`` and ``alpha`` (the aligned frame, any resolutions) at the photo pixels of ``box``
    (x0, y0, x1, y1): float [h, w, 3] and the weight [h, w] in [0, 1] (0 outside the frame)."""
    x0, y0, x1, y1 = box
    uv = map_pixels(matrix, x0, y0, x1, y1)
    # Both images span the aligned frame exactly, so a normalised coordinate is 2(u+½)/A − 1
    # whatever their resolutions.
    grid = torch.from_numpy((2 * (uv + 0.5) / aligned_size - 1)[None]).float()
    weight = F.grid_sample(alpha[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = F.grid_sample(face[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0].permute(1, 2, 0).numpy(), weight[0, 0].clamp(0, 1).numpy()


GRAIN_WINDOW = 256  # photo px: the largest side of the window at the face's centre where the grain is measured


def measured_grain(
    photo: np.ndarray, face: torch.Tensor, alpha: torch.Tensor, matrix: np.ndarray, aligned_size: int
) -> float:
    """The grain (:func:`grain_strength`) the face needs, measured where it lands: a window at the
    face's centre, at most :data:`GRAIN_WINDOW` and half the face wide, in the photo's own pixels."""
    centre = apply(invert(matrix), np.array([[aligned_size / 2, aligned_size / 2]]))[0]
    half = min(GRAIN_WINDOW, aligned_size / np.sqrt(abs(np.linalg.det(matrix[:, :2]))) / 2) / 2
    box = footprint(np.array([centre - half, centre + half]), photo.shape)
    if box is None:
        return 0.0
    x0, y0, x1, y1 = box
    pasted, weight = sampled_face(photo_scale_face(face, matrix, aligned_size), alpha, matrix, aligned_size, box)
    window = torch.tensor(photo[y0:y1, x0:x1]).permute(2, 0, 1).float()  # a copy: photos may be read-only
    return grain_strength(torch.from_numpy(pasted).permute(2, 0, 1), window, torch.from_numpy(weight > 0.99))


def paste_face(
    photo: np.ndarray,
    face: torch.Tensor,
    alpha: torch.Tensor,
    matrix: np.ndarray,
    aligned_size: int,
    grain: Grain | None = None,
) -> None:
    """Blend ``face`` (float [3, R, R], the aligned frame at any resolution) into ``photo`` (uint8
    [H, W, 3], changed in place) through ``alpha`` (float [S, S], the aligned frame at any
    resolution) and ``matrix`` (photo → aligned frame of ``aligned_size``), with ``grain`` added at
    each photo pixel. Pixels where alpha is 0 are never written."""
    rows, cols = torch.nonzero(alpha > 0, as_tuple=True)
    if len(rows) == 0:
        return
    cell = aligned_size / alpha.shape[0]  # the aligned frame's pixels per alpha pixel
    corners = (
        np.array([[cols.min().item(), rows.min().item()], [cols.max().item() + 1, rows.max().item() + 1]], np.float64)
        * cell
        - 0.5
    )
    corners = np.array([corners[0], [corners[1, 0], corners[0, 1]], [corners[0, 0], corners[1, 1]], corners[1]])
    box = footprint(apply(invert(matrix), corners), photo.shape)
    if box is None:
        return
    x0, y0, x1, y1 = box
    face = photo_scale_face(face, matrix, aligned_size)
    # Band by band: a face filling a 40 M pixel photo would need gigabytes of coordinates at once.
    for top, bottom in strips(y0, y1, x1 - x0):
        content, weight = sampled_face(face, alpha, matrix, aligned_size, (x0, top, x1, bottom))
        if not (weight > 0).any():
            continue
        if grain is not None and grain.std > 0:
            rows_, cols_ = np.mgrid[top:bottom, x0:x1]
            content = content + grain.std * pixel_noise(grain.seed, rows_, cols_)[..., None]
        blend(photo[top:bottom, x0:x1], content, weight)


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

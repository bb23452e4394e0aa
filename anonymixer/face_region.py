"""Where a protected face may be pasted: the skin both faces share, in the aligned frame (DESIGN §5).

The generated face and the photo's face agree in pose but not in outline: the generator draws its
own hair, ears and background around a face of its own width. Pasting a fixed ellipse brings
generated background into the photo wherever the ellipse leaves the real face. Here each face's
skin is found from its own colours — the chroma of its cheeks, which the five-point alignment puts
at known places — holes (eyes, brows, lips, glasses) are filled, and the region pasted is what both
faces share, eroded away from the boundary, inside the paste-back ellipse (the outer bound) and
always covering the inner face (eyes to mouth, where identity lives).

Everything here works on a small copy of the aligned frame (:data:`MASK_SIZE` px): the outline of
a face needs no more, and it keeps scene mode's cost independent of the photo's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MASK_SIZE = 128  # the mask's working frame (px); the aligned frame's template is given on 256


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) of sRGB values in 0–255, channels first [3, ...]."""
    c = rgb / 255
    linear = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = torch.einsum("ij,j...->i...", to_xyz, linear) / torch.tensor([0.95047, 1.0, 1.08883]).view(
        3, *[1] * (c.dim() - 1)
    )
    f = torch.where(xyz > (6 / 29) ** 3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """sRGB (0–255, unclipped) of CIE L*a*b* (D65) values [3, ...]: the inverse of :func:`rgb_to_lab`."""
    fy = (lab[0] + 16) / 116
    f = torch.stack([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = torch.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    xyz = xyz * torch.tensor([0.95047, 1.0, 1.08883]).view(3, *[1] * (lab.dim() - 1))
    to_rgb = torch.tensor(
        [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]]
    )
    linear = torch.einsum("ij,j...->i...", to_rgb, xyz)
    c = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return c * 255


def resized(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """An HWC image (uint8 or float, any size) as float [3, size, size], area-averaged when shrunk."""
    x = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    mode = "area" if x.shape[-1] >= size else "bilinear"
    return F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))[0]


def dilate(mask: torch.Tensor, radius: int, outside: bool = False) -> torch.Tensor:
    """Binary dilation of a bool [H, W] mask by a square of side 2·radius + 1; beyond the frame
    the mask reads ``outside``."""
    if radius <= 0:
        return mask
    padded = F.pad(mask[None, None].float(), (radius,) * 4, value=float(outside))
    return F.max_pool2d(padded, 2 * radius + 1, 1)[0, 0] > 0


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion; what lies beyond the frame is not mask, so the frame's edge erodes too."""
    return ~dilate(~mask, radius, outside=True)


def grow(seed: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """The pixels of ``within`` connected (8-neighbours) to ``seed``: geodesic dilation to stability."""
    region = seed & within
    while True:
        grown = dilate(region, 1) & within
        if torch.equal(grown, region):
            return region
        region = grown


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with every hole filled: all that the frame's border cannot reach around it."""
    border = torch.zeros_like(mask)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return ~grow(border, ~mask)


def spans(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with each row and each column filled between its first and last pixel, the two
    intersected: a hull that follows a face's contour without the concave bays of its skin."""

    def filled(dim: int) -> torch.Tensor:
        ahead = mask.int().cumsum(dim) > 0
        behind = mask.flip(dim).int().cumsum(dim).flip(dim) > 0
        return ahead & behind

    return filled(0) & filled(1)


def ellipse(size: int, centre: tuple[float, float], axes: tuple[float, float]) -> torch.Tensor:
    """Pixels of a size² frame inside an axis-aligned ellipse (centre and semi-axes in its pixels)."""
    v, u = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return ((u - centre[0]) / axes[0]) ** 2 + ((v - centre[1]) / axes[1]) ** 2 <= 1


@dataclass(frozen=True)
class FaceGeometry:
    """The five template landmarks of a framing, in :data:`MASK_SIZE` pixels, and what follows from them."""

    landmarks: np.ndarray  # [5, 2]: eyes, nose, mouth corners

    @classmethod
    def of(cls, template_256: np.ndarray) -> FaceGeometry:
        return cls((np.asarray(template_256, np.float64) + 0.5) * (MASK_SIZE / 256) - 0.5)

    @property
    def eye_distance(self) -> float:
        return float(self.landmarks[1, 0] - self.landmarks[0, 0])

    @property
    def eye_to_mouth(self) -> float:
        return float(self.landmarks[3:, 1].mean() - self.landmarks[:2, 1].mean())

    def cheeks(self) -> torch.Tensor:
        """Below each eye, beside the nose: skin on nearly every face (no brows, beard or shadow)."""
        mask = torch.zeros(MASK_SIZE, MASK_SIZE, dtype=torch.bool)
        eye_y, d, iod = self.landmarks[:2, 1].mean(), self.eye_to_mouth, self.eye_distance
        top, bottom = round(eye_y + 0.35 * d), round(eye_y + 0.65 * d)
        for x, outward in ((self.landmarks[0, 0], -1), (self.landmarks[1, 0], 1)):
            a, b = sorted((round(x - outward * 0.15 * iod), round(x + outward * 0.2 * iod)))
            mask[top : bottom + 1, a : b + 1] = True
        return mask

    def features(self, turn: float = 0.0) -> torch.Tensor:
        """About each landmark, what is face whatever the skin's colour: a disc; on a face turned by
        ``turn`` (:func:`turn_of`) at least :data:`TURN`, cut short on the far side, whose contour
        lies just past the far eye and mouth corner."""
        radius = FEATURE_RADIUS * self.eye_distance
        discs = [ellipse(MASK_SIZE, (float(x), float(y)), (radius, radius)) for x, y in self.landmarks]
        if abs(turn) >= TURN:
            u = torch.arange(MASK_SIZE, dtype=torch.float32)[None, :]
            for i, reach in zip((1, 4) if turn > 0 else (0, 3), FAR_REACH, strict=True):
                edge = float(self.landmarks[i, 0]) + np.sign(turn) * reach * self.eye_distance
                discs[i] &= u <= edge if turn > 0 else u >= edge
        return torch.stack(discs).any(0)

    def inner_face(self) -> torch.Tensor:
        """Brows to below the mouth, eye corner to eye corner: where identity lives."""
        eye_y, mouth_y = self.landmarks[:2, 1].mean(), self.landmarks[3:, 1].mean()
        d = mouth_y - eye_y
        centre = (float(self.landmarks[:2, 0].mean()), float((eye_y + mouth_y) / 2))
        return ellipse(MASK_SIZE, centre, (INNER_WIDTH * self.eye_distance, INNER_HEIGHT * d))

    def nose(self) -> torch.Tensor:
        seed = torch.zeros(MASK_SIZE, MASK_SIZE, dtype=torch.bool)
        x, y = np.round(self.landmarks[2]).astype(int)
        seed[y, x] = True
        return seed


FEATURE_RADIUS = 0.4  # × the eye distance: an eye's corners lie within 0.3 of its centre
# A face whose nose lies this many eye distances beside the eyes' midpoint is turned (the 30
# photos of the paste-back benchmark: |turn| ≤ 0.11 but one, 0.13; the demo's couple 0.13, 0.18) …
TURN = 0.12
FAR_REACH = (0.25, 0.0)  # … and its far eye's and mouth corner's discs reach this far outward (× the eye distance)
INNER_WIDTH, INNER_HEIGHT = 0.95, 0.95  # the inner face's semi-axes: × the eye distance, × eyes-to-mouth
SKIN_CHROMA = 3.5  # a skin pixel's a*b* lies within this many (robust) spreads of the cheeks'
CHROMA_SPREAD = 3.0  # the least spread (a*b* units): even a flat-lit face's skin varies this much
SHADOW, HIGHLIGHT = 40.0, 30.0  # L* below / above the cheeks' median still counted as skin


def skin(lab: torch.Tensor, geometry: FaceGeometry) -> torch.Tensor:
    """Pixels [H, W] whose colour is the cheeks': chroma near theirs, lightness from shadow to highlight."""
    cheeks = lab[:, geometry.cheeks()]
    median = cheeks.median(1).values
    spread = (1.4826 * (cheeks - median[:, None]).abs().median(1).values).clamp_min(CHROMA_SPREAD)
    chroma = torch.hypot((lab[1] - median[1]) / spread[1], (lab[2] - median[2]) / spread[2])
    return (chroma <= SKIN_CHROMA) & (lab[0] >= median[0] - SHADOW) & (lab[0] <= median[0] + HIGHLIGHT)


def face_of(lab: torch.Tensor, geometry: FaceGeometry, bound: torch.Tensor) -> torch.Tensor:
    """One face's region: its skin inside ``bound``, gaps closed, holes filled, the part holding the nose."""
    region = skin(lab, geometry) & bound
    region = fill_holes(erode(dilate(region, 3), 3)) & bound
    region = dilate(erode(region, 2), 2)  # cut thin bridges to hair or background
    return grow(geometry.nose(), region | geometry.nose())


@dataclass(frozen=True)
class SharedFace:
    """The paste-back region of one face in the :data:`MASK_SIZE` frame."""

    alpha: torch.Tensor  # float [H, W] in [0, 1]: 1 where the generated face is pasted, soft at the edge
    ring: torch.Tensor  # bool [H, W]: the skin just inside the edge, where the two faces must agree
    contour: torch.Tensor  # bool [H, W]: the photo's own face, as far as it can tell; nothing is pasted past it


ERODE = 2  # px of MASK_SIZE (≈ 3 % of a face's width) kept off the shared region's edge
FEATHER = 3.5  # px of MASK_SIZE: the Gaussian σ of the alpha's soft edge (1.5, 2.5, 3.5 measured: docs/scene-mode.md)
RING = 5  # px of MASK_SIZE: the width of the band the colours are matched on


def turn_of(landmarks: np.ndarray) -> float:
    """How far a face is turned: its nose's offset from the eyes' midpoint, across, in eye
    distances (five landmarks [5, 2]: eyes, nose, mouth corners; positive: towards +x)."""
    eyes = landmarks[:2].mean(0)
    return float((landmarks[2, 0] - eyes[0]) / max(float(np.linalg.norm(landmarks[1] - landmarks[0])), 1e-6))


def shared_face(
    original_small: torch.Tensor,
    generated_small: torch.Tensor,
    template_256: np.ndarray,
    bound: torch.Tensor,
    turn: float = 0.0,
) -> SharedFace:
    """Where the generated face replaces the original (both aligned, as :func:`resized` copies [3,
    MASK_SIZE, MASK_SIZE]): the skin both faces share inside ``bound`` (bool [MASK_SIZE, MASK_SIZE],
    the outer ellipse), plus the inner face, within the photo's contour; ``turn``: the photo's
    face's (:func:`turn_of`)."""
    geometry = FaceGeometry.of(template_256)
    faces = [face_of(rgb_to_lab(small), geometry, bound) for small in (original_small, generated_small)]
    # Eyes, brows, nose and mouth are replaced where either face is (make-up, glasses, a beard):
    # identity lives there (benchmarks/paste_back_quality.py: without it the composites' MobileFaceNet
    # score rose to the match threshold), but not past the photo's contour: a three-quarter view's
    # far cheek would lay generated skin over the background. The contour holds the landmarks'
    # surroundings whatever their colour (bounded by the skin alone, shadowed or bearded sides were
    # cut, and MobileFaceNet recognised 4 composites in 30).
    contour = spans(faces[0] | geometry.features(turn))
    inner = geometry.inner_face() & bound & (faces[0] | faces[1]) & contour
    shared = (faces[0] & faces[1]) | inner
    hard = erode(faces[0] & faces[1], ERODE) | inner
    alpha = gaussian_blur(hard.float(), FEATHER) * shared
    edge = hard & ~erode(hard, RING)
    ring = edge & faces[0] & faces[1]  # skin on both sides: what the colours are matched on
    return SharedFace(alpha.clamp(0, 1), ring if ring.sum() >= 20 else edge, contour)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of :func:`gaussian_blur` (3σ each side)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [H, W] or [C, H, W] tensor, edges replicated."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    flat = image.reshape(-1, 1, *image.shape[-2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(image.shape)

"""Five-point face alignment (DESIGN §5): a least-squares similarity transform onto a template.

Landmarks are (x, y) in pixel coordinates with pixel centres at integers (the convention of
OpenCV's ``warpAffine`` and of the templates below), ordered left eye, right eye, nose, left and
right mouth corner. A transform is a float64 [2, 3] matrix mapping photo → aligned coordinates;
:func:`invert` gives the way back, which paste-back uses.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The released FaceAnonyMixer code's 5-point template on 256 px: eyes 109 px apart, ~1.7× tighter
# than FFHQ's framing.
E4E_TEMPLATE_256 = np.array(
    [[73.5318, 90.3065], [182.4682, 90.3065], [128.0, 152.9873], [85.5172, 202.5765], [170.4828, 202.5765]]
)
# FFHQ's framing as 5 points on 256 px: the mean MTCNN landmarks of 64 faces MobileStyleGAN-FFHQ
# draws (benchmarks/results/2026-12-01-cpu-2core/framing_mobile1024.json, eyes 64.5 px apart),
# made left-right symmetric about the eyes' midpoint. FFHQ generators reconstruct photos aligned
# this way far better than with the e4e template (README, "Framing").
FFHQ_TEMPLATE_256 = np.array([[96.2, 120.3], [160.7, 120.3], [128.5, 159.7], [97.9, 186.8], [159.2, 186.8]])
# A bundle's "framing" names the template its generator side is aligned to.
FRAMINGS = {"e4e": E4E_TEMPLATE_256, "ffhq": FFHQ_TEMPLATE_256}
# What new bundles are written with (an FFHQ generator reconstructs FFHQ-framed faces far better:
# docs/bundles.md, "Framing and inversion").
NEW_BUNDLE_FRAMING = "ffhq"
# The released code's framing: the frame the paste-back mask is measured in (anonymixer.scene), and
# what a bundle.json without a "framing" field was served with (bundles written before the choice).
E4E_FRAMING = "e4e"
# The standard ArcFace/InsightFace 112×112 template (face recognition on photos).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The rotation + uniform scale + translation (no reflection) that maps ``src`` [N, 2] onto
    ``dst`` [N, 2] with the least squared error; [2, 3] float64."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need ≥ 2 matching (x, y) points, got {src.shape} and {dst.shape}")
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # x' = a·x − b·y + tx ;  y' = b·x + a·y + ty
    system = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(system, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def framing_template(framing: str) -> np.ndarray:
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {sorted(FRAMINGS)}, got {framing!r}")
    return FRAMINGS[framing]


def reframe(framing: str) -> np.ndarray:
    """The transform from the e4e frame to ``framing``'s frame (256 px): what moves a shape defined
    on e4e-aligned faces (the paste-back mask) onto faces aligned with ``framing``."""
    return similarity_transform(E4E_TEMPLATE_256, framing_template(framing))


def invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Transform (x, y) points [N, 2]."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def map_pixels(matrix: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Where ``matrix`` sends the centre of every pixel of the box [x0, x1) × [y0, y1): [h, w, 2] (x, y)."""
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    return apply(matrix, np.stack([xs.ravel(), ys.ravel()], 1)).reshape(y1 - y0, x1 - x0, 2)


def template_transform(landmarks: np.ndarray, template: np.ndarray, size: int, template_size: int) -> np.ndarray:
    """Photo → aligned transform for a crop of ``size`` px, the template given at ``template_size``."""
    scale = size / template_size
    # Pixel centres sit at integers, so scaling a template keeps the crop's centre fixed.
    return similarity_transform(landmarks, (np.asarray(template) + 0.5) * scale - 0.5)


def sample_grid(matrix: np.ndarray, out_h: int, out_w: int, in_h: int, in_w: int) -> torch.Tensor:
    """The ``grid_sample`` grid [1, out_h, out_w, 2] that reads, for each output pixel, the input
    pixel ``matrix`` maps it to (``align_corners=False`` normalisation)."""
    norm = (2 * map_pixels(matrix, 0, 0, out_w, out_h) + 1) / np.array([in_w, in_h]) - 1
    return torch.from_numpy(norm[None]).float()


def warp(image: torch.Tensor, matrix: np.ndarray, out_h: int, out_w: int, padding: str = "reflection") -> torch.Tensor:
    """Resample ``image`` [C, H, W] (float) so output pixel p shows input pixel ``invert(matrix)·p``:
    ``matrix`` maps input → output coordinates, as in ``cv2.warpAffine``. Bilinear."""
    grid = sample_grid(invert(matrix), out_h, out_w, image.shape[1], image.shape[2]).to(image.device)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)[0]


def reflect(x: np.ndarray, size: int) -> np.ndarray:
    """Source coordinates as ``grid_sample``'s reflection padding reads them (``align_corners=False``):
    mirrored about the outer pixel edges −½ and ``size`` − ½, then clipped to the pixel centres."""
    distance = np.abs(x + 0.5)
    extra = np.mod(distance, size)
    x = np.where(np.floor(distance / size) % 2 == 0, extra - 0.5, size - extra - 0.5)
    return np.clip(x, 0, size - 1)


def warp_photo(photo: np.ndarray, matrix: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """:func:`warp` of a uint8 photo [H, W, C] with reflection padding, float [out_h, out_w, C]:
    each output pixel reads the four photo pixels around its source, so the photo is never turned
    into floats (a 40 M pixel one would be 480 MB)."""
    h, w = photo.shape[:2]
    source = map_pixels(invert(matrix), 0, 0, out_w, out_h)
    x, y = reflect(source[..., 0], w), reflect(source[..., 1], h)
    left, top = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    # A source on the last column or row has weight 0 on its clipped neighbour.
    right, bottom = np.minimum(left + 1, w - 1), np.minimum(top + 1, h - 1)
    fx, fy = (x - left)[..., None], (y - top)[..., None]
    upper = photo[top, left] * (1 - fx) + photo[top, right] * fx
    lower = photo[bottom, left] * (1 - fx) + photo[bottom, right] * fx
    return upper * (1 - fy) + lower * fy


def align(
    photo: torch.Tensor, landmarks: np.ndarray, template: np.ndarray, size: int, template_size: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Aligned crop [C, size, size] of ``photo`` [C, H, W] and its photo → crop transform. The
    border is reflected (DESIGN §5), so faces at the photo's edge still fill the crop."""
    matrix = template_transform(landmarks, template, size, template_size)
    return warp(photo, matrix, size, size), matrix


def arcface_crop(photo: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """The 112 px face-recognition crop [C, 112, 112] of ``photo`` [C, H, W] (ArcFace template)."""
    return align(photo, np.asarray(landmarks).reshape(5, 2), ARCFACE_TEMPLATE_112, 112, 112)[0]

"""Make a generated face agree with the photo it is pasted into (DESIGN §5): colour, then the seam.

1. :func:`match_colour`: the generated face's L*a*b* mean and spread over the ring of skin just
   inside the paste-back edge become the photo's over the same ring (a global tone and contrast);
   :func:`shading_plane` then takes a plane through what still differs there (light from one side).
2. :func:`seam_correction`: what still differs on that ring (one side lit, a flush on one cheek) is
   spread over the face as a smooth membrane (push-pull interpolation, a fast stand-in for a Poisson
   solve), so at the edge the generated face has the photo's colour and inside it keeps its own
   detail. The correction is smooth by construction: it carries the photo's low-frequency shading,
   not its features.
3. :func:`laplacian_blend`: multi-band blending, the alternative the benchmark compares with.

All images are float RGB tensors in 0–255, channels first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from anonymixer.face_region import gaussian_blur, gaussian_kernel, lab_to_rgb, rgb_to_lab

CONTRAST_LIMITS = (0.5, 2.0)  # the generated face's L*a*b* spread is scaled by at most this much
DETAIL_LIMIT = 2.5  # the generated face's fine detail is amplified by at most this much
DETAIL_SIGMA = 1.5  # photo px: the fine detail is what a blur of this σ removes
GRAIN_LIMIT = 12.0  # the grain's largest standard deviation (0–255): a noisy photo is not matched with snow
SEAM_CELL = 4  # px of the small copy (3 % of the frame): the seam correction's finest detail
SEAM_LIMIT = 40.0  # the seam correction's largest value per channel (0–255): a wrong ring must not paint


def ring_statistics(image: torch.Tensor, ring: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation [3] of ``image``'s L*a*b* over the ``ring`` pixels."""
    lab = rgb_to_lab(image)[:, ring]
    return lab.mean(1), lab.std(1).clamp_min(1e-3)


def match_colour(
    generated: torch.Tensor, generated_small: torch.Tensor, original_small: torch.Tensor, ring: torch.Tensor
) -> torch.Tensor:
    """``generated`` [3, R, R] with its colours moved so that, over ``ring`` (on the small copies,
    [3, S, S]), their L*a*b* mean and spread are the original's."""
    (mean_g, std_g), (mean_o, std_o) = ring_statistics(generated_small, ring), ring_statistics(original_small, ring)
    gain = (std_o / std_g).clamp(*CONTRAST_LIMITS)[:, None, None]
    lab = (rgb_to_lab(generated) - mean_g[:, None, None]) * gain + mean_o[:, None, None]
    return lab_to_rgb(lab)


def push_pull(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A smooth [C, H, W] field equal to ``values`` where ``known`` (bool [H, W]) and interpolated
    elsewhere: averaged down a pyramid to one pixel, then filled back up from the coarser levels
    wherever a level knows too little (H = W, a power of two)."""
    weight = known.float()[None]
    levels = [(values * weight, weight)]
    while levels[-1][1].shape[-1] > 1:
        total, weight = levels[-1]
        levels.append((F.avg_pool2d(total[None], 2)[0], F.avg_pool2d(weight[None], 2)[0]))
    total, weight = levels[-1]
    filled = total / weight.clamp_min(1e-8)
    for total, weight in reversed(levels[:-1]):
        coarse = F.interpolate(filled[None], size=total.shape[-2:], mode="bilinear", align_corners=False)[0]
        trust = weight.clamp(max=1)
        filled = total / weight.clamp_min(1e-8) * trust + coarse * (1 - trust)
    return filled


def seam_correction(
    corrected_small: torch.Tensor, original_small: torch.Tensor, ring: torch.Tensor, size: int
) -> torch.Tensor:
    """The smooth field [3, size, size] that, added to the colour-matched face, makes it the
    original's colour on ``ring`` (both small copies [3, S, S]). The ring's differences are averaged
    over cells of :data:`SEAM_CELL` px first: the field follows shading, not the two faces' texture."""
    known = ring.float()[None]
    total = F.avg_pool2d(((original_small - corrected_small) * known)[None], SEAM_CELL)[0]
    weight = F.avg_pool2d(known[None], SEAM_CELL)[0]
    field = push_pull(total / weight.clamp_min(1e-8), weight[0] > 0).clamp(-SEAM_LIMIT, SEAM_LIMIT)
    return F.interpolate(field[None], size=(size, size), mode="bicubic", align_corners=False)[0]


def gaussian_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    pyramid = [image]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1][None], 2)[0])
    return pyramid


def upsampled(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(image[None], size=like.shape[-2:], mode="bilinear", align_corners=False)[0]


def laplacian_blend(
    foreground: torch.Tensor, background: torch.Tensor, alpha: torch.Tensor, levels: int
) -> torch.Tensor:
    """Multi-band blend of two [C, H, W] images through ``alpha`` [H, W]: each frequency band mixed
    with the mask blurred to its scale, so coarse colour blends wide and fine detail blends narrow."""
    masks = gaussian_pyramid(alpha[None], levels)
    fg, bg = gaussian_pyramid(foreground, levels), gaussian_pyramid(background, levels)
    out = fg[-1] * masks[-1] + bg[-1] * (1 - masks[-1])
    for level in range(levels - 2, -1, -1):
        band_fg = fg[level] - upsampled(fg[level + 1], fg[level])
        band_bg = bg[level] - upsampled(bg[level + 1], bg[level])
        out = upsampled(out, fg[level]) + band_fg * masks[level] + band_bg * (1 - masks[level])
    return out


def fine_energy(image: torch.Tensor, where: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean |image − blur(image)| over ``where`` (bool [H, W]): how much fine texture there is."""
    return (image - gaussian_blur(image, sigma)).abs().mean(0)[where].mean()


def matched_detail(face: torch.Tensor, behind: torch.Tensor, where: torch.Tensor, scale: float) -> torch.Tensor:
    """``face`` [3, R, R] with its own fine detail amplified (unsharp mask) until, seen at the photo's
    scale (``scale`` face px per photo px), it has as much as the photo ``behind`` [3, R, R] over
    ``where`` [R, R]. Generators draw smoother skin than cameras record; the photo's own texture is
    never copied in (it would carry its features)."""
    side = max(16, round(face.shape[-1] / max(scale, 1.0)))
    small = [F.interpolate(x[None], size=(side, side), mode="area")[0] for x in (face, behind)]
    inside = F.interpolate(where[None, None].float(), size=(side, side), mode="area")[0, 0] > 0.9
    if inside.sum() < 16:
        return face
    gain = fine_energy(small[1], inside, DETAIL_SIGMA) / fine_energy(small[0], inside, DETAIL_SIGMA).clamp_min(1e-3)
    gain = float(gain.clamp(1.0, DETAIL_LIMIT))
    if gain == 1.0:
        return face
    return face + (gain - 1) * (face - gaussian_blur(face, DETAIL_SIGMA * max(scale, 1.0)))


def noise_level(image: torch.Tensor, where: torch.Tensor) -> float:
    """The standard deviation of white noise in the luminance (mean of the channels) of ``image``
    [3, h, w] over ``where`` [h, w], from the median of its fine residual (what a blur of σ
    :data:`DETAIL_SIGMA` removes): the median sees the noise of the many smooth pixels, not the
    few edges of eyes and mouth, whose energy differs between any two faces."""
    kernel = gaussian_kernel(DETAIL_SIGMA).double()
    centre, power = kernel[len(kernel) // 2] ** 2, (kernel**2).sum() ** 2
    unit = 0.6745 * float(torch.sqrt(1 - 2 * centre + power))  # the median |residual| of unit noise
    luminance = image.mean(0)
    return float((luminance - gaussian_blur(luminance, DETAIL_SIGMA)).abs()[where].median()) / unit


def grain_strength(pasted: torch.Tensor, photo: torch.Tensor, where: torch.Tensor) -> float:
    """The standard deviation (0–255) of the grain that, added to the luminance of each pixel of
    ``pasted`` (the face as sampled into the photo, [3, h, w]), gives it the noise of ``photo``
    (the same pixels) over ``where`` [h, w]: a camera's noise, which a generator does not draw and
    the resampling smooths. Independent noises add in quadrature."""
    if where.sum() < 16:
        return 0.0
    want, have = noise_level(photo, where), noise_level(pasted, where)
    return min(float(np.sqrt(max(want**2 - have**2, 0.0))), GRAIN_LIMIT)


def pixel_noise(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Standard normal noise (float32, the shape of ``rows``/``cols``) that is a function of each
    pixel's coordinates and ``seed`` alone: a photo pasted in bands gets the same grain as in one
    pass. A counter-based generator (splitmix64's mixer, then Box–Muller)."""

    def mixed(z: np.ndarray) -> np.ndarray:
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    counter = (rows.astype(np.uint64) << np.uint64(32)) | cols.astype(np.uint64)
    bits = mixed(counter ^ mixed(np.full_like(counter, seed & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15)))
    u1 = ((bits >> np.uint64(40)).astype(np.float64) + 0.5) / 2**24
    u2 = ((bits & np.uint64(0xFFFFFF)).astype(np.float64) + 0.5) / 2**24
    return (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def shading_plane(
    corrected_small: torch.Tensor, original_small: torch.Tensor, ring: torch.Tensor, size: int
) -> torch.Tensor:
    """The best plane a + b·u + c·v per channel [3, size, size] through what still differs on
    ``ring`` between the colour-matched face and the photo (small copies [3, S, S]): light that
    falls from one side. Three numbers a channel cannot carry a face's features (a quadric, six,
    already let MobileFaceNet recognise one composite in 30: docs/scene-mode.md)."""

    def unit(i: torch.Tensor, n: int) -> torch.Tensor:
        return (i.float() + 0.5) / n * 2 - 1

    rows, cols = torch.nonzero(ring, as_tuple=True)
    side = ring.shape[-1]
    basis = torch.stack([torch.ones(len(rows)), unit(cols, side), unit(rows, side)], 1)
    difference = (original_small - corrected_small)[:, rows, cols].T  # [n, 3]
    a, b, c = torch.linalg.lstsq(basis, difference).solution[:, :, None, None]  # each [3, 1, 1]
    grid = unit(torch.arange(size), size)
    return (a + b * grid[None, None, :] + c * grid[None, :, None]).clamp(-SEAM_LIMIT, SEAM_LIMIT)

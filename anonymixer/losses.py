"""The three refinement losses (DESIGN §5), per item so that a batch is a sum of independent problems.

* anonymity ``|cos(e(y), e(x)) − m|`` — far from the original identity;
* identity consistency — the mean pairwise L2 distance of embeddings within a group (all photos
  of one person under one key should become one new identity), summed over groups;
* attribute preservation — pluggable (:data:`ATTRIBUTE_LOSSES`).

Both images are RGB in [-1, 1]; ``x`` is the aligned original at :data:`ALIGNED_SIZE`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from anonymixer.networks.e4e import Encoder4Editing

ALIGNED_SIZE = 256  # the e4e/pSp alignment: originals arrive at this size
FR_CROP_ROWS = (35, 223)  # the pSp/e4e convention for FR on a 256 px generated face
FR_CROP_COLS = (32, 220)
FR_SIZE = 112


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize: area averaging when shrinking (exact for integer factors), bilinear when growing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] > size and images.shape[-1] % size == 0 and images.shape[-2] % size == 0:
        # the same block means as adaptive_avg_pool2d, as a reshape and a mean, which torch.compile
        # fuses (forward and backward) where the pooling's backward is a call of its own
        n, c, h, w = images.shape
        return images.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def fr_crop(images: torch.Tensor) -> torch.Tensor:
    """Generated (or 256-aligned) faces → the 112 px FR input: resize 256, crop 35:223 × 32:220, pool."""
    x = resize(images, ALIGNED_SIZE)
    x = x[:, :, FR_CROP_ROWS[0] : FR_CROP_ROWS[1], FR_CROP_COLS[0] : FR_CROP_COLS[1]]
    return F.adaptive_avg_pool2d(x, FR_SIZE)


def anonymity_loss(e_y: torch.Tensor, e_x: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Per item ``|cos(e(y), e(x)) − m|`` for L2-normalised embeddings [B, D]."""
    return ((e_y * e_x).sum(dim=1) - margin).abs()


def group_templates(e: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """[B, E]: the L2-normalised mean of the FR embeddings ``e`` [B, E] over each item's group:
    one template for every photo of a person in a call."""
    same = (groups[:, None] == groups[None, :]).to(e.dtype)
    return F.normalize(same @ e, dim=1)


def group_consistency_loss(e_y: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Σ over groups of the mean ‖e_i − e_j‖₂ over the pairs i < j of the group (a scalar).

    Segment-wise through a [B, B] pair mask: no loop over items. Groups of one contribute zero,
    so items in different groups stay independent problems.
    """
    b = e_y.shape[0]
    same = groups[:, None] == groups[None, :]
    # no early return when there are no pairs: the sum below is then 0, and a data-dependent
    # branch would split a compiled step in two
    pairs = same & torch.ones(b, b, dtype=torch.bool, device=e_y.device).triu(1)
    sq = (e_y[:, None, :] - e_y[None, :, :]).pow(2).sum(-1)
    # clamp keeps the gradient finite where two embeddings coincide (views start from one mix)
    dist = sq.clamp_min(1e-12).sqrt()
    size = same.sum(dim=1).to(e_y.dtype)  # group size of item i
    weight = 2.0 / (size * (size - 1)).clamp_min(1.0)  # 1 / (number of pairs in i's group)
    return (dist * weight[:, None] * pairs).sum()


class AttributeLoss(Protocol):
    """Attribute preservation: ``targets`` once per batch (no gradient), then a per-item loss."""

    def targets(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def __call__(self, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor: ...


class E4EFeatureLoss(nn.Module):
    """Default attribute loss, no extra weights: L1 over the e4e encoder's three feature maps
    (1/4, 1/8, 1/16 of its input) plus a low-resolution pixel L1 (colour, light, background)."""

    def __init__(self, encoder: Encoder4Editing, pixel_size: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.pixel_size = min(pixel_size, encoder.input_size)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [*self.encoder.features(resize(images, self.encoder.input_size)), resize(images, self.pixel_size)]

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._features(x)

    def forward(self, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        return sum((f - t).abs().flatten(1).mean(dim=1) for f, t in zip(self._features(y), targets, strict=True))


class FRFeatureLoss(nn.Module):
    """Attribute loss from weights every bundle has: L1 over the FR network's early feature maps
    on the face crop (shape, expression, texture) plus a pixel L1 of the whole frame at
    ``pixel_size`` (colour, light, hair, background). ``feature_weight`` 0 leaves the pixel term.
    The inversion by optimisation uses the same features as its perceptual term."""

    def __init__(self, face_embedder: nn.Module, pixel_size: int = 64, feature_weight: float = 1.0) -> None:
        super().__init__()
        self.face_embedder = face_embedder
        self.pixel_size = pixel_size
        self.feature_weight = feature_weight

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = self.face_embedder.feature_maps(fr_crop(images)) if self.feature_weight else []
        return [*maps, resize(images, self.pixel_size)]

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._features(x)

    def forward(self, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        *maps, pixels = ((f - t).abs().flatten(1).mean(dim=1) for f, t in zip(self._features(y), targets, strict=True))
        return pixels + self.feature_weight * sum(maps, torch.zeros_like(pixels))


ATTRIBUTE_LOSSES = ("e4e", "fr_features", "farl")

"""IR-SE residual networks in the InsightFace_Pytorch ``Backbone(num_layers, drop_ratio, 'ir_se')`` layout.

Keys: ``input_layer.{0,1,2}``, ``body.<unit>.res_layer.{0..5}``, ``body.<unit>.shortcut_layer.{0,1}``,
``output_layer.{0,3,4}``. The same units form the body of the e4e encoder (``encoder.body.*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Units per stage for the supported depths (stage widths 64, 128, 256, 512).
STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class UnitSpec(NamedTuple):
    in_channels: int
    depth: int
    stride: int


def stage_units(num_layers: int) -> tuple[int, int, int, int]:
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"IR-SE depth must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
    return STAGE_UNITS[num_layers]


def unit_specs(units: Sequence[int], widths: Sequence[int] = STAGE_WIDTHS) -> list[UnitSpec]:
    """The residual units of each stage; the first unit of each stage has stride 2."""
    if len(units) != 4 or len(widths) != 4:
        raise ValueError(f"IR-SE has 4 stages, got units {list(units)} and widths {list(widths)}")
    specs = []
    in_ch = widths[0]
    for width, count in zip(widths, units, strict=True):
        specs.append(UnitSpec(in_ch, width, 2))
        specs.extend(UnitSpec(width, width, 1) for _ in range(count - 1))
        in_ch = width
    return specs


class SEModule(nn.Module):
    """Squeeze-and-excitation: global mean → 1×1 (C→C/r) → ReLU → 1×1 → sigmoid → scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SubsampleShortcut(nn.Module):
    """``MaxPool2d(1, stride)`` of the reference: with a 1×1 window it is plain subsampling."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x


class BottleneckIRSE(nn.Module):
    """``res + shortcut`` with res = BN → 3×3 → PReLU → 3×3 (stride) → BN → SE; no activation after."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = SubsampleShortcut(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def input_layer(width: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def ir_se_body(specs: Sequence[UnitSpec]) -> nn.Sequential:
    return nn.Sequential(*[BottleneckIRSE(*spec) for spec in specs])


class IRSEBackbone(nn.Module):
    """IR-SE face recognition network: RGB 112×112 in [-1, 1] → L2-normalised 512-d embedding."""

    input_size = 112

    def __init__(
        self,
        units: Sequence[int] = STAGE_UNITS[50],
        widths: Sequence[int] = STAGE_WIDTHS,
        embedding_size: int = 512,
        drop_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_layer = input_layer(widths[0])
        self.body = ir_se_body(unit_specs(units, widths))
        self.first_stage_units = units[0]
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.Dropout(drop_ratio),
            nn.Flatten(),  # NCHW order: index c·49 + h·7 + w, as the reference's view(N, -1)
            nn.Linear(widths[-1] * 7 * 7, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )

    def embed_unnormalised(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The early maps a perceptual loss compares: the stem (full input size) and the first
        stage (1/2) — edges, texture and shape, before identity dominates."""
        x = self.input_layer(x)
        return [x, self.body[: self.first_stage_units](x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed_unnormalised(x)
        # The reference divides by the plain norm (no eps); keep it so templates match exactly.
        return e / torch.linalg.vector_norm(e, dim=1, keepdim=True)

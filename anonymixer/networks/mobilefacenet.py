"""MobileFaceNet in the layout of foamliu's PyTorch implementation (``mobilefacenet.pt``).

RGB 112×112 → 128-d embedding. The network was trained on ImageNet-normalised inputs; this module
takes the project's common face format (RGB in [-1, 1]) and applies that normalisation itself, so
every face embedder has the same input contract. The output is L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s) per stage.
DEFAULT_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(),
        )


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size, padding=padding, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(x)))


class GDConv(nn.Module):
    """Global depthwise conv (7×7 valid) + BN: the spatial pooling of MobileFaceNet."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """RGB 112×112 in [-1, 1] → L2-normalised ``embedding_size``-d embedding."""

    input_size = 112

    def __init__(
        self, setting: Sequence[tuple[int, int, int, int]] = DEFAULT_SETTING, embedding_size: int = 128
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self.conv1 = ConvBNReLU(3, 64, stride=2)
        self.dw_conv = DepthwiseSeparableConv(64, 64, 3, padding=1)
        blocks = []
        in_ch = 64
        for t, c, n, s in setting:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        self.features = nn.Sequential(*blocks)
        self.first_stage_blocks = setting[0][2]
        self.conv2 = ConvBNReLU(in_ch, 512, kernel_size=1)
        self.gdconv = GDConv(512, 7)
        self.conv3 = nn.Conv2d(512, embedding_size, 1)
        self.bn = nn.BatchNorm2d(embedding_size)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw_conv(self.conv1(((x + 1) * 0.5 - self.mean) / self.std))

    def embed_unnormalised(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdconv(self.conv2(self.features(self._stem(x))))
        return self.bn(self.conv3(x)).flatten(1)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The early maps a perceptual loss compares: after the stem (1/2 of the input) and after
        the first bottleneck stage (1/4) — edges, texture and shape, before identity dominates."""
        x = self._stem(x)
        return [x, self.features[: self.first_stage_blocks](x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed_unnormalised(x)
        return e / torch.linalg.vector_norm(e, dim=1, keepdim=True).clamp_min(1e-12)

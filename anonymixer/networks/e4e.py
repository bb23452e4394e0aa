"""e4e encoder (``Encoder4Editing`` of omertov/encoder4editing) in the key layout of ``e4e_ffhq_encode.pt``.

An IR-SE50 body at 256×256 with three taps, an FPN-style top-down path and one
``GradualStyleBlock`` per W+ row. Row 0 (``w0``) is shared by all rows; rows 1… add their own
delta to ``w0`` (each relative to ``w0``, not cumulative). Coarse rows (< 3) read the 16×16
features, middle rows (< 7) the 32×32 ones, fine rows the 64×64 ones.

The module returns the codes *before* ``latent_avg``; :class:`E4EInverter` adds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anonymixer.networks.ir_se import STAGE_UNITS, STAGE_WIDTHS, input_layer, ir_se_body, unit_specs
from anonymixer.networks.stylegan2 import EqualLinear

COARSE_END = 3
MIDDLE_END = 7


class GradualStyleBlock(nn.Module):
    """log2(spatial) × [3×3 stride-2 conv (with bias) → LeakyReLU(0.01)] → EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            conv_in = in_channels if i == 0 else out_channels
            layers += [nn.Conv2d(conv_in, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_channels))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """RGB ``input_size``² in [-1, 1] → W+ codes [B, n_styles, style_dim] (without ``latent_avg``).

    The official network is ``Encoder4Editing(n_styles=18)`` with the IR-SE50 defaults; the other
    arguments only exist so the ``tiny`` profile can use the same code at a fraction of the size.
    """

    def __init__(
        self,
        n_styles: int = 18,
        units: Sequence[int] = STAGE_UNITS[50],
        widths: Sequence[int] = STAGE_WIDTHS,
        style_dim: int = 512,
        input_size: int = 256,
    ) -> None:
        super().__init__()
        self.n_styles = n_styles
        self.input_size = input_size
        specs = unit_specs(units, widths)
        # Feature taps: the last unit of stages 2, 3 and 4 (body[6], [20], [23] for IR-SE50),
        # at 1/4, 1/8 and 1/16 of the input size.
        firsts = [i for i, s in enumerate(specs) if s.stride == 2]
        self.tap_c1, self.tap_c2, self.tap_c3 = firsts[2] - 1, firsts[3] - 1, len(specs) - 1
        self.input_layer = input_layer(widths[0])
        self.body = ir_se_body(specs)
        c3_size = input_size // 16
        self.styles = nn.ModuleList(
            GradualStyleBlock(
                widths[3], style_dim, c3_size if i < COARSE_END else 2 * c3_size if i < MIDDLE_END else 4 * c3_size
            )
            for i in range(n_styles)
        )
        self.latlayer1 = nn.Conv2d(widths[2], widths[3], 1)
        self.latlayer2 = nn.Conv2d(widths[1], widths[3], 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three body taps (c1 128@64², c2 256@32², c3 512@16² at 256 input)."""
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (self.tap_c1, self.tap_c2, self.tap_c3):
                taps[i] = x
            if i == self.tap_c3:
                break
        return taps[self.tap_c1], taps[self.tap_c2], taps[self.tap_c3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.features(x)
        w0 = self.styles[0](c3)
        rows = [w0]
        feats = c3
        for i in range(1, self.n_styles):
            if i == COARSE_END:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                feats = p2
            elif i == MIDDLE_END:
                feats = _upsample_add(p2, self.latlayer2(c1))
            rows.append(w0 + self.styles[i](feats))
        return torch.stack(rows, dim=1)


class E4EInverter(nn.Module):
    """``w_plus = encoder(x) + latent_avg`` (what ``pSp.forward`` does with ``start_from_latent_avg``)."""

    def __init__(self, encoder: Encoder4Editing, latent_avg: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        if latent_avg.dim() == 1:
            latent_avg = latent_avg.expand(encoder.n_styles, -1)
        self.register_buffer("latent_avg", latent_avg.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) + self.latent_avg

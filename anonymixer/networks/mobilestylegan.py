"""MobileStyleGAN (Belousov 2021, arXiv 2104.04767) in plain PyTorch: StyleGAN2-FFHQ distilled into
depthwise-separable modulated convolutions that predict Haar wavelet coefficients.

The trained weights come from the OpenVINO IR of the ``random-face`` wheel
(:mod:`anonymixer.mobilestylegan_ir` fills this module); the module mirrors what that IR computes:

* **mapping** — PixelNorm, then ``n_mlp`` × (linear → leaky ReLU 0.2 → ×√2). The IR stores the
  equalised-learning-rate scales already multiplied into the weights and biases, so the layers are
  plain linear layers.
* **synthesis** — a constant 4×4 input; a full 3×3 modulated conv at 4×4; seven blocks, each a
  :class:`HaarUpsample` (modulate, then an inverse Haar transform doubles the resolution and
  quarters the channels) and two depthwise-separable modulated convs; a final 1×1 modulated conv
  to 12 wavelet channels (RGB × LL, LH, HL, HH) at 512 px whose inverse Haar transform is the
  1024 px image in [-1, 1].

Three facts of the trained network shape this file:

* *Demodulation is a constant.* MobileStyleGAN demodulates with a learned ``style_inv`` buffer,
  not with the sample's style, so each conv's demodulation is a fixed per-channel factor; the IR
  has it folded into the (pointwise) conv weights and so has this module — there is no
  demodulation step to run.
* *Noise is fixed.* The IR was traced with one noise draw per layer, already scaled by the layer's
  trained noise strength (``noise`` buffers here): renders are deterministic.
* *W+ has 23 rows*, one per modulation of the IR in coarse-to-fine order: row 0 the 4×4 conv;
  rows 1 + 3·i, 2 + 3·i, 3 + 3·i block i's upsampling, first and second conv; row 22 the final
  to-image conv. The IR feeds one w to all 23; feeding each row its own w is this module's W+
  (the network was distilled without style mixing, so no W+ row layout is more native than
  another). The per-block ``to_img`` outputs of the original code are not in the IR (only the
  last one reaches the image), so there is no early exit at a lower resolution.

Modulation scales activations, never weights: the conv weights stay constants of an exported graph
(any batch size, no grouped per-sample convolutions) and a backward pass for the latent needs no
weight gradients.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
PIXELNORM_EPS = 1e-8
CHANNELS = (512, 512, 512, 512, 512, 256, 128, 64)  # at 4, 8, …, 512 px
WAVELET_BANDS = 4  # LL, LH, HL, HH
HAAR_LOW = (1 / math.sqrt(2), 1 / math.sqrt(2))  # db1 synthesis filters
HAAR_HIGH = (1 / math.sqrt(2), -1 / math.sqrt(2))
# (filter along the rows, filter along the columns) of each band, as the IR's inverse transform has them
BAND_FILTERS = ((HAAR_LOW, HAAR_LOW), (HAAR_HIGH, HAAR_LOW), (HAAR_LOW, HAAR_HIGH), (HAAR_HIGH, HAAR_HIGH))


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


class InverseHaar(nn.Module):
    """One level of the inverse Haar wavelet transform: (low [B,C,H,W], high [B,C,3,H,W]) → [B,C,2H,2W].

    Each output pixel (2i+k, 2j+l) is Σ_band band[i, j] · rows[k] · cols[l]; every product of two
    db1 taps is ±½, so the four pixels of a 2×2 cell are ½ (LL ± LH ± HL ± HH). Written as those
    sums and a pixel shuffle rather than a grouped transposed convolution: elementwise work that
    torch.compile fuses with the modulation before it (and eager runs faster too,
    ``benchmarks/refine_bench.py``); the same arithmetic to float rounding.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        b, c, h, w = low.shape
        band1, band2, band3 = high.unbind(2)  # BAND_FILTERS[1:]: rows high; columns high; both high
        plus1, minus1, plus3, minus3 = low + band1, low - band1, band2 + band3, band2 - band3
        # pixels (k, l) = (0, 0), (0, 1), (1, 0), (1, 1) of each cell, channel-major for the shuffle
        cells = torch.stack([plus1 + plus3, plus1 - plus3, minus1 + minus3, minus1 - minus3], dim=2)
        return F.pixel_shuffle((cells * 0.5).reshape(b, c * WAVELET_BANDS, h, w), 2)


def split_wavelets(x: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 4C, H, W] → low [B, C, H, W] (the first C channels) and high [B, C, 3, H, W] (channel-major)."""
    b, _, h, w = x.shape
    return x[:, :channels], x[:, channels:].reshape(b, channels, 3, h, w)


class Modulation(nn.Module):
    """A style row → one gain per input channel: ``(w·Aᵀ + b)·scale``."""

    def __init__(self, style_dim: int, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, style_dim))
        self.bias = nn.Parameter(torch.ones(channels))
        self.scale = scale

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gain = F.linear(w, self.weight, self.bias) * self.scale
        return x * gain[:, :, None, None]


class ModulatedConv(nn.Module):
    """Modulated full convolution (the 4×4 layer's 3×3, the final 1×1 to wavelets); demodulation folded in."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int) -> None:
        super().__init__()
        self.modulation = Modulation(style_dim, in_channels, 1 / math.sqrt(in_channels * kernel_size**2))
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.modulation(x, w), self.weight, padding=self.weight.shape[-1] // 2)


class ModulatedDepthwiseConv(nn.Module):
    """Modulated depthwise 3×3 then pointwise 1×1 convolution; demodulation folded into the pointwise weights."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.modulation = Modulation(style_dim, in_channels, 1 / math.sqrt(in_channels * kernel_size**2))
        self.depthwise = nn.Parameter(torch.zeros(in_channels, 1, kernel_size, kernel_size))
        self.pointwise = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.modulation(x, w)
        x = F.conv2d(x, self.depthwise, padding=self.depthwise.shape[-1] // 2, groups=x.shape[1])
        return F.conv2d(x, self.pointwise)


class StyledLayer(nn.Module):
    """Modulated conv → + fixed noise (trained strength included) → + bias → leaky ReLU 0.2."""

    def __init__(self, conv: ModulatedConv | ModulatedDepthwiseConv, out_channels: int, size: int) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("noise", torch.zeros(1, 1, size, size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return leaky_relu(self.conv(x, w) + self.noise + self.bias[None, :, None, None])


class HaarUpsample(nn.Module):
    """Modulate (no scale), read the channels as wavelet coefficients, inverse-transform: 2× size, ¼ channels."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        if channels % WAVELET_BANDS:
            raise ValueError(f"HaarUpsample needs a multiple of {WAVELET_BANDS} channels, got {channels}")
        self.modulation = Modulation(style_dim, channels)
        self.idwt = InverseHaar(channels // WAVELET_BANDS)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.idwt(*split_wavelets(self.modulation(x, w), self.idwt.channels))


class MobileSynthesisBlock(nn.Module):
    """Upsample to ``size``, then two depthwise-separable styled convs; takes three W+ rows."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, size: int) -> None:
        super().__init__()
        self.up = HaarUpsample(in_channels, style_dim)
        self.conv1 = StyledLayer(
            ModulatedDepthwiseConv(in_channels // WAVELET_BANDS, out_channels, style_dim), out_channels, size
        )
        self.conv2 = StyledLayer(ModulatedDepthwiseConv(out_channels, out_channels, style_dim), out_channels, size)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # w: [B, 3, d]
        return self.conv2(self.conv1(self.up(x, w[:, 0]), w[:, 1]), w[:, 2])


class ToImage(nn.Module):
    """Modulated 1×1 conv to 12 wavelet channels + bias, inverse Haar transform → RGB at twice the size.

    ``area_average=True`` returns the image area-averaged to half its size instead, exactly: a 2×2
    cell's mean is ½ LL (the high bands' taps sum to zero), so only the three LL channels are
    computed and no inverse transform runs — what losses at ≤ half size need, for less work."""

    def __init__(self, in_channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, 3 * WAVELET_BANDS, 1, style_dim)
        self.bias = nn.Parameter(torch.zeros(3 * WAVELET_BANDS))
        self.idwt = InverseHaar(3)

    def forward(self, x: torch.Tensor, w: torch.Tensor, area_average: bool = False) -> torch.Tensor:
        if area_average:
            low = F.conv2d(self.conv.modulation(x, w), self.conv.weight[:3]) + self.bias[None, :3, None, None]
            return low * 0.5
        return self.idwt(*split_wavelets(self.conv(x, w) + self.bias[None, :, None, None], 3))


class MappingLayer(nn.Module):
    """Linear (equalised-lr scales folded in) → leaky ReLU 0.2 → ×√2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_relu(F.linear(x, self.weight, self.bias)) * math.sqrt(2.0)


class MobileStyleGAN(nn.Module):
    """``mapping`` (z → w) and ``synthesis`` (W+ [B, 23, d] or W [B, d] → image [B, 3, 1024, 1024])."""

    def __init__(self, style_dim: int = 512, n_mlp: int = 8, channels: Sequence[int] = CHANNELS) -> None:
        super().__init__()
        channels = tuple(channels)
        self.style_dim = style_dim
        self.channels = channels
        self.size = 4 * 2 ** len(channels)  # each block doubles 4 px; the last inverse transform doubles again
        self.n_latent = 1 + 3 * (len(channels) - 1) + 1
        self.mapping_layers = nn.ModuleList(MappingLayer(style_dim) for _ in range(n_mlp))
        self.input = nn.Parameter(torch.zeros(1, channels[0], 4, 4))
        self.conv1 = StyledLayer(ModulatedConv(channels[0], channels[0], 3, style_dim), channels[0], 4)
        self.blocks = nn.ModuleList(
            MobileSynthesisBlock(c_in, c_out, style_dim, 8 * 2**i)
            for i, (c_in, c_out) in enumerate(itertools.pairwise(channels))
        )
        self.to_img = ToImage(channels[-1], style_dim)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d] → w [B, d] (PixelNorm + MLP, no truncation)."""
        x = z * torch.rsqrt(torch.mean(z * z, dim=1, keepdim=True) + PIXELNORM_EPS)
        for layer in self.mapping_layers:
            x = layer(x)
        return x

    def synthesis(self, w_plus: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """W+ [B, n_latent, d] (or one w [B, d] for every row) → raw RGB [B, 3, size, size] (not clamped);
        ``resolution`` ``size // 2``: the same image area-averaged to half size (:class:`ToImage`)."""
        if resolution not in (None, self.size, self.size // 2):
            raise ValueError(
                f"MobileStyleGAN renders at {self.size} px or, area-averaged, at {self.size // 2} px "
                f"(its IR has no intermediate images); got resolution {resolution}"
            )
        if w_plus.dim() == 2 and w_plus.shape[1] == self.style_dim:
            w_plus = w_plus[:, None].expand(-1, self.n_latent, -1)
        if w_plus.dim() != 3 or w_plus.shape[1] != self.n_latent or w_plus.shape[2] != self.style_dim:
            raise ValueError(
                f"w_plus must be [B, {self.n_latent}, {self.style_dim}] or [B, {self.style_dim}], "
                f"got {list(w_plus.shape)}"
            )
        x = self.conv1(self.input.expand(w_plus.shape[0], -1, -1, -1), w_plus[:, 0])
        for i, block in enumerate(self.blocks):
            x = block(x, w_plus[:, 1 + 3 * i : 4 + 3 * i])
        return self.to_img(x, w_plus[:, -1], area_average=resolution == self.size // 2)

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        return self.synthesis(w_plus)

"""StyleGAN2 generator in the rosinality ``stylegan2-pytorch`` key layout, pure PyTorch.

State-dict keys match ``Generator.state_dict()`` of rosinality's ``model.py`` (and the ``decoder.*``
half of e4e's ``e4e_ffhq_encode.pt``): ``style.{1..n_mlp}``, ``input.input``, ``conv1``,
``to_rgb1``, ``convs.*``, ``to_rgbs.*``, ``noises.noise_*`` and the FIR ``kernel`` buffers.

Two deliberate differences from the reference implementation, neither of which changes the maths:

* Modulated convolutions scale the *activations* by the style and the output by the
  demodulation coefficients, and convolve with the constant weight. The conv weights therefore
  stay constants of the graph (ONNX/TensorRT friendly, any batch size, no grouped convolutions),
  and a backward pass needs no weight gradients.
* Noise is always the fixed ``noises.noise_i`` buffers: a protected face must not depend on the
  random state of the process that rendered it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2
DEMOD_EPS = 1e-8
PIXELNORM_EPS = 1e-8


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """Feature channels per resolution of the official config-f generator."""
    return {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }


def make_fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel (outer product of ``taps``), normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter (true convolution), downsample.

    Same semantics as rosinality's ``upfirdn2d`` with a 2-tuple ``pad`` (applied to both axes;
    negative values crop). ``x`` is [B, C, H, W]; ``kernel`` is [kh, kw].
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    # Channels folded into the batch: one constant [1, 1, kh, kw] filter serves every channel,
    # which keeps the kernel shape static when the graph is exported with a dynamic batch.
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).reshape(1, 1, kh, kw)
    x = F.conv2d(x.reshape(-1, 1, x.shape[2], x.shape[3]), weight)
    x = x.reshape(b, c, x.shape[2], x.shape[3])
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` with a per-channel bias (dim 1)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu(x + bias.reshape(shape), LEAKY_SLOPE) * math.sqrt(2.0)


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation trick, ``w_avg + psi·(w − w_avg)``, applied to w before broadcasting to W+."""
    return w_avg + psi * (w - w_avg)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate: ``x @ (W·lr_mul/√in)ᵀ + b·lr_mul``."""

    def __init__(
        self, in_dim: int, out_dim: int, *, lr_mul: float = 1.0, bias_init: float = 0.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.bias_init = bias_init
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + PIXELNORM_EPS)


class Blur(nn.Module):
    """FIR low-pass after the transposed convolution of an up-sampling layer."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2× FIR up-sampling of the RGB skip connection."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_fir_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution computed on activations (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
        blur_taps: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        if upsample:
            factor = 2
            p = len(blur_taps) - factor - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        style = self.modulation(w)  # [B, Cin]
        weight = self.weight[0] * self.scale  # [Cout, Cin, k, k]
        x = x * style.reshape(b, self.in_channels, 1, 1)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # Σ_{cin,k}(W·s)² = (s²) @ (Σ_k W²)ᵀ: one small matmul instead of a per-item weight.
            weight_sq = weight.pow(2).sum(dim=(2, 3))  # [Cout, Cin]
            demod = torch.rsqrt(style.pow(2) @ weight_sq.t() + DEMOD_EPS)  # [B, Cout]
            out = out * demod.reshape(b, self.out_channels, 1, 1)
        return out


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated conv → fixed noise → bias + leaky ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        upsample: bool = False,
        blur_taps: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, upsample=upsample, blur_taps=blur_taps
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(
        self, in_channels: int, style_dim: int, *, upsample: bool = True, blur_taps: Sequence[float] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z → w) and ``synthesis`` (W+ → image), callable separately."""

    def __init__(
        self,
        size: int = 1024,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        *,
        channels: dict[int, int] | None = None,
        blur_taps: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
    ) -> None:
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.log_size = int(math.log2(size))
        if 2**self.log_size != size or size < 8:
            raise ValueError(f"generator size must be a power of two ≥ 8, got {size}")
        self.n_latent = self.log_size * 2 - 2
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.channels = dict(channels) if channels is not None else default_channels(channel_multiplier)

        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)],
        )
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_taps=blur_taps)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_ch = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_ch = self.channels[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_taps=blur_taps))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_taps=blur_taps))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_taps=blur_taps))
            in_ch = out_ch

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, style_dim] → w [B, style_dim] (PixelNorm + MLP, no truncation)."""
        return self.style(z)

    def noise(self, i: int) -> torch.Tensor:
        return getattr(self.noises, f"noise_{i}")

    def synthesis(self, w_plus: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """W+ [B, n_latent, style_dim] → raw RGB image [B, 3, R, R] (not clamped).

        ``resolution`` stops early and returns the RGB skip at that resolution (4 … size): the
        same image the full network would show at that scale, at a fraction of the cost.
        """
        if w_plus.dim() != 3 or w_plus.shape[1] != self.n_latent or w_plus.shape[2] != self.style_dim:
            raise ValueError(f"w_plus must be [B, {self.n_latent}, {self.style_dim}], got {list(w_plus.shape)}")
        stop = self.size if resolution is None else resolution
        if stop not in {2**i for i in range(2, self.log_size + 1)}:
            raise ValueError(f"resolution must be a power of two in [4, {self.size}], got {stop}")
        out = self.conv1(self.input(w_plus.shape[0]), w_plus[:, 0], self.noise(0))
        skip = self.to_rgb1(out, w_plus[:, 1])
        for k, to_rgb in enumerate(self.to_rgbs):
            if 4 * 2**k >= stop:
                break
            out = self.convs[2 * k](out, w_plus[:, 2 * k + 1], self.noise(2 * k + 1))
            out = self.convs[2 * k + 1](out, w_plus[:, 2 * k + 2], self.noise(2 * k + 2))
            skip = to_rgb(out, w_plus[:, 2 * k + 3], skip)
        return skip

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        return self.synthesis(w_plus)

"""The generator's W as a whitened Gaussian: the space where a key can transform a face's
identity and stay among the faces the generator draws.

StyleGAN's W is far from Gaussian, but undoing the mapping network's last leaky ReLU (×√2, slope
0.2) and whitening with PCA makes it close to one (Wulff & Torralba 2020; the P_N space of Zhu et
al. 2020). Only the top ``dims`` principal directions are whitened: the mapping hardly uses the
rest (MobileStyleGAN: the top 128 of 512 hold 95 % of the variance, the last eigenvalues are
≈ 1e-7 of the first), and an inverted face's W+ rows put most of their offset there — whitened,
those directions would blow the offset up a thousandfold. A row ``w`` is split into its
``code`` (the whitened top-``dims`` coordinates, ≈ N(0, I) for the generator's own samples) and
the ``residual`` off that subspace; :meth:`WSpace.latent` puts them back together exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from anonymixer.seeded_init import seeded_draw

SAMPLES = 16384  # seeded z whose mapped w estimate the mean and principal directions
SLOPE, GAIN = 0.2, math.sqrt(2.0)  # the mapping's last activation: leaky ReLU (0.2) × √2


def unactivate(w: torch.Tensor) -> torch.Tensor:
    v = w / GAIN
    return torch.where(v < 0, v / SLOPE, v)


def activate(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v < 0, v * SLOPE, v) * GAIN


@dataclass(frozen=True)
class WSpace:
    mean: torch.Tensor  # [d] of the un-activated w
    basis: torch.Tensor  # [d, dims], orthonormal principal directions, largest variance first
    scale: torch.Tensor  # [dims], the standard deviation along each

    @property
    def dims(self) -> int:
        return int(self.scale.shape[0])

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [..., d] → (code [..., dims], residual [..., d])."""
        offset = unactivate(w.double()) - self.mean
        along = offset @ self.basis
        return along / self.scale, offset - along @ self.basis.T

    def latent(self, code: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """(code, residual) → w [..., d] in float32 (the inverse of :meth:`split`)."""
        offset = (code.double() * self.scale) @ self.basis.T + residual.double()
        return activate(self.mean + offset).float()

    def to(self, device: torch.device | str) -> WSpace:
        return WSpace(self.mean.to(device), self.basis.to(device), self.scale.to(device))


@torch.no_grad()
def fit_wspace(
    mapping: Callable[[torch.Tensor], torch.Tensor], style_dim: int, dims: int, samples: int = SAMPLES
) -> WSpace:
    """PCA of the un-activated mapping of ``samples`` seeded z (seed 0, the same on every machine),
    computed on the CPU in float64 from float32 mapped w."""
    if not 0 < dims <= style_dim:
        raise ValueError(f"whitened dims must be in 1..{style_dim}, got {dims}")
    z = torch.from_numpy(seeded_draw("wspace.z", 0, (samples, style_dim))).float()
    w = torch.cat([mapping(chunk) for chunk in z.split(2048)]).double()
    v = unactivate(w)
    mean = v.mean(0)
    variance, directions = torch.linalg.eigh(torch.cov((v - mean).T))
    order = variance.argsort(descending=True)[:dims]
    basis = directions[:, order]
    basis = basis * torch.sign(basis[basis.abs().argmax(0), torch.arange(dims)])  # a fixed sign per direction
    return WSpace(mean, basis, variance[order].clamp_min(0).sqrt())

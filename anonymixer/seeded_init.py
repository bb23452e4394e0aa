"""Portable seeded random weights for the ``tiny`` profile and for tests.

Every tensor is drawn from ``numpy.random.RandomState(crc32(name) + seed)`` — the legacy generator,
whose streams numpy guarantees to keep — so a given seed gives the same bytes on every machine,
numpy version and torch version (``torch.manual_seed`` promises neither). The distribution of each
tensor follows the official initialisation of its owning module, which keeps activations in a
sane range through deep random networks.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import nn

from anonymixer.networks.stylegan2 import ConstantInput, EqualLinear, ModulatedConv2d, NoiseInjection


def seeded_draw(
    name: str, seed: int, shape: tuple[int, ...], loc: float = 0.0, scale: float = 1.0, uniform: bool = False
) -> np.ndarray:
    """float64 ``loc + scale·N(0,1)`` (or ``·U[0,1)``) from the stream named ``name`` under ``seed``."""
    rng = np.random.RandomState((zlib.crc32(name.encode("utf-8")) + seed) % 2**32)
    z = rng.random_sample(shape) if uniform else rng.standard_normal(shape)
    return loc + scale * np.asarray(z, dtype=np.float64)


def _spec(module: nn.Module, leaf: str, shape: tuple[int, ...]) -> tuple[float, float, bool] | None:
    """(loc, scale, uniform) for one tensor, or None to keep the constructor's value."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {
            "weight": (1.0, 0.1, False),
            "bias": (0.0, 0.1, False),
            "running_mean": (0.0, 0.1, False),
            "running_var": (1.0, 0.1, True),
        }.get(leaf)
    if isinstance(module, nn.PReLU):
        return (0.25, 0.01, False)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return (0.0, 1.0 / math.sqrt(fan_in), False) if leaf == "weight" else (0.0, 0.1, False)
    if isinstance(module, EqualLinear):
        if leaf == "weight":
            return (0.0, 1.0 / module.lr_mul, False)
        return (module.bias_init, 0.1 / module.lr_mul, False)
    if isinstance(module, (ModulatedConv2d, ConstantInput)):
        return (0.0, 1.0, False)
    if isinstance(module, NoiseInjection):
        return (0.0, 0.1, False)
    if leaf.startswith("noise_"):
        return (0.0, 1.0, False)
    if leaf in ("kernel", "num_batches_tracked"):
        return None  # FIR constants and counters keep their constructor values
    return (0.0, 0.1, False)


@torch.no_grad()
def seeded_init_(model: nn.Module, seed: int, prefix: str = "") -> nn.Module:
    """Overwrite every parameter and persistent buffer of ``model`` in place; returns ``model``."""
    for mod_name, module in model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + [
            (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set
        ]
        for leaf, tensor in tensors:
            spec = _spec(module, leaf, tuple(tensor.shape))
            if spec is None or not tensor.is_floating_point():
                continue
            full = f"{prefix}{mod_name}.{leaf}" if mod_name else f"{prefix}{leaf}"
            value = seeded_draw(full, seed, tuple(tensor.shape), *spec)
            tensor.copy_(torch.from_numpy(value).to(tensor.dtype))
    return model

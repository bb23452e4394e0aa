"""The gradient-free network calls of the pipeline (encode, render, embed), and their timer.

They are :class:`Stages` callables: the bundle's PyTorch modules by default (:func:`torch_stages`);
the Triton model swaps in calls to the exported models. The refinement itself always runs the
PyTorch modules (it needs their gradients). The keys' mapping is no stage: it always runs the
bundle's module in fp32 on the CPU (anonymixer.keys), so that a key means one face everywhere.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from anonymixer.bundle import Bundle
from anonymixer.losses import resize


@dataclass
class Stages:
    """The gradient-free network calls, batch-first tensors on the Protector's device."""

    encode: Callable[[torch.Tensor], torch.Tensor]  # aligned [B, 3, 256, 256] → W+ (latent_avg added); e4e only
    render: Callable[[torch.Tensor], torch.Tensor]  # W+ → image [B, 3, R, R]
    embed: Callable[[torch.Tensor], torch.Tensor]  # FR input [B, 3, 112, 112] → embedding [B, D]


def torch_stages(model: Bundle) -> Stages:
    def encode(x: torch.Tensor) -> torch.Tensor:
        inverter = model.require_encoder("inverting a face")
        return inverter(resize(x, inverter.encoder.input_size))

    return Stages(
        encode=encode,
        render=model.generator.synthesis,
        embed=model.face_embedder,
    )


class StageTimer:
    """Seconds per named stage, summed over its uses (CUDA work waited for before the clock stops)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

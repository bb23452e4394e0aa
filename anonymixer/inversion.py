"""Inversion by optimisation: aligned faces → W+ for a bundle without an encoder (DESIGN §5, "Inversion").

Every item starts from ``latent_avg`` (``w_avg`` on every row) and one Adam over the whole batch's
[B, n_latent, d] parameter fits the render to the aligned photo. The loss is a sum of per-item
terms, so — as in the refinement — the batch is B independent optimisations run together: an
item's result does not depend on its batch-mates. There is no randomness: the same photo gives
the same latent on every run.

The per-item loss (:class:`ReconstructionLoss`) is pixel MSE + L1 at the aligned size (256) plus a
perceptual term, the L1 between the FR network's early feature maps of the face crops
(:class:`~anonymixer.losses.FRFeatureLoss`). LPIPS weights cannot be had here; the chosen weights
and step counts come from ``benchmarks/inversion.py`` on real photos (README, "Inversion").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from anonymixer.bundle import Bundle
from anonymixer.config import ProtectConfig
from anonymixer.losses import ALIGNED_SIZE, FRFeatureLoss, resize
from anonymixer.networks import AnyGenerator
from anonymixer.refine import saved_tensor_budget
from anonymixer.synthesis import synthesize

# Called after every step with (step index, per-item loss before it, W+ after it); a progress
# bar or a benchmark recording the curve. Inversion cannot be cut short.
InversionCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


class ReconstructionLoss(nn.Module):
    """Per-item reconstruction loss of renders ``y`` against aligned photos ``x`` (both in [-1, 1])."""

    def __init__(self, face_embedder: nn.Module, perceptual_weight: float, size: int = ALIGNED_SIZE) -> None:
        super().__init__()
        self.size = size
        # pixel L1 at full aligned size + perceptual_weight × the FR features' L1
        self.features = FRFeatureLoss(face_embedder, pixel_size=size, feature_weight=perceptual_weight)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features.targets(resize(x, self.size))

    def forward(self, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        y = resize(y, self.size)
        mse = (y - targets[-1]).square().flatten(1).mean(dim=1)
        return mse + self.features(y, targets)


@dataclass
class InversionResult:
    w_plus: torch.Tensor  # [B, n_latent, d]
    loss_trace: torch.Tensor  # [steps, B]: each item's reconstruction loss before each step


def invert_latents(
    x: torch.Tensor,
    *,
    generator: AnyGenerator,
    latent_avg: torch.Tensor,
    loss: ReconstructionLoss,
    steps: int,
    lr: float,
    on_step: InversionCallback | None = None,
    resolution: int | None = None,
    compile: str = "off",
    memory_budget_mib: float = 0.0,
) -> InversionResult:
    """W+ [B, n_latent, d] whose renders reproduce the aligned faces ``x`` [B, 3, S, S].

    Each step renders at ``resolution`` (``ProtectConfig.loss_resolution``; None: full), through
    torch.compile when ``compile`` says so (:mod:`anonymixer.synthesis`). A batch that does not fit
    raises MemoryError (past ``memory_budget_mib``, as the refinement does) or the device's
    OutOfMemoryError: the caller splits it (:meth:`~anonymixer.scheduler.RefinementScheduler.run_batches`)."""
    targets = loss.targets(x)
    param = latent_avg.detach()[None].repeat(x.shape[0], 1, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=lr)
    trace = []
    for step in range(steps):
        with torch.enable_grad():  # callers may hold a no_grad context for the stages around it
            with saved_tensor_budget(memory_budget_mib, x.shape[0], "inversion"):
                per_item = loss(synthesize(generator, param, resolution, compile), targets)
            optimiser.zero_grad(set_to_none=True)
            per_item.sum().backward()
        optimiser.step()
        trace.append(per_item.detach())
        if on_step is not None:
            on_step(step, per_item.detach(), param.detach())
    trace_tensor = torch.stack(trace) if trace else x.new_zeros((0, x.shape[0]))
    return InversionResult(param.detach(), trace_tensor)


def invert_as_configured(
    x: torch.Tensor,
    model: Bundle,
    config: ProtectConfig,
    steps: int | None = None,
    on_step: InversionCallback | None = None,
) -> InversionResult:
    """:func:`invert_latents` with the bundle's networks and ``config``'s inversion settings, as the
    pipeline runs it; ``steps`` instead of ``config.inversion_steps`` (a benchmark's timed steps)."""
    return invert_latents(
        x,
        generator=model.generator,
        latent_avg=model.latent_avg,
        loss=ReconstructionLoss(model.face_embedder, config.inversion_perceptual_weight),
        steps=config.inversion_steps if steps is None else steps,
        lr=config.inversion_lr,
        resolution=config.loss_resolution,
        compile=config.compile,
        memory_budget_mib=config.memory_budget_mib,
        on_step=on_step,
    )

"""The batched refinement loop (DESIGN §5, "Refinement" and "Batching").

One Adam over the trainable rows of the whole batch, a [B, k, d] parameter. Adam is element-wise
and the loss is a sum of per-item terms plus per-group terms, so this is exactly B independent
optimisations (one per group) run together. Network weights are frozen; only the latent gets
gradients. The learning rate drops by γ at the given fractions of the steps (MultiStepLR,
stepped every iteration).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from anonymixer.config import ProtectConfig
from anonymixer.losses import AttributeLoss, anonymity_loss, fr_crop, group_consistency_loss
from anonymixer.mixing import Mix
from anonymixer.networks import AnyGenerator

# Called after every step with (step index, per-item cos(e(y), e(x))); returning False stops early.
StepCallback = Callable[[int, torch.Tensor], bool | None]


@dataclass
class RefineResult:
    trainable: torch.Tensor  # [B, k, d], the refined rows
    loss_trace: torch.Tensor  # [steps_run, B]: each item's anonymity + attribute loss per step
    cosine_trace: torch.Tensor  # [steps_run, B]: cos(e(y), e(x)) per step
    group_trace: torch.Tensor  # [steps_run]: the weighted group-consistency term
    steps_run: int
    cancelled: bool


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast / TF32 matmuls on CUDA; a no-op on the CPU (always fp32 there)."""
    if device.type != "cuda" or precision == "fp32":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def span(name: str) -> contextlib.AbstractContextManager[object]:
    """A named range for torch.profiler (benchmarks/refine_bench.py --trace); nothing
    inside a compiled step, where dynamo would drop it with a warning."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else torch.profiler.record_function(name)


def set_memory_format(modules: Iterable[nn.Module], channels_last: bool) -> None:
    """Put the networks' 4-D weights and buffers in NHWC (``channels_last``) or NCHW, in place.

    Only 4-D tensors have an NHWC layout; ``Module.to(memory_format=...)`` refuses the 5-D
    modulated-conv weights, so each tensor is converted on its own."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=memory_format)


@contextlib.contextmanager
def saved_tensor_budget(budget_mib: float, items: int) -> Iterator[None]:
    """Raise MemoryError inside a forward pass once the tensors autograd saves for backward
    (each storage counted once) exceed ``budget_mib`` (ProtectConfig.memory_budget_mib; 0: none)."""
    if not budget_mib:
        yield
        return
    limit = budget_mib * 2**20
    counted: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in counted:
            counted.add(storage.data_ptr())
            total += storage.nbytes()
            if total > limit:
                raise MemoryError(
                    f"refinement of {items} items needs more than {budget_mib:g} MiB of activations (memory_budget_mib)"
                )
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def step_losses(
    param: torch.Tensor,
    mix: Mix,
    e_x: torch.Tensor,
    targets: list[torch.Tensor],
    groups: torch.Tensor,
    generator: AnyGenerator,
    face_embedder: nn.Module,
    attribute_loss: AttributeLoss,
    config: ProtectConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's forward pass: (per-item anonymity + attribute loss, cos(e(y), e(x)), group term)."""
    with span("synthesis"):
        y = generator.synthesis(mix.assemble(param), resolution=config.loss_resolution)
    with span("face_embedder"):
        e_y = face_embedder(fr_crop(y)).float()
    cos = (e_y * e_x).sum(dim=1)
    per_item = config.anonymity_weight * anonymity_loss(e_y, e_x, config.anonymity_margin)
    with span("attribute_loss"):
        per_item = per_item + config.attribute_weight * attribute_loss(y, targets).float()
    group_term = config.consistency_weight * group_consistency_loss(e_y, groups)
    return per_item, cos, group_term


@functools.cache
def compiled_step_losses(mode: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    # One compiled function per mode for the process; dynamo re-specialises per batch shape.
    return torch.compile(step_losses, mode=mode, dynamic=False)


def milestones(steps: int, fractions: tuple[float, ...]) -> list[int]:
    return [int(f * steps) for f in fractions]


def refine_latents(
    mix: Mix,
    x: torch.Tensor,
    groups: torch.Tensor,
    *,
    generator: AnyGenerator,
    face_embedder: nn.Module,
    attribute_loss: AttributeLoss,
    config: ProtectConfig,
    steps: int,
    on_step: StepCallback | None = None,
) -> RefineResult:
    """Refine the trainable rows of ``mix`` for the aligned originals ``x`` [B, 3, 256, 256].

    ``groups`` [B] (int64) marks the items that are one person under one key. A batch that does not
    fit raises MemoryError (past ``config.memory_budget_mib``) or the device's OutOfMemoryError.
    """
    device = x.device
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    losses = step_losses if config.compile == "off" else compiled_step_losses(config.compile)
    with torch.no_grad():
        e_x = face_embedder(fr_crop(x)).float()
        targets = attribute_loss.targets(x)
    param = mix.trainable.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=config.lr, betas=config.betas, eps=config.adam_eps)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimiser, milestones=milestones(steps, config.lr_milestones), gamma=config.lr_gamma
    )
    loss_trace, cos_trace, group_trace = [], [], []
    cancelled = False
    for step in range(steps):
        with precision_context(device, config.precision), saved_tensor_budget(config.memory_budget_mib, x.shape[0]):
            per_item, cos, group_term = losses(
                param, mix, e_x, targets, groups, generator, face_embedder, attribute_loss, config
            )
        optimiser.zero_grad(set_to_none=True)
        with span("backward"):
            (per_item.sum() + group_term).backward()
        with span("adam"):
            optimiser.step()
        schedule.step()
        loss_trace.append(per_item.detach())
        cos_trace.append(cos.detach())
        group_trace.append(group_term.detach())
        if on_step is not None and on_step(step, cos.detach()) is False:
            cancelled = True
            break
    b = x.shape[0]
    return RefineResult(
        trainable=param.detach(),
        loss_trace=torch.stack(loss_trace) if loss_trace else x.new_zeros((0, b)),
        cosine_trace=torch.stack(cos_trace) if cos_trace else x.new_zeros((0, b)),
        group_trace=torch.stack(group_trace) if group_trace else x.new_zeros((0,)),
        steps_run=len(loss_trace),
        cancelled=cancelled,
    )

"""The batched refinement loop (DESIGN §5, "Refinement" and "Batching").

One Adam over the trainable rows of the whole batch, a [B, k, d] parameter. Adam is element-wise
and the loss is a sum of per-item terms plus per-group terms, so this is exactly B independent
optimisations (one per group) run together. Network weights are frozen; only the latent gets
gradients. The learning rate drops by γ at the given fractions of the steps (MultiStepLR,
stepped every iteration).

The CUDA path: both TF32 flags are set for the precision (fp32 is IEEE fp32, cuDNN included);
with ``ProtectConfig.compile`` the generator's synthesis is compiled (:mod:`anonymixer.synthesis`)
and the batch is padded with inert items to one of a few sizes (``batch_buckets``), so that
CUDA graphs are recorded once per bucket, not once per batch size; and nothing a step returns is
kept beyond it uncopied, since a CUDA-graph replay (``reduce-overhead``) overwrites its outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from anonymixer.config import ProtectConfig
from anonymixer.losses import AttributeLoss, anonymity_loss, fr_crop, group_consistency_loss, group_templates
from anonymixer.mixing import Mix
from anonymixer.networks import AnyGenerator
from anonymixer.synthesis import synthesize

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


# TF32 per precision, set explicitly for cuBLAS matmuls and cuDNN convolutions alike: PyTorch's
# defaults differ (matmuls off, cuDNN on), so an "fp32" left at them would convolve in TF32. bf16
# autocast runs matmuls and convolutions in bf16; what it leaves in fp32 may use TF32, still more
# precise than bf16.
TF32 = {"fp32": False, "tf32": True, "bf16": True}


@contextlib.contextmanager
def precision_context(precision: str) -> Iterator[None]:
    """Both TF32 flags for ``precision``, restored afterwards. Around the whole loop, backward
    included. The flags are CUDA's only: on the CPU, which always runs fp32, setting them changes
    nothing."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = TF32[precision]
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast for the forward pass on CUDA (backward runs in the forward's dtypes)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and precision == "bf16")


def span(name: str) -> contextlib.AbstractContextManager[object]:
    """A named range for torch.profiler (benchmarks/refine_bench.py --trace)."""
    return torch.profiler.record_function(name)


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
def saved_tensor_budget(budget_mib: float, items: int, what: str = "refinement") -> Iterator[None]:
    """Raise MemoryError inside a forward pass once the tensors autograd saves for backward
    (each storage counted once) exceed ``budget_mib`` (ProtectConfig.memory_budget_mib; 0: none).
    ``what`` names the loop in the message (the refinement's, or the inversion's)."""
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
                    f"{what} of {items} items needs more than {budget_mib:g} MiB of activations (memory_budget_mib)"
                )
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def identity_target(mix: Mix, e_x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor | None:
    """t [B, E]: each key's rotation of its group's mean FR template (one target for every photo
    of a person in a call), or None when the mix has no template rotation."""
    if mix.template_rotation is None:
        return None
    mean = group_templates(e_x, groups)
    return torch.nn.functional.normalize(torch.einsum("bij,bj->bi", mix.template_rotation.to(e_x.dtype), mean), dim=1)


def straight_through_clamp(y: torch.Tensor) -> torch.Tensor:
    """``y`` clamped to [-1, 1] forward, the identity backward. The losses then see the picture
    that is returned (:func:`~anonymixer.images.quantize` clamps it), so out-of-range pixels buy no
    anonymity the returned face lacks; and a pixel past the range still gets the gradient that
    would pull it back in, where a plain clamp would give it none and leave it stuck outside."""
    return y + (y.clamp(-1, 1) - y).detach()


def step_losses(
    param: torch.Tensor,
    mix: Mix,
    e_x: torch.Tensor,
    identity: torch.Tensor | None,
    targets: list[torch.Tensor],
    groups: torch.Tensor,
    generator: AnyGenerator,
    face_embedder: nn.Module,
    attribute_loss: AttributeLoss,
    config: ProtectConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's forward pass: (per-item anonymity + attribute loss, cos(e(y), e(x)), group term)."""
    with span("synthesis"):
        y = straight_through_clamp(synthesize(generator, mix.assemble(param), config.loss_resolution, config.compile))
    with span("face_embedder"):
        e_y = face_embedder(fr_crop(y)).float()
    cos = (e_y * e_x).sum(dim=1)
    per_item = config.anonymity_weight * anonymity_loss(e_y, e_x, config.anonymity_margin)
    if identity is not None:
        per_item = per_item + config.target_weight * (1 - (e_y * identity).sum(dim=1))
    with span("attribute_loss"):
        per_item = per_item + config.attribute_weight * attribute_loss(y, targets).float()
    group_term = config.consistency_weight * group_consistency_loss(e_y, groups)
    return per_item, cos, group_term


def padded_size(items: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``items``; ``items`` itself when none does."""
    return min((b for b in buckets if b >= items), default=items)


def pad_batch(mix: Mix, x: torch.Tensor, groups: torch.Tensor, size: int) -> tuple[Mix, torch.Tensor, torch.Tensor]:
    """The batch padded to ``size`` items with inert copies of its first item, each in a group of
    its own: a group of one adds nothing to the consistency term, and :func:`refine_latents`
    leaves the copies' losses out of what it differentiates, so their rows get zero gradients (and
    Adam leaves them in place) and the real items' results do not change."""
    b = x.shape[0]
    index = torch.cat([torch.arange(b, device=x.device), torch.zeros(size - b, dtype=torch.long, device=x.device)])
    extra = groups.max() + 1 + torch.arange(size - b, device=groups.device)
    return mix.take(index), x[index], torch.cat([groups, extra])


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
    pad_to: int | None = None,
) -> RefineResult:
    """Refine the trainable rows of ``mix`` for the aligned originals ``x`` [B, 3, 256, 256].

    ``groups`` [B] (int64) marks the items that are one person under one key. A batch that does not
    fit raises MemoryError (past ``config.memory_budget_mib``) or the device's OutOfMemoryError.
    A compiled step runs the batch padded to its bucket (``config.batch_buckets``; ``pad_to``
    overrides the size, eager too: the tests' proof that padding changes no result).
    """
    device, b = x.device, x.shape[0]
    if pad_to is None:
        pad_to = b if config.compile == "off" else padded_size(b, config.batch_buckets)
    if pad_to > b:
        mix, x, groups = pad_batch(mix, x, groups, pad_to)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        e_x = face_embedder(fr_crop(x)).float()
        identity = identity_target(mix, e_x, groups)
        targets = attribute_loss.targets(x)
    param = mix.trainable.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=config.lr, betas=config.betas, eps=config.adam_eps)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimiser, milestones=milestones(steps, config.lr_milestones), gamma=config.lr_gamma
    )
    loss_trace, cos_trace, group_trace = [], [], []
    cancelled = False
    # the loop differentiates whatever its caller's grad mode: protect() under torch.no_grad() works
    with precision_context(config.precision), torch.enable_grad():
        for step in range(steps):
            with autocast(device, config.precision), saved_tensor_budget(config.memory_budget_mib, x.shape[0]):
                outputs = step_losses(
                    param, mix, e_x, identity, targets, groups, generator, face_embedder, attribute_loss, config
                )
            # A compiled step's outputs may live in CUDA-graph memory that its next replay
            # overwrites: what outlives the step is a copy, never an output itself. The padding's
            # items are dropped here, before anything is summed or kept.
            per_item, cos, group_term = outputs[0][:b], outputs[1][:b].detach().clone(), outputs[2]
            loss_trace.append(per_item.detach().clone())
            cos_trace.append(cos)
            group_trace.append(group_term.detach().clone())
            optimiser.zero_grad(set_to_none=True)
            with span("backward"):
                (per_item.sum() + group_term).backward()
            # no reference to this step's outputs may be alive when the next step replays its graph
            del per_item, group_term, outputs
            with span("adam"):
                optimiser.step()
            schedule.step()
            if on_step is not None and on_step(step, cos) is False:
                cancelled = True
                break
    return RefineResult(
        trainable=param.detach()[:b],
        loss_trace=torch.stack(loss_trace) if loss_trace else x.new_zeros((0, b)),
        cosine_trace=torch.stack(cos_trace) if cos_trace else x.new_zeros((0, b)),
        group_trace=torch.stack(group_trace) if group_trace else x.new_zeros((0,)),
        steps_run=len(loss_trace),
        cancelled=cancelled,
    )

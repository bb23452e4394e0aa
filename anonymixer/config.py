"""The algorithm's settings: :class:`ProtectConfig`, where every default is defined once, and
:func:`resolve_settings`, the one reader that layers overrides on it.

Precedence, lowest first; each layer overrides the ones below it key by key, and an unknown key
is refused naming its layer:

1. **library defaults**: the fields of :class:`ProtectConfig` below (DESIGN §5);
2. **bundle**: the ``"algorithm"`` object of its ``bundle.json`` (a profile's measured choices,
   e.g. ``anonymixer.profiles.MOBILE1024_ALGORITHM``);
3. **repository**: the ``anonymixer`` model's ``config.pbtxt`` parameter ``algorithm``
   (``python -m exporter repository --algorithm JSON``). The named overrides of tools that build
   their own repository or protect in-process sit here too, printed where they apply: the demo's
   ``--steps``, the evaluation's options;
4. **request**: a request's ``STEPS`` (:meth:`ProtectConfig.steps_for`), up to ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

import numpy as np

from anonymixer.augment import MAX_VIEWS
from anonymixer.losses import ATTRIBUTE_LOSSES
from anonymixer.mixing import MIX_MODES

PRECISIONS = ("fp32", "tf32", "bf16")
INVERSIONS = ("auto", "encoder", "optimize")
# torch.compile modes for the generator's synthesis in the inversion and refinement steps, forward
# and so backward (anonymixer.synthesis); "reduce-overhead" adds CUDA graphs. "off" runs eager.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
T = TypeVar("T")


def config_from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """A settings dataclass from a JSON object: unknown keys are refused by name, lists become
    tuples, and fields that are dataclasses themselves take nested objects."""
    assert is_dataclass(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {[where + k for k in unknown]}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        if is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value, f"{where}{name}.")
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


@dataclass(frozen=True)
class ProtectConfig:
    mix_mode: str = "paper"  # "paper" | "reference" | "rotate" (see anonymixer.mixing)
    identity_layers: tuple[int, int] = (3, 8)  # W+ rows [start, stop) that carry identity
    truncation_psi: float = 0.7  # w_key = w_avg + ψ·(mapping(z) − w_avg)
    # "rotate": the top principal directions of W whitened (anonymixer.wspace), how many of them
    # keep the face's code (0: all; fewer: the rest take the key's, lossy), whether the rows' part
    # off them is kept, and the rotated code's scale toward the mean (anonymixer.mixing.Rotation)
    whitened_dims: int = 128
    kept_dims: int = 0
    keep_residual: bool = False
    rotation_psi: float = 1.0
    # "template": the face's own top principal coordinates kept (gender, age, skin tone live there),
    # and the share of the identity code from the person's template (the rest is the key's own
    # code, common to everyone under the key: more alike across a person's photos, and people)
    attribute_dims: int = 0
    person_share: float = 1.0
    # × (1 − cos(e(y), t)), t = the key's rotation of the face's (its group's mean) FR template:
    # a new identity that follows the person, whatever the photo (0: no target)
    target_weight: float = 0.0
    steps: int = 50  # Adam steps per request (STEPS may lower or raise it up to max_steps)
    max_steps: int = 500
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_milestones: tuple[float, ...] = (0.75, 0.9)  # fractions of the steps (37 and 45 of 50)
    lr_gamma: float = 0.8
    anonymity_weight: float = 10.0
    attribute_weight: float = 0.15
    consistency_weight: float = 10.0
    anonymity_margin: float = 0.0  # m in |cos(e(y), e(x)) − m|
    views: int = 5  # augmented views for a photo alone in its group (0–8); each costs one item
    # "e4e" (the encoder's features) | "fr_features" (the FR network's early features; any bundle)
    # | "farl" (needs farl_checkpoint)
    attribute_loss: str = "e4e"
    farl_checkpoint: str | None = None
    # "auto": the bundle's encoder when it has one, else "optimize" (Adam over W+ from w_avg)
    inversion: str = "auto"
    inversion_steps: int = 50
    inversion_lr: float = 0.03
    inversion_perceptual_weight: float = 1.0  # × the FR early-feature L1 beside pixel MSE + L1 at 256
    # render the losses' images at this size (None: full): StyleGAN2's RGB skip at that size (a
    # proxy), MobileStyleGAN's size // 2 (the full render area-averaged, exactly)
    loss_resolution: int | None = None
    # at most this many items per Adam batch, whole groups (0: auto: 24 on the CPU, memory_fraction
    # on CUDA); compiled, a limit below the last bucket is rounded down to a bucket so that padding
    # never exceeds it
    refine_batch: int = 0
    precision: str = "fp32"  # "fp32" | "tf32" | "bf16": CUDA only; the CPU always runs fp32
    channels_last: bool = False  # NHWC activations and weights in the refinement loop
    compile: str = "off"  # COMPILE_MODES: torch.compile the synthesis (anonymixer.synthesis)
    # Compiled refinement batches are padded with inert items up to the next of these sizes, so
    # that CUDA graphs are recorded once per bucket (Protector.warm_up runs them all at start-up)
    # instead of once per batch size a server sees (1–48: 8 requests × 6 items): powers of two up
    # to 16 (at most 7 padded items, 9 → 16), then steps of 8 up to 48, a full batch of 8 requests
    # with the default 5 views, where batches are large and padding at most a third of one. The
    # graphs themselves are two (automatic dynamic shapes: the first size, then one shape-generic
    # graph). A batch larger than the last bucket runs unpadded. Eager ("off") never pads.
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48)
    # CUDA with refine_batch 0: a refinement batch holds at most (this fraction of the device's
    # free memory − the step's fixed part) / its memory per item, both measured once on the first
    # refinement (Protector.warm_up at start-up); whole groups. The rest is headroom for the
    # estimate's error and other allocations; with several instances on one GPU, divide it
    # among them. A batch that still runs out of memory is split and retried.
    memory_fraction: float = 0.8
    # A refinement or inversion batch whose step saves more than this many MiB for backward (autograd's saved
    # tensors, each storage once) raises MemoryError, as a device out of memory would: the batch
    # is then split, whole groups, and retried. Deterministic and batch-size proportional, so it
    # caps a CPU instance's memory and lets tests run out of memory on purpose. 0: no budget.
    memory_budget_mib: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.mix_mode not in MIX_MODES:
            problems.append(f"mix_mode must be one of {MIX_MODES}")
        if self.whitened_dims < 1 or not 0 <= self.kept_dims <= self.whitened_dims or not 0 < self.rotation_psi <= 1:
            problems.append("whitened_dims must be ≥ 1, kept_dims in 0..whitened_dims, rotation_psi in (0, 1]")
        if not 0 <= self.attribute_dims < self.whitened_dims:
            problems.append("attribute_dims must be in 0..whitened_dims − 1")
        if not 0 < self.person_share <= 1:
            problems.append("person_share must be in (0, 1]")
        if self.target_weight < 0:
            problems.append("target_weight must be ≥ 0")
        if self.inversion not in INVERSIONS:
            problems.append(f"inversion must be one of {INVERSIONS}")
        if self.inversion_steps < 0 or self.inversion_lr <= 0 or self.inversion_perceptual_weight < 0:
            problems.append("inversion_steps must be ≥ 0, inversion_lr > 0, inversion_perceptual_weight ≥ 0")
        if self.attribute_loss not in ATTRIBUTE_LOSSES:
            problems.append(f"attribute_loss must be one of {ATTRIBUTE_LOSSES}")
        if self.attribute_loss == "farl" and not self.farl_checkpoint:
            problems.append("attribute_loss 'farl' needs farl_checkpoint")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        if self.compile not in COMPILE_MODES:
            problems.append(f"compile must be one of {COMPILE_MODES}")
        if not 0 <= self.views <= MAX_VIEWS:
            problems.append(f"views must be in [0, {MAX_VIEWS}]")
        if not 0 <= self.steps <= self.max_steps:
            problems.append(f"steps must be in [0, max_steps={self.max_steps}]")
        if self.refine_batch < 0:
            problems.append("refine_batch must be ≥ 0")
        if any(b < 1 for b in self.batch_buckets) or list(self.batch_buckets) != sorted(set(self.batch_buckets)):
            problems.append("batch_buckets must be increasing sizes ≥ 1")
        if not 0 < self.memory_fraction <= 1:
            problems.append("memory_fraction must be in (0, 1]")
        if self.memory_budget_mib < 0:
            problems.append("memory_budget_mib must be ≥ 0")
        if self.memory_budget_mib and self.compile != "off":
            # the budget is counted by saved-tensor hooks on eager autograd, not on a compiled graph
            problems.append("memory_budget_mib needs compile 'off'")
        if self.lr <= 0 or not 0 < self.lr_gamma <= 1:
            problems.append("lr must be > 0 and lr_gamma in (0, 1]")
        if problems:
            raise ValueError("invalid protect config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProtectConfig:
        return config_from_dict(cls, values)

    def steps_for(self, requested: object | None) -> int:
        """The request layer: a request's steps, else ``steps``; an integer in [0, ``max_steps``]."""
        if requested is None:
            return self.steps
        if (
            isinstance(requested, bool)
            or not isinstance(requested, (int, np.integer))
            or not 0 <= requested <= self.max_steps
        ):
            raise ValueError(f"steps must be an integer in [0, {self.max_steps}], got {requested!r}")
        return int(requested)


@dataclass(frozen=True)
class Overrides:
    """One named layer of :class:`ProtectConfig` values (a JSON object's keys) over the layers below."""

    source: str  # who sets them, as printed: "bundle", "repository parameter 'algorithm'", "--steps"
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Settings:
    """The resolved config and where each value came from."""

    config: ProtectConfig
    layers: tuple[str, ...]  # the sources, lowest first (library defaults not included)
    sources: dict[str, str]  # field → the layer that set it; a field at its library default is absent

    def describe(self) -> str:
        """``bundle: lr=0.005, steps=20; --steps: steps=10``: each layer's values that hold."""
        parts = []
        for layer in self.layers:
            names = [name for name, source in self.sources.items() if source == layer]
            if names:
                parts.append(f"{layer}: " + ", ".join(f"{n}={getattr(self.config, n)}" for n in names))
        return "; ".join(parts) or "library defaults"


def resolve_settings(bundle_config: Mapping[str, Any], *overrides: Overrides) -> Settings:
    """Library defaults < the bundle's ``"algorithm"`` (from its ``bundle.json``, ``bundle_config``)
    < each of ``overrides`` in order. Every merge of settings in the project goes through here."""
    layers = [Overrides("bundle", bundle_config.get("algorithm", {})), *overrides]
    known = {f.name for f in fields(ProtectConfig)}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        unknown = sorted(set(layer.values) - known)
        if unknown:
            raise ValueError(f"{layer.source}: unknown ProtectConfig key(s) {unknown}; known: {sorted(known)}")
        merged.update(layer.values)
        sources.update(dict.fromkeys(layer.values, layer.source))
    return Settings(ProtectConfig.from_dict(merged), tuple(layer.source for layer in layers), sources)

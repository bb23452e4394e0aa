"""``Protector``: aligned faces + keys → protected faces and their templates (the core's public API).

    protector = Protector(bundle.load("build/bundles/tiny"))
    faces = protector.protect([aligned_rgb_uint8, ...], key=b"secret", groups=None, steps=None)

Per call: validate → invert every distinct face (e4e, or by optimisation for a bundle without an
encoder: :mod:`anonymixer.inversion`) → derive each key's latent → mix → refine all items (and
the augmented views of faces alone in their group) in one batch → render at full resolution →
quantise to uint8 as returned → template = FR(crop(returned pixels)), ORIGINAL_SIMILARITY =
cos(template, FR(original)): a client that embeds the picture it got back finds the template.

Refinement batches hold at most :meth:`Protector.refine_limit` items, whole groups (on CUDA: what
a memory budget holds, from a step's memory measured once). A batch that still runs out of memory
(the device's, or ``memory_budget_mib``) is split in halves, whole groups, and retried down to one
group; :meth:`Protector.protect_each` reports a group that does not fit even alone as
:class:`OutOfMemory` for its items, and the other items are protected as usual (batch
composition changes no result). :meth:`Protector.protect` raises instead.

Identical images within one call are inverted once (a face protected under two keys, say): the
inversion depends on the image alone, so sharing it changes no result.

The gradient-free stages (encode, map, render, embed) are :class:`Stages` callables: the bundle's
PyTorch modules by default; the Triton model swaps in calls to the exported models. The
refinement itself always runs the PyTorch modules (it needs their gradients).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from anonymixer.augment import augmented_views, view_params
from anonymixer.bundle import Bundle
from anonymixer.config import ProtectConfig
from anonymixer.images import quantize, to_uint8
from anonymixer.inversion import ReconstructionLoss, invert_latents
from anonymixer.keys import SecretKey, key_latents
from anonymixer.losses import ALIGNED_SIZE, AttributeLoss, E4EFeatureLoss, FRFeatureLoss, fr_crop, resize
from anonymixer.mixing import Mix, mix_latents
from anonymixer.refine import RefineResult, StepCallback, padded_size, refine_latents, set_memory_format

KeyLike = SecretKey | bytes | bytearray | str
# Measured (benchmarks/refine_bench.py, tiny, 2-core CPU): 22 ms per item and step at 24 items,
# 30 ms at 48 — larger batches fall out of cache. On CUDA the device's memory sets the limit.
CPU_REFINE_BATCH = 24
MEMORY_ERRORS = (MemoryError, torch.cuda.OutOfMemoryError)


@dataclass
class ProtectedFace:
    image: np.ndarray  # uint8 [R, R, 3], the protected face at the generator's resolution
    template: np.ndarray  # float32 [D], L2-normalised FR embedding of the protected face
    original_similarity: float  # cos(template, embedding of the original): the privacy gauge
    loss_trace: list[float] = field(default_factory=list)  # anonymity + attribute loss per step
    steps: int = 0


def memory_chunk_limit(free_bytes: int, per_item_bytes: int, fixed_bytes: int, fraction: float) -> int:
    """Items per refinement batch that fit in ``fraction`` of ``free_bytes`` when a batch of n
    items needs ``fixed_bytes + n · per_item_bytes``; at least 1 (a group alone is always tried)."""
    return max(1, int((free_bytes * fraction - fixed_bytes) // max(per_item_bytes, 1)))


@dataclass(frozen=True)
class OutOfMemory:
    """The outcome of an item whose group did not fit in memory even alone in its refinement batch."""

    message: str  # the memory error of that last try (sizes only: no key, latent or embedding)


def check_image(image: object, index: int) -> np.ndarray:
    """An aligned face: uint8 [H, W, 3], square. Raises ValueError naming the item."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index}: expected a numpy uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: dtype must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: shape must be [H, W, 3] (RGB), got {list(image.shape)}")
    if image.shape[0] != image.shape[1] or image.shape[0] < 16:
        raise ValueError(f"image {index}: an aligned face must be square and at least 16 px, got {list(image.shape)}")
    return image


def aligned_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] → [B, 3, 256, 256] in [-1, 1] (the e4e alignment size)."""
    return resize(pixels.float() / 127.5 - 1, ALIGNED_SIZE)


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 HWC → [3, 256, 256] in [-1, 1] (:func:`aligned_input` of one picture)."""
    return aligned_input(torch.tensor(image, device=device).permute(2, 0, 1)[None])[0]


def build_attribute_loss(config: ProtectConfig, model: Bundle) -> AttributeLoss:
    if config.attribute_loss == "farl":
        from anonymixer.farl import FaRLTokenLoss

        assert config.farl_checkpoint is not None
        return FaRLTokenLoss.from_checkpoint(config.farl_checkpoint, device=model.w_avg.device)
    if config.attribute_loss == "fr_features":
        return FRFeatureLoss(model.face_embedder)
    return E4EFeatureLoss(model.require_encoder("the e4e attribute loss").encoder)


def resolve_inversion(config: ProtectConfig, model: Bundle) -> str:
    """``encoder`` or ``optimize``: ``auto`` picks the encoder when the bundle has one."""
    if config.inversion == "auto":
        return "encoder" if model.encoder is not None else "optimize"
    if config.inversion == "encoder":
        model.require_encoder("inversion 'encoder'")
    return config.inversion


@dataclass
class Stages:
    """The gradient-free network calls, batch-first tensors on the Protector's device."""

    encode: Callable[[torch.Tensor], torch.Tensor]  # aligned [B, 3, 256, 256] → W+ (latent_avg added); e4e only
    mapping: Callable[[torch.Tensor], torch.Tensor]  # z [B, d] → w [B, d]
    render: Callable[[torch.Tensor], torch.Tensor]  # W+ → image [B, 3, R, R]
    embed: Callable[[torch.Tensor], torch.Tensor]  # FR input [B, 3, 112, 112] → embedding [B, D]


def torch_stages(model: Bundle) -> Stages:
    def encode(x: torch.Tensor) -> torch.Tensor:
        inverter = model.require_encoder("inverting a face")
        return inverter(resize(x, inverter.encoder.input_size))

    return Stages(
        encode=encode,
        mapping=model.generator.mapping,
        render=model.generator.synthesis,
        embed=model.face_embedder,
    )


class Protector:
    """Runs the whole algorithm on one device. Not thread-safe: one call at a time per instance.

    After each :meth:`protect`, ``timings`` holds the seconds spent per stage (encode or invert,
    map, refine, render, embed) of that call, ``refined_items`` how many items it refined
    (augmented views included; not those of groups out of memory), ``inverted_items`` how many
    distinct faces it inverted and ``splits`` one line per refinement batch that ran out of
    memory and was split (sizes only).
    """

    def __init__(
        self, model: Bundle, config: ProtectConfig | None = None, *, salt: bytes = b"", stages: Stages | None = None
    ) -> None:
        self.model = model
        self.config = config or ProtectConfig.from_dict(model.config.get("algorithm", {}))
        self.salt = salt
        self.device = model.w_avg.device
        self.inversion = resolve_inversion(self.config, model)
        self.attribute_loss = build_attribute_loss(self.config, model)
        if self.config.channels_last:  # the refinement loop's layout (ProtectConfig.channels_last)
            set_memory_format(model.networks, channels_last=True)
        self.stages = stages or torch_stages(model)
        self.timings: dict[str, float] = {}
        self.refined_items = self.inverted_items = 0
        self.splits: list[str] = []
        self._limit: int | None = None  # refine_limit(), derived at its first call

    def _keys(self, key: KeyLike | Sequence[KeyLike], n: int) -> list[SecretKey]:
        if isinstance(key, (SecretKey, bytes, bytearray, str)):
            key = [key] * n
        keys = list(key)
        if len(keys) != n:
            raise ValueError(f"got {n} images but {len(keys)} keys (give one key, or one per image)")
        out = []
        for i, k in enumerate(keys):
            try:
                out.append(SecretKey.of(k))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"key {i}: {exc}") from None
        return out

    def _groups(self, groups: Sequence[int] | None, keys: list[SecretKey]) -> list[int]:
        n = len(keys)
        if groups is None:
            return list(range(n))
        groups = list(groups)
        if len(groups) != n:
            raise ValueError(f"got {n} images but {len(groups)} groups")
        first: dict[int, int] = {}
        for i, g in enumerate(groups):
            if not isinstance(g, (int, np.integer)) or isinstance(g, bool):
                raise ValueError(f"group {i}: must be an integer, got {type(g).__name__}")
            j = first.setdefault(int(g), i)
            if keys[j] != keys[i]:
                raise ValueError(
                    f"items {j} and {i} share group {g} but not their key (a group is one person, one key)"
                )
        return [int(g) for g in groups]

    @torch.no_grad()
    def template(self, image: np.ndarray) -> np.ndarray:
        """FR template of an aligned face (uint8 [H, W, 3]) with the same crop the losses use."""
        x = image_tensor(check_image(image, 0), self.device)[None]
        return self.stages.embed(fr_crop(x))[0].float().cpu().numpy()

    def protect(
        self,
        images: Sequence[np.ndarray],
        key: KeyLike | Sequence[KeyLike],
        *,
        groups: Sequence[int] | None = None,
        steps: int | None = None,
        on_step: StepCallback | None = None,
        latents: torch.Tensor | None = None,
    ) -> list[ProtectedFace]:
        """Protect aligned faces; ``latents`` [B, n_latent, d] (from :meth:`invert`) skips the inversion.
        Raises MemoryError when a group does not fit in memory even alone (see :meth:`protect_each`)."""
        outcomes = self.protect_each(images, key, groups=groups, steps=steps, on_step=on_step, latents=latents)
        faces = [o for o in outcomes if isinstance(o, ProtectedFace)]
        for outcome in outcomes:
            if isinstance(outcome, OutOfMemory):
                raise MemoryError(outcome.message)
        return faces

    def protect_each(
        self,
        images: Sequence[np.ndarray],
        key: KeyLike | Sequence[KeyLike],
        *,
        groups: Sequence[int] | None = None,
        steps: int | None = None,
        on_step: StepCallback | None = None,
        latents: torch.Tensor | None = None,
    ) -> list[ProtectedFace | OutOfMemory]:
        """:meth:`protect` for many users at once: each item's face, or :class:`OutOfMemory` for
        the items of a group that does not fit in memory even alone; the other groups are unaffected."""
        images = list(images)
        if not images:
            raise ValueError("no images given")
        originals = [check_image(im, i) for i, im in enumerate(images)]
        keys = self._keys(key, len(originals))
        group_ids = self._groups(groups, keys)
        if steps is None:
            steps = self.config.steps
        if (
            isinstance(steps, bool)
            or not isinstance(steps, (int, np.integer))
            or not 0 <= steps <= self.config.max_steps
        ):
            raise ValueError(f"steps must be an integer in [0, {self.config.max_steps}], got {steps!r}")

        n = len(originals)
        x = torch.stack([image_tensor(im, self.device) for im in originals])
        # A face alone in its group gets augmented views that join it as one group. As in the
        # reference code, every view starts from the face's own mix; the views differ only in the
        # image their anonymity and attribute losses compare against.
        sizes = {g: group_ids.count(g) for g in group_ids}
        view_x, source = [], list(range(n))
        for i, image in enumerate(originals):
            if sizes[group_ids[i]] == 1 and self.config.views:
                views = augmented_views(x[i], view_params(keys[i], image, self.config.views))
                view_x.append(views)
                source += [i] * len(views)
        all_x = torch.cat([x, *view_x])
        index = torch.tensor(source, device=self.device)
        _, inverse = np.unique(np.asarray([group_ids[i] for i in source]), return_inverse=True)
        all_groups = torch.from_numpy(inverse.astype(np.int64)).to(self.device)

        model, stages = self.model, self.stages
        timer = _StageTimer(self.device)
        if latents is not None and tuple(latents.shape) != (n, model.n_latent, model.style_dim):
            raise ValueError(f"latents must be [{n}, {model.n_latent}, {model.style_dim}], got {list(latents.shape)}")
        w_real = (self._invert(x, timer) if latents is None else latents.to(self.device).float())[index]
        with torch.no_grad(), timer("map"):
            w_key = key_latents(keys, stages.mapping, model.w_avg, salt=self.salt, psi=self.config.truncation_psi)
        mix = mix_latents(w_real, w_key[index], self.config.mix_mode, self.config.identity_layers)
        trainable = mix.trainable.clone()
        traces: list[list[float]] = [[] for _ in source]
        failed: dict[int, str] = {}  # refined item → the memory error of its group alone
        steps_run = int(steps)
        self.splits = []
        with timer("refine"):
            pending = self._chunks(all_groups)
            while pending:
                chunk = pending.pop(0)
                result = self._refine(mix.take(chunk), all_x[chunk], all_groups[chunk], int(steps), on_step)
                if isinstance(result, str):
                    halves = _halves(chunk, all_groups)
                    if halves:
                        self.splits.append(
                            f"a refinement batch of {len(chunk)} items ran out of memory; retrying it as "
                            f"{len(halves[0])} + {len(halves[1])} items: {result}"
                        )
                        pending[:0] = halves
                    else:
                        failed.update(dict.fromkeys(chunk.tolist(), result))
                    continue
                trainable[chunk] = result.trainable
                for i, trace in zip(chunk.tolist(), result.loss_trace.T.cpu().tolist(), strict=True):
                    traces[i] = trace
                steps_run = min(steps_run, result.steps_run)
                if result.cancelled:
                    break
        done = [i for i in range(n) if i not in failed]
        faces: dict[int, ProtectedFace] = {}
        if done:
            kept = torch.tensor(done, device=self.device)
            with torch.no_grad():
                with timer("render"):
                    pixels = quantize(stages.render(mix.take(kept).assemble(trainable[kept])).float())
                with timer("embed"):
                    # the template of exactly the pixels returned, read back as any aligned face is
                    returned = fr_crop(aligned_input(pixels))
                    embeddings = stages.embed(torch.cat([returned, fr_crop(x[kept])])).float()
                templates, originals_emb = embeddings[: len(done)], embeddings[len(done) :]
                similarity = (templates * originals_emb).sum(dim=1)
            pictures = pixels.permute(0, 2, 3, 1).cpu().numpy()
            faces = {
                i: ProtectedFace(
                    image=pictures[k],
                    template=templates[k].cpu().numpy(),
                    original_similarity=float(similarity[k]),
                    loss_trace=traces[i],
                    steps=steps_run,
                )
                for k, i in enumerate(done)
            }
        self.timings, self.refined_items = timer.seconds, len(source) - len(failed)
        return [faces[i] if i in faces else OutOfMemory(failed[i]) for i in range(n)]

    def _refine(
        self, mix: Mix, x: torch.Tensor, groups: torch.Tensor, steps: int, on_step: StepCallback | None
    ) -> RefineResult | str:
        """One refinement batch, or the message of the memory error it ran into."""
        try:
            return refine_latents(
                mix,
                x,
                groups,
                generator=self.model.generator,
                face_embedder=self.model.face_embedder,
                attribute_loss=self.attribute_loss,
                config=self.config,
                steps=steps,
                on_step=on_step,
            )
        except MEMORY_ERRORS as exc:
            message = str(exc)
        # Only now are the failed step's frames, and the tensors they held, released.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return message

    def _invert(self, x: torch.Tensor, timer: _StageTimer) -> torch.Tensor:
        """W+ [B, n_latent, d] of the aligned faces ``x``, each distinct face inverted once."""
        slots: dict[bytes, int] = {}  # digest → index among the distinct faces, in first-seen order
        slot = [slots.setdefault(hashlib.sha256(face.cpu().numpy().tobytes()).digest(), len(slots)) for face in x]
        faces = x[[slot.index(k) for k in range(len(slots))]]
        self.inverted_items = len(slots)
        if self.inversion == "encoder":
            with timer("encode"), torch.no_grad():
                w = self.stages.encode(faces).float()
        else:
            with timer("invert"):
                loss = ReconstructionLoss(self.model.face_embedder, self.config.inversion_perceptual_weight)
                w = torch.cat(
                    [
                        invert_latents(
                            faces[chunk],
                            generator=self.model.generator,
                            latent_avg=self.model.latent_avg,
                            loss=loss,
                            steps=self.config.inversion_steps,
                            lr=self.config.inversion_lr,
                        ).w_plus
                        for chunk in self._chunks(torch.arange(len(slots), device=self.device))
                    ]
                )
        return w[torch.tensor(slot, device=self.device)]

    def invert(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """W+ [B, n_latent, d] of aligned faces (uint8 [H, W, 3]) as :meth:`protect` inverts them.
        For the core's callers (evaluation, benchmarks, the demo's reconstructions): the service
        never returns a face's latent."""
        x = torch.stack([image_tensor(check_image(im, i), self.device) for i, im in enumerate(images)])
        return self._invert(x, _StageTimer(self.device))

    @torch.no_grad()
    def render(self, w_plus: torch.Tensor) -> np.ndarray:
        """uint8 [B, R, R, 3] renders of W+ (``render(invert(faces))``: the reconstructions)."""
        return to_uint8(self.stages.render(w_plus).float())

    def refine_limit(self) -> int:
        """Items per refinement batch, whole groups (0: no limit), derived once: ``refine_batch``,
        else on the CPU :data:`CPU_REFINE_BATCH` and on CUDA what ``memory_fraction`` of the free
        memory holds (:meth:`step_memory`). A compiled step pads each batch to its bucket, so the
        limit is then rounded down to a bucket: padding never takes a batch past it."""
        if self._limit is None:
            limit = self.config.refine_batch
            if not limit and self.device.type == "cpu":
                limit = CPU_REFINE_BATCH
            elif not limit and self.device.type == "cuda":
                limit = self._memory_limit()
            if limit and self.config.compile != "off":
                limit = max((b for b in self.config.batch_buckets if b <= limit), default=limit)
            self._limit = limit
        return self._limit

    def _memory_limit(self) -> int:
        try:
            per_item, fixed = self.step_memory()
        except MEMORY_ERRORS:
            return 1  # not even two items fit: one group at a time, split further on failure
        free = torch.cuda.mem_get_info(self.device)[0]
        # what torch's allocator holds but does not use is this process's to reuse
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return memory_chunk_limit(free, per_item, fixed, self.config.memory_fraction)

    def step_memory(self) -> tuple[int, int]:
        """(bytes per item, fixed bytes) of one refinement step on CUDA: the peak memory above what
        was allocated before, at 1 and at 2 inert items. Eager, to compile nothing here; a compiled
        step usually saves less for backward, and the out-of-memory split covers a short estimate."""
        eager = replace(self.config, compile="off", memory_budget_mib=0.0)
        peaks = []
        for size in (1, 2):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self._refine_inert(size, steps=1, config=eager)
            torch.cuda.synchronize(self.device)
            peaks.append(torch.cuda.max_memory_allocated(self.device) - before)
        torch.cuda.empty_cache()
        per_item = max(peaks[1] - peaks[0], 1)
        return per_item, max(peaks[0] - per_item, 0)

    def _refine_inert(self, size: int, steps: int, config: ProtectConfig | None = None) -> RefineResult:
        """Refine ``size`` inert items (mid-grey originals, every latent row at latent_avg or w_avg,
        one group each): shaped as :meth:`protect_each` shapes a real batch, to measure or compile."""
        model = self.model
        x = torch.zeros(size, 3, ALIGNED_SIZE, ALIGNED_SIZE, device=self.device)
        w_real = model.latent_avg[None].repeat(size, 1, 1)
        mix = mix_latents(w_real, model.w_avg[None].repeat(size, 1), self.config.mix_mode, self.config.identity_layers)
        return refine_latents(
            mix,
            x,
            torch.arange(size, device=self.device),
            generator=model.generator,
            face_embedder=model.face_embedder,
            attribute_loss=self.attribute_loss,
            config=config or self.config,
            steps=steps,
        )

    def warm_up(self, max_items: int | None = None, steps: int = 3) -> list[int]:
        """Ready the refinement before the first request: derive :meth:`refine_limit` (on CUDA
        this measures a step's memory) and, with ``compile`` on, compile the step for every batch
        bucket a refinement batch of at most ``max_items`` items (default: any) can be padded to,
        on inert items, so that no request pays a compile. Returns the buckets compiled. A bucket
        out of memory ends the warm-up and lowers the limit below it. ``steps`` 3: CUDA-graph
        trees record a graph at its second call and replay it from the third."""
        limit = self.refine_limit()
        buckets = self.config.batch_buckets
        if self.config.compile == "off" or not buckets:
            return []
        largest = min([n for n in (max_items, limit) if n] or [buckets[-1]])
        compiled: list[int] = []
        for size in (b for b in buckets if b <= padded_size(largest, buckets)):
            try:
                self._refine_inert(size, steps)
            except MEMORY_ERRORS:
                self._limit = compiled[-1] if compiled else 1
                break
            compiled.append(size)
        if self.device.type == "cuda":  # a failed bucket's tensors are released only now
            torch.cuda.empty_cache()
        return compiled

    def _chunks(self, groups: torch.Tensor) -> list[torch.Tensor]:
        """Item indices per refinement batch: whole groups, at most :meth:`refine_limit` items each."""
        limit = self.refine_limit()
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups.tolist()):
            members.setdefault(g, []).append(i)
        chunks: list[list[int]] = [[]]
        for items in members.values():
            if limit and chunks[-1] and len(chunks[-1]) + len(items) > limit:
                chunks.append([])
            chunks[-1] += items
        return [torch.tensor(c, device=groups.device) for c in chunks]


def _halves(chunk: torch.Tensor, groups: torch.Tensor) -> list[torch.Tensor]:
    """``chunk``'s items as two batches of whole groups (the first half of its groups, in order,
    and the rest); none when the chunk is a single group."""
    members = groups[chunk].tolist()
    order = list(dict.fromkeys(members))
    if len(order) < 2:
        return []
    first = set(order[: (len(order) + 1) // 2])
    in_first = torch.tensor([g in first for g in members], device=chunk.device)
    return [chunk[in_first], chunk[~in_first]]


class _StageTimer:
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

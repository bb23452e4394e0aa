"""``Protector``: aligned faces + keys → protected faces and their templates (the core's public API).

    protector = Protector(bundle.load("build/bundles/tiny"))
    faces = protector.protect([aligned_rgb_uint8, ...], key=b"secret", groups=None, steps=None)

The pipeline, as the paper reads (DESIGN §5), one block each in :meth:`Protector.protect_each`:

1. **check** the call: faces, keys, groups, steps (:mod:`anonymixer.validation`);
2. **views**: a face alone in its group gets augmented views that join it as one group;
3. **invert** every distinct face once (e4e, or by optimisation: :mod:`anonymixer.inversion`, in
   batches split on out-of-memory as the refinement's are; a face that does not fit even alone is
   reported as :class:`OutOfMemory` for its items, which go no further);
4. **mix**: each key's latent (:mod:`anonymixer.keys`) into its face's (:mod:`anonymixer.mixing`);
5. **refine** every item together, in the batches :class:`~anonymixer.scheduler.RefinementScheduler`
   forms (whole groups within a memory limit; a batch out of memory is split, and a group that
   does not fit even alone is reported as :class:`OutOfMemory` for its items; once ``on_step``
   stops the refinement, the items of the batches not yet run are reported as :class:`Stopped`);
6. **render** at full resolution and quantise to uint8, as returned (refined items only: a face
   that was not refined is never returned);
7. **template** = FR(crop(returned pixels)), ``original_similarity`` = cos(template, FR(original)):
   a client that embeds the picture it got back finds the template.

Identical images within one call are inverted once (a face protected under two keys, say): the
inversion depends on the image alone, so sharing it changes no result. The gradient-free network
calls are :class:`~anonymixer.stages.Stages` (the bundle's modules, or the Triton model's calls to
the exported ones); the refinement always runs the PyTorch modules (it needs their gradients), and
so do the keys' latents (:func:`~anonymixer.keys.key_latents`: fp32 on the CPU, the same everywhere).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from anonymixer.augment import augmented_views, view_params
from anonymixer.bundle import Bundle
from anonymixer.config import ProtectConfig, resolve_settings
from anonymixer.images import quantize, to_uint8
from anonymixer.inversion import InversionCallback, invert_as_configured
from anonymixer.keys import SecretKey, cpu_float32, key_latents, key_rotation
from anonymixer.losses import (
    ALIGNED_SIZE,
    AttributeLoss,
    E4EFeatureLoss,
    FRFeatureLoss,
    fr_crop,
    group_templates,
    resize,
)
from anonymixer.mixing import KeyTurn, Mix, Rotation, TemplateCode, mix_latents, unmix
from anonymixer.refine import StepCallback, set_memory_format
from anonymixer.scheduler import Refined, RefinementScheduler
from anonymixer.stages import Stages, StageTimer, torch_stages
from anonymixer.validation import KeyLike, check_groups, check_image, check_images, check_keys
from anonymixer.wspace import fit_wspace


@dataclass
class ProtectedFace:
    image: np.ndarray  # uint8 [R, R, 3], the protected face at the generator's resolution
    template: np.ndarray  # float32 [D], L2-normalised FR embedding of the protected face
    original_similarity: float  # cos(template, embedding of the original): the privacy gauge
    loss_trace: list[float] = field(default_factory=list)  # anonymity + attribute loss per step
    steps: int = 0  # the refinement steps it had: fewer than asked when on_step stopped its batch


@dataclass(frozen=True)
class OutOfMemory:
    """The outcome of an item whose group did not fit in memory even alone in its refinement batch,
    or whose face's inversion (by optimisation) did not fit even alone."""

    message: str  # the memory error of that last try (sizes only: no key, latent or embedding)


@dataclass(frozen=True)
class Stopped:
    """The outcome of an item whose refinement never ran: ``on_step`` returned False in an earlier
    refinement batch. No picture comes back for it: its unrefined mix was never made anonymous."""


Outcome = ProtectedFace | OutOfMemory | Stopped


class RefinementStopped(Exception):
    """:meth:`Protector.protect`'s answer when ``on_step`` stopped the refinement before every
    face was refined (:meth:`Protector.protect_each` reports those faces as :class:`Stopped`)."""


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


class Protector:
    """Runs the whole algorithm on one device. Not thread-safe: one call at a time per instance.

    ``config`` defaults to the bundle's settings over the library's (:func:`resolve_settings`);
    ``attribute_loss`` replaces the one ``config`` names (a benchmark's variant). After each
    :meth:`protect`, ``timings`` holds the seconds spent per stage (encode or invert, map, refine,
    render, embed) of that call, ``refined_items`` how many items it refined (augmented views
    included; not those of groups out of memory, nor those on_step stopped before their batch
    ran), ``inverted_items`` how many distinct faces it
    inverted and ``splits`` one line per refinement batch that ran out of memory and was split.
    """

    def __init__(
        self,
        model: Bundle,
        config: ProtectConfig | None = None,
        *,
        salt: bytes = b"",
        stages: Stages | None = None,
        attribute_loss: AttributeLoss | None = None,
        on_inversion_step: InversionCallback | None = None,
    ) -> None:
        self.model = model
        # called after every step of an inversion by optimisation (a server's heartbeat: minutes of
        # inversion on a CPU must show progress as the refinement's on_step does)
        self.on_inversion_step = on_inversion_step
        self.config = config or resolve_settings(model.config).config
        self.salt = salt
        self.device = model.w_avg.device
        self.inversion = resolve_inversion(self.config, model)
        if self.config.channels_last:  # the refinement loop's layout (ProtectConfig.channels_last)
            set_memory_format(model.networks, channels_last=True)
        self.stages = stages or torch_stages(model)
        # keys are mapped by the bundle's own network in fp32 on the CPU (anonymixer.keys), never
        # through a stage: copied off the device once here, not at every call
        self.key_generator = cpu_float32(model.generator)
        self.wspace = (
            fit_wspace(self.key_generator.mapping, model.style_dim, self.config.whitened_dims).to(self.device)
            if self.config.mix_mode in ("rotate", "template")
            else None
        )
        self.scheduler = RefinementScheduler(
            model, self.config, attribute_loss or build_attribute_loss(self.config, model)
        )
        self.timings: dict[str, float] = {}
        self.refined_items = self.inverted_items = 0
        self.splits: list[str] = []

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
        Raises MemoryError when a group does not fit in memory even alone, and RefinementStopped
        when ``on_step`` stopped the refinement before some faces were refined (see :meth:`protect_each`)."""
        outcomes = self.protect_each(images, key, groups=groups, steps=steps, on_step=on_step, latents=latents)
        for outcome in outcomes:
            if isinstance(outcome, OutOfMemory):
                raise MemoryError(outcome.message)
        faces = [o for o in outcomes if isinstance(o, ProtectedFace)]
        if len(faces) < len(outcomes):
            raise RefinementStopped(
                f"on_step stopped the refinement with {len(faces)} of {len(outcomes)} faces refined"
            )
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
    ) -> list[Outcome]:
        """:meth:`protect` for many users at once: each item's face, :class:`OutOfMemory` for the
        items of a group that does not fit in memory even alone (the other groups are unaffected),
        or :class:`Stopped` for the items whose refinement batch never ran because ``on_step``
        returned False in an earlier one. Check each outcome's type: only a ProtectedFace is a face."""
        model, timer = self.model, StageTimer(self.device)
        # 1. check
        originals = check_images(images)
        keys = check_keys(key, len(originals))
        group_ids = check_groups(groups, keys)
        steps = self.config.steps_for(steps)
        n = len(originals)
        if latents is not None and tuple(latents.shape) != (n, model.n_latent, model.style_dim):
            raise ValueError(f"latents must be [{n}, {model.n_latent}, {model.style_dim}], got {list(latents.shape)}")

        # 2. views: item i of the refinement refines the face source[i] against the image all_x[i]
        x = torch.stack([image_tensor(im, self.device) for im in originals])
        all_x, source, all_groups = self._with_views(x, originals, keys, group_ids)

        # 3. invert: a photo that does not fit in memory even alone is out of memory, and its items
        # (its views too) go no further
        self.splits, self.refined_items = [], 0
        w_photos, lost = self._invert(x, timer) if latents is None else (latents.to(self.device).float(), {})
        outcomes: dict[int, Outcome] = {i: OutOfMemory(message) for i, message in lost.items()}
        photos = [i for i in range(n) if i not in lost]  # the refinement's first items; their views follow
        if photos:
            alive = torch.tensor([j for j, i in enumerate(source.tolist()) if i not in lost], device=self.device)
            all_x, source, all_groups = all_x[alive], source[alive], all_groups[alive]
            # 4. mix
            with timer("map"):
                templates = self.templates(all_x, all_groups) if self.config.mix_mode == "template" else None
                mix = self.mix(w_photos[source], keys, source, templates)
            # 5. refine
            with timer("refine"):
                refined = self.scheduler.refine(mix, all_x, all_groups, steps, on_step)
            self.splits += refined.splits
            self.refined_items = len(source) - len(refined.failed) - len(refined.stopped)
            outcomes |= self._finish(refined, mix, x, photos, timer)
        self.timings = timer.seconds
        return [outcomes[i] for i in range(n)]

    def _finish(
        self, refined: Refined, mix: Mix, x: torch.Tensor, photos: list[int], timer: StageTimer
    ) -> dict[int, Outcome]:
        """Steps 6 and 7: the outcome of each of ``photos``, the photos ``x`` that refinement items
        0, 1, … refined (the views follow them): a face for those refined, else what became of them."""
        outcomes: dict[int, Outcome] = {photos[k]: OutOfMemory(m) for k, m in refined.failed.items() if k < len(photos)}
        outcomes |= {photos[k]: Stopped() for k in refined.stopped if k < len(photos)}
        done = [k for k, i in enumerate(photos) if i not in outcomes]  # refinement items
        if done:
            # 6. render, 7. template: of exactly the pixels returned, read back as any aligned face is
            kept = torch.tensor(done, device=self.device)
            with torch.no_grad():
                with timer("render"):
                    pixels = quantize(self.stages.render(mix.take(kept).assemble(refined.trainable[kept])).float())
                with timer("embed"):
                    returned = fr_crop(aligned_input(pixels))
                    originals = x[[photos[k] for k in done]]
                    embeddings = self.stages.embed(torch.cat([returned, fr_crop(originals)])).float()
                templates, originals_emb = embeddings[: len(done)], embeddings[len(done) :]
                similarity = (templates * originals_emb).sum(dim=1)
            pictures = pixels.permute(0, 2, 3, 1).cpu().numpy()
            for row, k in enumerate(done):
                outcomes[photos[k]] = ProtectedFace(
                    image=pictures[row],
                    template=templates[row].cpu().numpy(),
                    original_similarity=float(similarity[row]),
                    loss_trace=refined.traces[k],
                    steps=refined.steps[k],
                )
        return outcomes

    @torch.no_grad()
    def mix(
        self,
        w_real: torch.Tensor,
        keys: list[SecretKey],
        source: torch.Tensor | None = None,
        templates: torch.Tensor | None = None,
    ) -> Mix:
        """Step 4: the faces' W+ ``w_real`` [B, n_latent, d] mixed with the key of each item
        (``keys[source[i]]``; ``source`` None: item i has key i) as the config's mix mode says;
        ``template`` needs each item's person's FR template ``templates`` [B, E] (:meth:`templates`)."""
        source = torch.arange(len(keys)) if source is None else source
        c = self.config
        w_key = key_latents(keys, self.key_generator, self.model.w_avg, salt=self.salt, psi=c.truncation_psi)
        code = self._template_code(keys, source, templates)
        mix = mix_latents(w_real, w_key[source], c.mix_mode, c.identity_layers, self._key_turn(keys, source), code)
        if c.target_weight:
            mix = replace(mix, template_rotation=self._rotations(keys, source, "template", self.model.embedding_size))
        return mix

    @torch.no_grad()
    def templates(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """[B, E]: the mean FR template of each item's group of aligned faces ``x`` [B, 3, 256, 256],
        by the bundle's own network in fp32 as the refinement sees it (never a served FP16 engine:
        the template decides the new identity)."""
        with torch.autocast(self.device.type, enabled=False):
            e = torch.nn.functional.normalize(self.model.face_embedder(fr_crop(x.float())).float(), dim=1)
        return group_templates(e, groups)

    def _template_code(
        self, keys: list[SecretKey], source: torch.Tensor, templates: torch.Tensor | None
    ) -> TemplateCode | None:
        if self.config.mix_mode != "template":
            return None
        if templates is None:
            raise ValueError("mix_mode 'template' needs the people's templates")
        assert self.wspace is not None
        c = self.config
        projections = self._rotations(keys, source, "template", self.model.embedding_size)[:, : self.wspace.dims]
        return TemplateCode(
            self.wspace, projections, templates, self._key_codes(keys, source), c.attribute_dims, c.person_share
        )

    def _rotations(self, keys: list[SecretKey], source: torch.Tensor, what: str, dims: int) -> torch.Tensor:
        """[len(source), dims, dims] float64: each item's key rotation of ``what``, drawn once per key."""
        drawn: dict[SecretKey, torch.Tensor] = {}
        for k in keys:
            if k not in drawn:
                drawn[k] = torch.from_numpy(key_rotation(k, self.salt, dims, what))
        return torch.stack([drawn[keys[i]] for i in source.tolist()]).to(self.device)

    def _key_turn(self, keys: list[SecretKey], source: torch.Tensor) -> KeyTurn | None:
        """What ``rotate`` turns each item's identity rows with (None for the other mix modes)."""
        if self.config.mix_mode != "rotate" or self.wspace is None:
            return None
        c = self.config
        return KeyTurn(
            Rotation(c.kept_dims or c.whitened_dims, c.keep_residual, c.rotation_psi),
            self.wspace,
            self._rotations(keys, source, "latent", c.whitened_dims),
            self._key_codes(keys, source),
        )

    def _key_codes(self, keys: list[SecretKey], source: torch.Tensor) -> torch.Tensor:
        """[len(source), whitened dims] float64: each item's key's own whitened code (untruncated)."""
        assert self.wspace is not None
        unique = list(dict.fromkeys(keys))
        own = key_latents(unique, self.key_generator, self.model.w_avg, salt=self.salt, psi=1.0)
        index = torch.tensor([unique.index(keys[i]) for i in source.tolist()], device=self.device)
        return self.wspace.split(own)[0][index]

    def _with_views(
        self, x: torch.Tensor, originals: list[np.ndarray], keys: list[SecretKey], group_ids: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, source face, group) of every item to refine: the faces, then the augmented views
        of each face alone in its group, which join its group. As in the reference code, every view
        starts from the face's own mix; the views differ only in the image their anonymity and
        attribute losses compare against."""
        sizes = {g: group_ids.count(g) for g in group_ids}
        view_x, source = [], list(range(len(originals)))
        for i, image in enumerate(originals):
            if sizes[group_ids[i]] == 1 and self.config.views:
                views = augmented_views(x[i], view_params(keys[i], image, self.config.views))
                view_x.append(views)
                source += [i] * len(views)
        _, inverse = np.unique(np.asarray([group_ids[i] for i in source]), return_inverse=True)
        groups = torch.from_numpy(inverse.astype(np.int64)).to(self.device)
        return torch.cat([x, *view_x]), torch.tensor(source, device=self.device), groups

    def _invert(self, x: torch.Tensor, timer: StageTimer) -> tuple[torch.Tensor, dict[int, str]]:
        """(W+ [B, n_latent, d] of the aligned faces ``x``, each distinct face inverted once; photo →
        the memory error of a face whose inversion did not fit even alone, its W+ left at latent_avg).
        Inversion batches out of memory are split as refinement batches are (``splits``)."""
        slots: dict[bytes, int] = {}  # digest → index among the distinct faces, in first-seen order
        slot = [slots.setdefault(hashlib.sha256(face.cpu().numpy().tobytes()).digest(), len(slots)) for face in x]
        faces = x[[slot.index(k) for k in range(len(slots))]]
        failed: dict[int, str] = {}
        if self.inversion == "encoder":
            with timer("encode"), torch.no_grad():
                w = self.stages.encode(faces).float()
        else:
            with timer("invert"):
                batches = self.scheduler.run_batches(
                    "an inversion batch",
                    torch.arange(len(slots), device=self.device),  # each face alone: no group to keep whole
                    lambda chunk: (
                        invert_as_configured(
                            faces[chunk], self.model, self.config, on_step=self.on_inversion_step
                        ).w_plus
                    ),
                )
            w = self.model.latent_avg[None].repeat(len(slots), 1, 1)
            for chunk, w_chunk in batches.done:
                w[chunk] = w_chunk
            failed = batches.failed
            self.splits += batches.splits
        self.inverted_items = len(slots) - len(failed)
        return w[torch.tensor(slot, device=self.device)], {i: failed[s] for i, s in enumerate(slot) if s in failed}

    def invert(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """W+ [B, n_latent, d] of aligned faces (uint8 [H, W, 3]) as :meth:`protect` inverts them.
        For the core's callers (evaluation, benchmarks, the demo's reconstructions): the service
        never returns a face's latent. Raises MemoryError when a face does not fit even alone."""
        x = torch.stack([image_tensor(check_image(im, i), self.device) for i, im in enumerate(images)])
        self.splits = []
        w, failed = self._invert(x, StageTimer(self.device))
        if failed:
            raise MemoryError(next(iter(failed.values())))
        return w

    @torch.no_grad()
    def unmix(self, w_plus: torch.Tensor, key: KeyLike | Sequence[KeyLike]) -> torch.Tensor:
        """What a holder of each item's key, who knows the algorithm, recovers of the original's W+
        [B, n_latent, d] from a protected face's (:func:`anonymixer.mixing.unmix`): for the
        evaluation's key-aware attack. The service never does this."""
        keys = check_keys(key, len(w_plus))
        turn = self._key_turn(keys, torch.arange(len(keys)))
        c = self.config
        w = w_plus.to(self.device)
        return unmix(w, c.mix_mode, c.identity_layers, self.model.w_avg, turn, self.wspace, c.attribute_dims)

    @torch.no_grad()
    def render(self, w_plus: torch.Tensor) -> np.ndarray:
        """uint8 [B, R, R, 3] renders of W+ (``render(invert(faces))``: the reconstructions)."""
        return to_uint8(self.stages.render(w_plus).float())

    @torch.no_grad()
    def template(self, image: np.ndarray) -> np.ndarray:
        """FR template of an aligned face (uint8 [H, W, 3]) with the same crop the losses use."""
        x = image_tensor(check_image(image, 0), self.device)[None]
        return self.stages.embed(fr_crop(x))[0].float().cpu().numpy()

"""Latent mixing: which W+ rows come from the face, which from the key, which are trained.

``paper`` (the FaceAnonyMixer paper, the default): rows ``[start, stop)`` — the identity layers,
3–7 by default — are replaced by the key's latent and are the only trainable rows; every other
row keeps the face's inversion.

``reference`` (the released reference code): rows ``[0, start)`` come from the key and stay
fixed; rows ``[start, stop)`` keep the face's inversion and are the trainable rows.

``rotate`` (issue 27): rows ``[start, stop)`` are the face's own rows with their identity turned by
the key: each row's whitened code (:mod:`anonymixer.wspace`) is rotated by a key-seeded orthogonal
matrix (:func:`anonymixer.keys.key_rotation`), so that under one key different people stay as far
apart as they were, and under two keys one person's codes are unrelated. ``kept`` < the whitened
dims keeps only the face's top ``kept`` principal coordinates and fills the others from the key's
own code before rotating (lossy: not even a key holder gets the rest back); ``residual`` keeps
(or drops) the part of the face's rows off the whitened subspace; ``psi`` scales the rotated code
toward the mean as truncation does. They are the trainable rows.

``template`` (issue 27): rows ``[start, stop)`` take one whitened code made from the person's
face-recognition template (the mean of their photos' in one call) turned by a key-seeded
orthogonal projection and scaled to the norm of the generator's own codes; the face's first
``attribute_dims`` principal coordinates (gross attributes) stay its own. The template is what
stays the same across a person's photos and differs between people, so one key gives one person
one face and different people different faces; the face's own identity rows are not used at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anonymixer.wspace import WSpace

MIX_MODES = ("paper", "reference", "rotate", "template")


@dataclass(frozen=True)
class Mix:
    """A mixed latent split into its fixed rows and the trainable block ``rows``."""

    fixed: torch.Tensor  # [B, n_latent, d]; rows inside ``rows`` are ignored
    trainable: torch.Tensor  # [B, stop - start, d], the initial value of the trained rows
    rows: tuple[int, int]
    # [B, E, E]: each key's rotation of its face's FR template, the identity the refinement pulls
    # the face toward (ProtectConfig.target_weight); None: no such target
    template_rotation: torch.Tensor | None = None

    def take(self, index: torch.Tensor | slice) -> Mix:
        """The items at ``index`` (a batch subset)."""
        turn = None if self.template_rotation is None else self.template_rotation[index]
        return Mix(self.fixed[index], self.trainable[index], self.rows, turn)

    def assemble(self, trainable: torch.Tensor | None = None) -> torch.Tensor:
        """The full W+ [B, n_latent, d] with ``trainable`` (default: the initial value) in place."""
        start, stop = self.rows
        block = self.trainable if trainable is None else trainable
        return torch.cat([self.fixed[:, :start], block, self.fixed[:, stop:]], dim=1)


def check_rows(rows: tuple[int, int], n_latent: int) -> tuple[int, int]:
    start, stop = rows
    if not 0 < start < stop <= n_latent:
        raise ValueError(f"identity layers must satisfy 0 < start < stop <= {n_latent}, got [{start}, {stop})")
    return start, stop


def mix_latents(
    w_real: torch.Tensor,
    w_key: torch.Tensor,
    mode: str,
    rows: tuple[int, int],
    turn: KeyTurn | None = None,
    code: TemplateCode | None = None,
) -> Mix:
    """Mix face latents ``w_real`` [B, n, d] with key latents ``w_key`` [B, d] (one per item);
    ``rotate`` turns them with ``turn`` instead."""
    if w_real.dim() != 3 or w_key.dim() != 2 or w_key.shape[0] != w_real.shape[0] or w_key.shape[1] != w_real.shape[2]:
        raise ValueError(f"w_real must be [B, n, d] and w_key [B, d]; got {list(w_real.shape)} and {list(w_key.shape)}")
    start, stop = check_rows(rows, w_real.shape[1])
    key_rows = w_key[:, None, :]
    if mode == "paper":
        return Mix(w_real, key_rows.expand(-1, stop - start, -1).clone(), (start, stop))
    if mode == "reference":
        fixed = w_real.clone()
        fixed[:, :start] = key_rows
        return Mix(fixed, w_real[:, start:stop].clone(), (start, stop))
    if mode == "rotate":
        if turn is None:
            raise ValueError("mix_mode 'rotate' needs each key's rotation (a KeyTurn)")
        rows_turned = turn.rotation.apply(w_real[:, start:stop], turn.matrices, turn.codes, turn.space)
        return Mix(w_real, rows_turned.to(w_real.dtype), (start, stop))
    if mode == "template":
        if code is None:
            raise ValueError("mix_mode 'template' needs the people's templates and keys' projections (a TemplateCode)")
        return Mix(w_real, code.rows(w_real[:, start:stop]).to(w_real.dtype), (start, stop))
    raise ValueError(f"mix_mode must be one of {MIX_MODES}, got {mode!r}")


@dataclass(frozen=True)
class Rotation:
    """How ``rotate`` turns a face's identity rows (see the module's docstring)."""

    kept: int  # the face's top principal coordinates kept (≤ the whitened dims)
    residual: bool  # keep the face's rows off the whitened subspace
    psi: float  # the rotated code × psi

    def apply(
        self, rows: torch.Tensor, rotations: torch.Tensor, key_codes: torch.Tensor, space: WSpace
    ) -> torch.Tensor:
        """rows [B, k, d] → the key's rows [B, k, d]; ``rotations`` [B, D, D] and the keys' own
        codes ``key_codes`` [B, D] (float64, D = ``space.dims``)."""
        code, residual = space.split(rows)
        code = torch.cat([code[..., : self.kept], key_codes[:, None, self.kept :].expand(-1, code.shape[1], -1)], -1)
        turned = torch.einsum("bij,bkj->bki", rotations.double(), code) * self.psi
        return space.latent(turned, residual if self.residual else torch.zeros_like(residual))

    def undo(self, rows: torch.Tensor, rotations: torch.Tensor, space: WSpace) -> torch.Tensor:
        """What a key holder recovers from rotated rows [B, k, d] (``rotations`` [B, D, D]): the
        kept coordinates turned back, the mean (zero) in place of the lost ones, the residual as
        it stands."""
        code, residual = space.split(rows)
        back = torch.einsum("bji,bkj->bki", rotations.double(), code) / self.psi
        back[..., self.kept :] = 0
        return space.latent(back, residual)


@dataclass(frozen=True)
class KeyTurn:
    """What ``rotate`` needs of each item's key."""

    rotation: Rotation
    space: WSpace
    matrices: torch.Tensor  # [B, D, D] float64: each key's rotation of the whitened code
    codes: torch.Tensor  # [B, D] float64: each key's own whitened code (fills what ``kept`` drops)


def key_rows(mode: str, rows: tuple[int, int]) -> tuple[int, int]:
    """The W+ rows ``[a, b)`` whose content the key decides in ``mode`` (``reference``: the rows
    before the trained ones; the others: the trained rows themselves)."""
    return (0, rows[0]) if mode == "reference" else rows


def unmix(
    w_plus: torch.Tensor,
    mode: str,
    rows: tuple[int, int],
    w_avg: torch.Tensor,
    turn: KeyTurn | None,
    space: WSpace | None = None,
    attribute_dims: int = 0,
) -> torch.Tensor:
    """What a key holder who knows the algorithm recovers of the original's W+ from a protected
    face's ``w_plus`` [B, n, d]: ``rotate`` turned back (:meth:`Rotation.undo`); ``template`` keeps
    the face's own attribute coordinates (in ``space``) and the mean elsewhere (the rest is the
    template's code, not the face's latent); in the other modes the key's rows hold nothing of the
    face, so the prior's mean ``w_avg`` goes there."""
    out = w_plus.clone()
    a, b = key_rows(mode, rows)
    if mode == "rotate":
        assert turn is not None
        out[:, a:b] = turn.rotation.undo(w_plus[:, a:b], turn.matrices, turn.space).to(w_plus.dtype)
    elif mode == "template":
        assert space is not None
        code = space.split(w_plus[:, a:b])[0]
        code[..., attribute_dims:] = 0
        out[:, a:b] = space.latent(code, torch.zeros_like(w_plus[:, a:b], dtype=torch.float64)).to(w_plus.dtype)
    else:
        out[:, a:b] = w_avg
    return out


@dataclass(frozen=True)
class TemplateCode:
    """What ``template`` makes each item's identity rows of."""

    space: WSpace
    projections: torch.Tensor  # [B, D, E] float64: each key's orthogonal projection of a template
    templates: torch.Tensor  # [B, E]: each item's person's L2-normalised FR template
    key_codes: torch.Tensor  # [B, D] float64: each key's own whitened code
    attribute_dims: int  # the face's own top principal coordinates kept
    share: float  # of the code from the template; the rest from the key's own code

    def rows(self, face_rows: torch.Tensor) -> torch.Tensor:
        """[B, k, d]: the key's code of the template on every row, the face's attributes kept."""
        dims, m = self.space.dims, self.attribute_dims
        person = math.sqrt(dims) * torch.einsum("bde,be->bd", self.projections.double(), self.templates.double())
        code = self.share * person + math.sqrt(1 - self.share**2) * self.key_codes.double()
        own = self.space.split(face_rows)[0]
        code = torch.cat([own[..., :m], code[:, None, m:].expand_as(own[..., m:])], -1)
        return self.space.latent(code, torch.zeros_like(face_rows, dtype=torch.float64))

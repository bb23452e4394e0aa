"""Latent mixing: which W+ rows come from the face, which from the key, which are trained.

``paper`` (the FaceAnonyMixer paper, the default): rows ``[start, stop)`` — the identity layers,
3–7 by default — are replaced by the key's latent and are the only trainable rows; every other
row keeps the face's inversion.

``reference`` (the released reference code): rows ``[0, start)`` come from the key and stay
fixed; rows ``[start, stop)`` keep the face's inversion and are the trainable rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIX_MODES = ("paper", "reference")


@dataclass(frozen=True)
class Mix:
    """A mixed latent split into its fixed rows and the trainable block ``rows``."""

    fixed: torch.Tensor  # [B, n_latent, d]; rows inside ``rows`` are ignored
    trainable: torch.Tensor  # [B, stop - start, d], the initial value of the trained rows
    rows: tuple[int, int]

    def take(self, index: torch.Tensor | slice) -> Mix:
        """The items at ``index`` (a batch subset)."""
        return Mix(self.fixed[index], self.trainable[index], self.rows)

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


def mix_latents(w_real: torch.Tensor, w_key: torch.Tensor, mode: str, rows: tuple[int, int]) -> Mix:
    """Mix face latents ``w_real`` [B, n, d] with key latents ``w_key`` [B, d] (one per item)."""
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
    raise ValueError(f"mix_mode must be one of {MIX_MODES}, got {mode!r}")

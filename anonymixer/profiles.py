"""The two bundle profiles: ``ffhq1024`` (official files) and ``tiny`` (seeded random weights).

``tiny`` keeps every network's real architecture and key layout and shrinks widths, depths and
resolution so a whole protection runs in seconds on two CPU cores. It is for tests and the demo:
its random networks produce structured noise, not faces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anonymixer import bundle
from anonymixer.checkpoints import LoadedCheckpoint, load_checkpoint
from anonymixer.networks import build_encoder, build_face_embedder, build_generator
from anonymixer.seeded_init import seeded_draw, seeded_init_

PROFILES = ("ffhq1024", "tiny")

TINY_GENERATOR: dict[str, Any] = {
    "size": 64,
    "style_dim": 64,
    "n_mlp": 4,
    "channels": {4: 64, 8: 64, 16: 64, 32: 32, 64: 32},
    "lr_mlp": 0.01,
}
TINY_ENCODER: dict[str, Any] = {
    "n_styles": 10,  # = n_latent of the 64 px generator
    "units": [1, 1, 1, 1],
    "widths": [16, 32, 48, 64],
    "style_dim": 64,
    "input_size": 64,
}
TINY_FACE_EMBEDDER: dict[str, Any] = {
    "network": "ir_se",
    "units": [1, 1, 1, 1],
    "widths": [16, 32, 48, 64],
    "embedding_size": 128,
}


def build_tiny(out_dir: str | Path, *, seed: int = 0, fr: str | Path | None = None, overwrite: bool = False) -> Path:
    """Seeded random ``tiny`` bundle; ``fr`` swaps in a real face embedder checkpoint."""
    generator = seeded_init_(build_generator(TINY_GENERATOR), seed, "generator.")
    encoder = seeded_init_(build_encoder(TINY_ENCODER), seed, "encoder.")
    sources: dict[str, Any] = {"seed": seed}
    if fr is None:
        embedder, embedder_arch = (
            seeded_init_(build_face_embedder(TINY_FACE_EMBEDDER), seed, "face_embedder."),
            TINY_FACE_EMBEDDER,
        )
    else:
        embedder, embedder_arch, sources["fr"] = _face_embedder(fr)
    # As in the official e4e file, latent_avg repeats w_avg on every row.
    w_avg = _mapped_mean(generator, seed)
    latent_avg = w_avg.expand(generator.n_latent, -1).clone()
    return bundle.save(
        out_dir,
        profile="tiny",
        generator=generator,
        generator_arch=TINY_GENERATOR,
        encoder=encoder,
        encoder_arch=TINY_ENCODER,
        latent_avg=latent_avg,
        w_avg=w_avg,
        face_embedder=embedder,
        face_embedder_arch=embedder_arch,
        sources=sources,
        overwrite=overwrite,
    )


@torch.no_grad()
def _mapped_mean(generator: torch.nn.Module, seed: int, samples: int = 4096) -> torch.Tensor:
    """Mean of mapping(z) over a fixed, portable set of z (what w_avg is for a trained generator)."""
    z = torch.from_numpy(seeded_draw("tiny.w_avg.z", seed, (samples, generator.style_dim))).float()
    return generator.mapping(z).mean(0)


def _face_embedder(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], dict[str, str]]:
    ckpt = load_checkpoint(path)
    if ckpt.face_embedder is None or ckpt.face_embedder_arch is None:
        raise ValueError(f"{path}: a {ckpt.kind} checkpoint is not a face recognition network")
    return ckpt.face_embedder, ckpt.face_embedder_arch, _source(ckpt)


def _source(ckpt: LoadedCheckpoint) -> dict[str, str]:
    return {"file": ckpt.path.name, "kind": ckpt.kind, "sha256": ckpt.sha256}


def build_ffhq1024(out_dir: str | Path, *, e4e: str | Path, fr: str | Path, overwrite: bool = False) -> Path:
    """Bundle from the official ``e4e_ffhq_encode.pt`` (encoder + generator) and an FR checkpoint."""
    ckpt = load_checkpoint(e4e, expect="e4e")
    assert ckpt.generator is not None
    assert ckpt.encoder is not None
    assert ckpt.latent_avg is not None
    assert ckpt.generator_arch is not None
    assert ckpt.encoder_arch is not None
    embedder, embedder_arch, fr_source = _face_embedder(fr)
    # The official latent_avg repeats one w_avg on every row; the row mean is that w_avg (and a
    # neutral centre for files whose rows differ).
    w_avg = ckpt.latent_avg.mean(0)
    return bundle.save(
        out_dir,
        profile="ffhq1024",
        generator=ckpt.generator,
        generator_arch=ckpt.generator_arch,
        encoder=ckpt.encoder,
        encoder_arch=ckpt.encoder_arch,
        latent_avg=ckpt.latent_avg,
        w_avg=w_avg,
        face_embedder=embedder,
        face_embedder_arch=embedder_arch,
        sources={"e4e": _source(ckpt), "fr": fr_source},
        overwrite=overwrite,
    )

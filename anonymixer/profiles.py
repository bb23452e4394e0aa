"""Bundle profiles: ``ffhq1024`` (the official files, or seeded random weights in their layout),
``mobile1024`` (real trained weights that can be had: MobileStyleGAN-FFHQ from the ``random-face``
wheel, no encoder, MobileFaceNet or IR-SE as FR) and ``tiny`` (seeded random weights).

``tiny`` keeps every network's real architecture and key layout and shrinks widths, depths and
resolution so a whole protection runs in seconds on two CPU cores. It is for tests and the demo:
its random networks produce structured noise, not faces. A random-weight ``ffhq1024`` bundle has
the exact official shapes (export tests and benchmarks of the full-size networks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anonymixer import bundle
from anonymixer.alignment import NEW_BUNDLE_FRAMING
from anonymixer.checkpoints import LoadedCheckpoint, load_checkpoint
from anonymixer.networks import build_encoder, build_face_embedder, build_generator
from anonymixer.networks.stylegan2 import default_channels
from anonymixer.seeded_init import seeded_draw, seeded_init_

PROFILES = ("ffhq1024", "mobile1024", "tiny")
W_AVG_SAMPLES = 4096  # z drawn for w_avg, as the random-face package's own config does

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "generator": {
            "size": 64,
            "style_dim": 64,
            "n_mlp": 4,
            "channels": {4: 64, 8: 64, 16: 64, 32: 32, 64: 32},
            "lr_mlp": 0.01,
        },
        "encoder": {
            "n_styles": 10,  # = n_latent of the 64 px generator
            "units": [1, 1, 1, 1],
            "widths": [16, 32, 48, 64],
            "style_dim": 64,
            "input_size": 64,
        },
        "face_embedder": {"network": "ir_se", "units": [1, 1, 1, 1], "widths": [16, 32, 48, 64], "embedding_size": 128},
    },
    "ffhq1024": {  # StyleGAN2 config-f, e4e on IR-SE50, IR-SE50 ArcFace: the official shapes
        "generator": {"size": 1024, "style_dim": 512, "n_mlp": 8, "channels": default_channels(2), "lr_mlp": 0.01},
        "encoder": {
            "n_styles": 18,
            "units": [3, 4, 14, 3],
            "widths": [64, 128, 256, 512],
            "style_dim": 512,
            "input_size": 256,
        },
        "face_embedder": {
            "network": "ir_se",
            "units": [3, 4, 14, 3],
            "widths": [64, 128, 256, 512],
            "embedding_size": 512,
        },
    },
    # MobileStyleGAN-FFHQ's shapes (as random-face's IR holds them) and MobileFaceNet; no encoder.
    # Random weights in these shapes time mobile1024 where its wheel cannot travel (a GPU machine).
    "mobile1024": {
        "generator": {
            "network": "mobilestylegan",
            "style_dim": 512,
            "n_mlp": 8,
            "channels": [512, 512, 512, 512, 512, 256, 128, 64],
        },
        "encoder": None,
        "face_embedder": {"network": "mobilefacenet", "embedding_size": 128},
    },
}


# mobile1024's algorithm, each value chosen by a committed measurement on real photos (README,
# "mobile1024: the measured choices"; benchmarks/results/2026-12-01-cpu-2core/), and how its
# steps run (benchmarks/results/2026-12-05-cpu-2core/refine_mobile1024_cpu.json: what each bought).
MOBILE1024_ALGORITHM: dict[str, Any] = {
    "inversion": "optimize",
    "inversion_steps": 50,  # inversion_mobile1024.json: the knee of identity (cos 0.72→0.90→0.96 at 25/50/100)
    "identity_layers": [4, 13],  # protection_mobile1024.json, "rows"
    # The identity rows: one code made of the person's FR template turned by the key, the face's top
    # 8 principal coordinates kept (identity_mix_mobile1024_steps0*.json, docs/privacy-evaluation.md,
    # "An identity made of the key and the person": under one key 0.4 % of other people match
    # where replacing the rows gave 65 %, a key holder recovers 0 %, gender and skin tone follow the
    # photo more often than with 0 attribute dims; more consistent across photos than 0, less
    # unlinkable across keys)
    "mix_mode": "template",
    "whitened_dims": 128,
    "attribute_dims": 8,
    "attribute_loss": "fr_features",  # protection_mobile1024.json, "attributes"
    # the first experiment (lr 0.02 broke faces; 0.005 × 20 steps protected 8/8), not swept here
    "lr": 0.005,
    "steps": 20,
    "views": 0,  # protection_mobile1024.json, "views": 2 views bought nothing at 4× the cost
    # The losses see ≤ 256 px: render them the 1024 px image area-averaged to 512 px, exactly
    # (MobileStyleGAN's LL band), skipping the last inverse wavelet transform and its 1024 px tensors.
    "loss_resolution": 512,
    # The synthesis compiled (anonymixer.synthesis): a static graph for batches of 1 and a
    # shape-generic one from 2 up, both compiled at start-up; no padding past 2 (on the CPU a
    # larger batch buys no speed per item, and padding would cost whole items).
    "compile": "default",
    "batch_buckets": [1, 2],
    # At most 2 items per Adam batch (whole groups) instead of the CPU's 24: per item a 1024 px step
    # costs 519 / 569 / 768 ms at batch 1 / 2 / 8 on 2 cores, and batch 8 holds 7.5 GB
    # (refine_mobile1024_cpu.json). On a GPU, "refine_batch": 0 (its memory decides) is the override.
    "refine_batch": 2,
}
MOBILE1024_FRAMING = NEW_BUNDLE_FRAMING  # inversion_mobile1024.json: FFHQ vs e4e framing

RANDOM_PROFILES = tuple(ARCHITECTURES)  # the profiles random_bundle can build


def random_bundle(profile: str = "tiny", *, seed: int = 0, fr: str | Path | None = None) -> bundle.Bundle:
    """An in-memory bundle of seeded random weights; ``fr`` swaps in a real face embedder checkpoint."""
    arch = ARCHITECTURES[profile]
    generator = seeded_init_(build_generator(arch["generator"]), seed, "generator.")
    encoder = seeded_init_(build_encoder(arch["encoder"]), seed, "encoder.") if arch["encoder"] else None
    sources: dict[str, Any] = {"seed": seed}
    if fr is None:
        embedder_arch = arch["face_embedder"]
        embedder = seeded_init_(build_face_embedder(embedder_arch), seed, "face_embedder.")
    else:
        embedder, embedder_arch, sources["fr"] = _face_embedder(fr)
    w_avg = _mapped_mean(generator, seed)
    return bundle.make(
        profile=profile,
        generator=generator,
        generator_arch=arch["generator"],
        encoder=encoder,
        encoder_arch=arch["encoder"],
        latent_avg=w_avg.expand(generator.n_latent, -1).clone(),  # as in e4e's file: w_avg on every row
        w_avg=w_avg,
        face_embedder=embedder,
        face_embedder_arch=embedder_arch,
        sources=sources,
        # mobile1024 runs its own algorithm (inversion by optimisation, its rows and losses)
        **({"framing": MOBILE1024_FRAMING, "algorithm": MOBILE1024_ALGORITHM} if profile == "mobile1024" else {}),
    )


def build_tiny(out_dir: str | Path, *, seed: int = 0, fr: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a seeded random ``tiny`` bundle."""
    return bundle.save(random_bundle("tiny", seed=seed, fr=fr), out_dir, overwrite=overwrite)


@torch.no_grad()
def _mapped_mean(generator: torch.nn.Module, seed: int, samples: int = W_AVG_SAMPLES) -> torch.Tensor:
    """Mean of mapping(z) over a fixed, portable set of z (what w_avg is for a trained generator)."""
    z = torch.from_numpy(seeded_draw("w_avg.z", seed, (samples, generator.style_dim))).float()
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
    assert ckpt.generator is not None and ckpt.encoder is not None and ckpt.latent_avg is not None
    assert ckpt.generator_arch is not None and ckpt.encoder_arch is not None
    embedder, embedder_arch, fr_source = _face_embedder(fr)
    # The official latent_avg repeats one w_avg on every row; the row mean is that w_avg (and a
    # neutral centre for files whose rows differ).
    model = bundle.make(
        profile="ffhq1024",
        generator=ckpt.generator,
        generator_arch=ckpt.generator_arch,
        encoder=ckpt.encoder,
        encoder_arch=ckpt.encoder_arch,
        latent_avg=ckpt.latent_avg,
        w_avg=ckpt.latent_avg.mean(0),
        face_embedder=embedder,
        face_embedder_arch=embedder_arch,
        sources={"e4e": _source(ckpt), "fr": fr_source},
    )
    return bundle.save(model, out_dir, overwrite=overwrite)


def build_mobile1024(
    out_dir: str | Path, *, fr: str | Path, generator_ir: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Bundle of MobileStyleGAN-FFHQ (the random-face wheel's IR, or ``generator_ir``) and an FR checkpoint.

    No encoder: faces are inverted by optimisation. ``w_avg`` is the mean of mapping over
    :data:`W_AVG_SAMPLES` seeded z (seed 0), and ``latent_avg`` repeats it on every row.
    """
    from anonymixer.mobilestylegan_ir import NOTICE, load_mobilestylegan

    generator, generator_arch, generator_source = load_mobilestylegan(generator_ir)
    embedder, embedder_arch, fr_source = _face_embedder(fr)
    w_avg = _mapped_mean(generator, seed=0)
    model = bundle.make(
        profile="mobile1024",
        generator=generator,
        generator_arch=generator_arch,
        encoder=None,
        encoder_arch=None,
        latent_avg=w_avg.expand(generator.n_latent, -1).clone(),
        w_avg=w_avg,
        face_embedder=embedder,
        face_embedder_arch=embedder_arch,
        sources={"generator": generator_source, "fr": fr_source, "w_avg": {"samples": W_AVG_SAMPLES, "seed": 0}},
        notice=NOTICE,
        framing=MOBILE1024_FRAMING,
        algorithm=MOBILE1024_ALGORITHM,
    )
    return bundle.save(model, out_dir, overwrite=overwrite)

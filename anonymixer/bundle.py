"""The model bundle: the one input of everything downstream of the official checkpoints.

A bundle is a folder::

    bundle.json                 profile, resolution, n_latent, style_dim, architectures,
                                face embedder, source checksums, file checksums, format version
    generator.safetensors       StyleGAN2 generator (incl. the fixed noise buffers and FIR kernels)
    encoder.safetensors         e4e encoder (Encoder4Editing); absent when bundle.json's "encoder" is null
    face_embedder.safetensors   IR-SE or MobileFaceNet
    latents.safetensors         latent_avg [n_latent, style_dim] (added to e4e codes), w_avg [style_dim]

``bundle.json`` is written last, so a folder with one is complete. :func:`load` checks the
format version and every file's SHA-256 before building the networks.

A bundle without an encoder (``mobile1024``: MobileStyleGAN has no e4e) has ``encoder`` None and no
``encoder.safetensors``; what needs an encoder asks for it through :meth:`Bundle.require_encoder`,
which says so clearly. ``latent_avg`` is then w_avg on every row (the centre an optimisation-based
inversion starts from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from anonymixer.alignment import E4E_FRAMING, NEW_BUNDLE_FRAMING
from anonymixer.checkpoints import file_sha256, strict_load
from anonymixer.networks import (
    AnyGenerator,
    E4EInverter,
    Encoder4Editing,
    build_encoder,
    build_face_embedder,
    build_generator,
)

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
WEIGHT_FILES = ("generator", "encoder", "face_embedder", "latents")


class BundleError(ValueError):
    """A bundle folder that is missing, incomplete, corrupted or too new."""


@dataclass
class Bundle:
    """Ready-to-run networks of a bundle, in eval mode with gradients switched off."""

    config: dict[str, Any]
    generator: AnyGenerator
    encoder: E4EInverter | None  # image → W+ (latent_avg included); None: the bundle has no encoder
    face_embedder: nn.Module  # [3, 112, 112] in [-1, 1] → L2-normalised embedding
    w_avg: torch.Tensor  # [style_dim], the truncation centre
    latent_avg: torch.Tensor  # [n_latent, style_dim], what the encoder's codes are offsets from
    path: Path | None = None

    @property
    def profile(self) -> str:
        return str(self.config["profile"])

    @property
    def resolution(self) -> int:
        return int(self.config["resolution"])

    @property
    def n_latent(self) -> int:
        return int(self.config["n_latent"])

    @property
    def style_dim(self) -> int:
        return int(self.config["style_dim"])

    @property
    def embedding_size(self) -> int:
        return int(self.config["face_embedder"]["embedding_size"])

    @property
    def framing(self) -> str:
        return config_framing(self.config)

    @property
    def notice(self) -> str | None:
        """The terms of use of the bundle's weights, where they restrict use (printed once at start-up)."""
        return self.config.get("notice")

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        return tuple(m for m in (self.generator, self.encoder, self.face_embedder) if m is not None)

    def require_encoder(self, purpose: str) -> E4EInverter:
        """The e4e inverter, or a clear error naming what needed it."""
        if self.encoder is None:
            raise BundleError(
                f"{purpose} needs an e4e encoder, and the {self.profile} bundle has none "
                "(it inverts faces by optimisation: inversion 'optimize', attribute_loss 'fr_features')"
            )
        return self.encoder

    def to(self, device: torch.device | str) -> Bundle:
        for module in self.networks:
            module.to(device)
        self.w_avg = self.w_avg.to(device)
        self.latent_avg = self.latent_avg.to(device)
        return self


def config_framing(config: dict[str, Any]) -> str:
    """The template faces are aligned to for a bundle's generator (alignment.FRAMINGS), from its
    ``bundle.json``; bundles written before the choice was measured were served with the e4e one."""
    return str(config.get("framing", E4E_FRAMING))


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def make(
    *,
    profile: str,
    generator: AnyGenerator,
    generator_arch: dict[str, Any],
    encoder: Encoder4Editing | None,
    encoder_arch: dict[str, Any] | None,
    latent_avg: torch.Tensor,
    w_avg: torch.Tensor,
    face_embedder: nn.Module,
    face_embedder_arch: dict[str, Any],
    sources: dict[str, Any],
    notice: str | None = None,
    framing: str = NEW_BUNDLE_FRAMING,
    algorithm: dict[str, Any] | None = None,
) -> Bundle:
    """An in-memory bundle from its networks (what :func:`save` writes and :func:`load` returns)."""
    if tuple(latent_avg.shape) != (generator.n_latent, generator.style_dim):
        raise BundleError(
            f"latent_avg must be [{generator.n_latent}, {generator.style_dim}], got {list(latent_avg.shape)}"
        )
    config = {
        "format_version": FORMAT_VERSION,
        "profile": profile,
        "resolution": generator.size,
        "n_latent": generator.n_latent,
        "style_dim": generator.style_dim,
        "generator": generator_arch,
        "encoder": encoder_arch,
        "face_embedder": face_embedder_arch,
        "sources": sources,
        "framing": framing,
        **({"algorithm": algorithm} if algorithm else {}),
        **({"notice": notice} if notice else {}),
    }
    return Bundle(
        config=config,
        generator=_frozen(generator),
        encoder=_inverter(encoder, latent_avg.float()),
        face_embedder=_frozen(face_embedder),
        w_avg=w_avg.float(),
        latent_avg=latent_avg.float(),
    )


def _inverter(encoder: Encoder4Editing | None, latent_avg: torch.Tensor) -> E4EInverter | None:
    return None if encoder is None else _frozen(E4EInverter(encoder, latent_avg))


def weight_files(config: dict[str, Any]) -> tuple[str, ...]:
    """The safetensors files a bundle with this ``bundle.json`` holds."""
    return tuple(name for name in WEIGHT_FILES if name != "encoder" or config.get("encoder") is not None)


def save(model: Bundle, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a bundle folder; refuses to replace an existing bundle unless ``overwrite``."""
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise BundleError(f"{out} already holds a bundle (pass overwrite/--force to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    tensors = {
        "generator": model.generator.state_dict(),
        "encoder": model.encoder.encoder.state_dict() if model.encoder is not None else {},
        "face_embedder": model.face_embedder.state_dict(),
        "latents": {"latent_avg": model.latent_avg, "w_avg": model.w_avg},
    }
    files = {}
    for name in weight_files(model.config):
        path = out / f"{name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors[name].items()}, path)
        files[path.name] = file_sha256(path)
    config = {**model.config, "files": files}
    (out / MANIFEST).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_config(bundle_dir: str | Path) -> dict[str, Any]:
    """``bundle.json`` of a folder, checked for presence and format version."""
    root = Path(bundle_dir)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST}); build one with `python -m exporter bundle`")
    try:
        config = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest}: not valid JSON ({exc})") from exc
    version = config.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{manifest}: no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{root}: bundle format version {version} is newer than this anonymixer supports ({FORMAT_VERSION}); "
            "upgrade anonymixer or rebuild the bundle with this version"
        )
    return config


def verify_files(bundle_dir: str | Path, config: dict[str, Any]) -> None:
    root = Path(bundle_dir)
    for name in weight_files(config):
        fname = f"{name}.safetensors"
        path = root / fname
        if not path.is_file():
            raise BundleError(f"{root}: missing {fname}")
        expected = config.get("files", {}).get(fname)
        actual = file_sha256(path)
        if expected != actual:
            raise BundleError(
                f"{path}: SHA-256 {actual} does not match bundle.json ({expected}); "
                "the file is corrupted or was replaced"
            )


def load(bundle_dir: str | Path, device: torch.device | str = "cpu", *, verify: bool = True) -> Bundle:
    """Build the bundle's networks on ``device`` (eval mode, ``requires_grad`` off)."""
    root = Path(bundle_dir)
    config = read_config(root)
    if verify:
        verify_files(root, config)

    def weights(name: str) -> dict[str, torch.Tensor]:
        path = root / f"{name}.safetensors"
        if not path.is_file():
            raise BundleError(f"{root}: missing {path.name}")
        return load_file(path)

    generator = build_generator(config["generator"])
    strict_load(generator, weights("generator"), f"{root} generator")
    encoder = None
    if config.get("encoder") is not None:
        encoder = build_encoder(config["encoder"])
        strict_load(encoder, weights("encoder"), f"{root} encoder")
    embedder = build_face_embedder(config["face_embedder"])
    strict_load(embedder, weights("face_embedder"), f"{root} face_embedder")
    latents = weights("latents")
    model = Bundle(
        config=config,
        generator=_frozen(generator),
        encoder=_inverter(encoder, latents["latent_avg"]),
        face_embedder=_frozen(embedder),
        w_avg=latents["w_avg"],
        latent_avg=latents["latent_avg"],
        path=root,
    )
    return model.to(device)

"""The four networks of the service, plain PyTorch, and their architecture descriptions.

An architecture description is a small JSON-able dict (stored in ``bundle.json``) from which
:func:`build_generator`, :func:`build_encoder` and :func:`build_face_embedder` rebuild the module;
:mod:`anonymixer.checkpoints` infers it from an official checkpoint's tensors.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anonymixer.networks.e4e import E4EInverter, Encoder4Editing
from anonymixer.networks.ir_se import IRSEBackbone
from anonymixer.networks.mobilefacenet import MobileFaceNet
from anonymixer.networks.mobilestylegan import MobileStyleGAN
from anonymixer.networks.stylegan2 import Generator

FACE_EMBEDDERS = ("ir_se", "mobilefacenet")
GENERATORS = ("stylegan2", "mobilestylegan")
# What the rest of the code needs of a generator: mapping(z), synthesis(W+), n_latent, style_dim, size.
AnyGenerator = Generator | MobileStyleGAN


def build_generator(arch: dict[str, Any]) -> AnyGenerator:
    network = arch.get("network", "stylegan2")  # bundles written before MobileStyleGAN name no network
    if network == "mobilestylegan":
        return MobileStyleGAN(style_dim=arch["style_dim"], n_mlp=arch["n_mlp"], channels=arch["channels"])
    if network != "stylegan2":
        raise ValueError(f"unknown generator {network!r}; expected one of {GENERATORS}")
    return Generator(
        size=arch["size"],
        style_dim=arch["style_dim"],
        n_mlp=arch["n_mlp"],
        channels={int(k): v for k, v in arch["channels"].items()},
        lr_mlp=arch.get("lr_mlp", 0.01),
    )


def build_encoder(arch: dict[str, Any]) -> Encoder4Editing:
    return Encoder4Editing(
        n_styles=arch["n_styles"],
        units=arch["units"],
        widths=arch["widths"],
        style_dim=arch["style_dim"],
        input_size=arch["input_size"],
    )


def build_face_embedder(arch: dict[str, Any]) -> nn.Module:
    network = arch["network"]
    if network == "ir_se":
        return IRSEBackbone(units=arch["units"], widths=arch["widths"], embedding_size=arch["embedding_size"])
    if network == "mobilefacenet":
        return MobileFaceNet(embedding_size=arch["embedding_size"])
    raise ValueError(f"unknown face embedder {network!r}; expected one of {FACE_EMBEDDERS}")


__all__ = [
    "FACE_EMBEDDERS",
    "GENERATORS",
    "AnyGenerator",
    "E4EInverter",
    "Encoder4Editing",
    "Generator",
    "IRSEBackbone",
    "MobileFaceNet",
    "MobileStyleGAN",
    "build_encoder",
    "build_face_embedder",
    "build_generator",
]

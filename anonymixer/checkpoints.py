"""Detect and load the official checkpoint files, strictly and without running untrusted pickle code.

Supported layouts (see DESIGN §6):

* e4e ``e4e_ffhq_encode.pt``: ``{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': [18, 512],
  'opts': dict}`` — gives the encoder *and* the StyleGAN2 generator (the decoder);
* rosinality StyleGAN2 (``stylegan2-ffhq-config-f.pt``): ``{'g_ema': state_dict, 'latent_avg': [512], …}``;
* InsightFace_Pytorch IR-SE (``model_ir_se50.pth``): a plain ``Backbone`` state_dict;
* foamliu MobileFaceNet (``mobilefacenet.pt``): a plain state_dict.

Files are read with ``torch.load(weights_only=True)`` (only tensors and plain containers, plus
``argparse.Namespace`` for the ``args`` of rosinality training checkpoints). The architecture is
inferred from tensor shapes, then the state dict is matched key by key and shape by shape; any
difference is an error listing the offending keys.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anonymixer.networks import Encoder4Editing, Generator, build_encoder, build_face_embedder, build_generator

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not match the expected layout."""


@dataclass
class LoadedCheckpoint:
    """What an official file provides. Modules are in eval mode on the CPU."""

    kind: str  # "e4e" | "stylegan2" | "ir_se" | "mobilefacenet"
    path: Path
    sha256: str
    generator: Generator | None = None
    generator_arch: dict[str, Any] | None = None
    encoder: Encoder4Editing | None = None
    encoder_arch: dict[str, Any] | None = None
    latent_avg: torch.Tensor | None = None  # e4e: [n_latent, style_dim]; rosinality: [style_dim]
    face_embedder: nn.Module | None = None
    face_embedder_arch: dict[str, Any] | None = None


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checkpoint_file(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no arbitrary code from pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "Files that need arbitrary pickled objects are refused on purpose."
        ) from exc


def _same_shape(file_shape: torch.Size, model_shape: torch.Size) -> bool:
    # torch's own load_state_dict accepts a [1] tensor for a 0-d one (files from torch ≤ 0.3 and
    # numpy round trips store BatchNorm's num_batches_tracked that way).
    return tuple(file_shape) == tuple(model_shape) or (len(model_shape) == 0 and tuple(file_shape) == (1,))


def strict_load(module: nn.Module, state: StateDict, what: str) -> None:
    """``load_state_dict`` that reports every missing, unexpected and mis-shaped key at once."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and not _same_shape(state[k].shape, v.shape)
    ]
    if missing or unexpected or misshaped:
        lines = [f"{what}: the checkpoint does not match the network"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" …" if len(keys) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


def _sub(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _indices(state: StateDict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))})


def infer_generator_arch(state: StateDict) -> dict[str, Any]:
    """Generator hyper-parameters from a rosinality ``Generator`` state dict."""
    try:
        n_mlp = len(_indices(state, r"style\.(\d+)\.weight"))
        style_dim = int(state["style.1.weight"].shape[1])
        n_up = len(_indices(state, r"to_rgbs\.(\d+)\.bias"))
        channels = {4: int(state["conv1.conv.weight"].shape[1])}
        for k in range(n_up):
            channels[8 * 2**k] = int(state[f"convs.{2 * k}.conv.weight"].shape[1])
    except KeyError as exc:
        raise CheckpointError(f"not a rosinality StyleGAN2 generator state dict: no key {exc}") from exc
    return {"size": 4 * 2**n_up, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels, "lr_mlp": 0.01}


def _ir_se_stages(state: StateDict, prefix: str) -> tuple[list[int], list[int]]:
    """Units per stage and stage widths of an IR-SE body, read from its res_layer conv shapes.

    A stage starts where the unit width changes, so consecutive stages must differ in width (true
    of every official depth and of the ``tiny`` profile).
    """
    units = _indices(state, re.escape(prefix) + r"(\d+)\.res_layer\.1\.weight")
    if not units:
        raise CheckpointError(f"no IR-SE units under '{prefix}'")
    counts: list[int] = []
    widths: list[int] = []
    for i in units:
        width = int(state[f"{prefix}{i}.res_layer.1.weight"].shape[0])
        if widths and widths[-1] == width:
            counts[-1] += 1
        else:
            widths.append(width)
            counts.append(1)
    if len(widths) != 4:
        raise CheckpointError(f"an IR-SE body has 4 stages; '{prefix}' has stage widths {widths}")
    return counts, widths


def infer_encoder_arch(state: StateDict) -> dict[str, Any]:
    """Encoder4Editing hyper-parameters from its state dict (keys without the ``encoder.`` prefix)."""
    units, widths = _ir_se_stages(state, "body.")
    n_styles = len(_indices(state, r"styles\.(\d+)\.linear\.weight"))
    if n_styles == 0:
        raise CheckpointError("no e4e style blocks (styles.N.linear.weight) in the encoder")
    n_coarse_convs = len(_indices(state, r"styles\.0\.convs\.(\d+)\.weight"))
    return {
        "n_styles": n_styles,
        "units": units,
        "widths": widths,
        "style_dim": int(state["styles.0.linear.weight"].shape[0]),
        "input_size": 16 * 2**n_coarse_convs,
    }


def infer_face_embedder_arch(state: StateDict) -> dict[str, Any]:
    if "gdconv.depthwise.weight" in state:
        return {"network": "mobilefacenet", "embedding_size": int(state["conv3.weight"].shape[0])}
    if "output_layer.3.weight" in state:
        units, widths = _ir_se_stages(state, "body.")
        return {
            "network": "ir_se",
            "units": units,
            "widths": widths,
            "embedding_size": int(state["output_layer.3.weight"].shape[0]),
        }
    raise CheckpointError("not an IR-SE (InsightFace_Pytorch Backbone) or MobileFaceNet state dict")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def detect_layout(obj: Any) -> str:
    """Which official layout a loaded checkpoint object has."""
    if isinstance(obj, dict):
        sd = obj.get("state_dict")
        if isinstance(sd, dict) and any(k.startswith("encoder.") for k in sd):
            return "e4e"
        if isinstance(obj.get("g_ema"), dict):
            return "stylegan2"
        if _is_state_dict(obj):
            if "gdconv.depthwise.weight" in obj:
                return "mobilefacenet"
            if "output_layer.3.weight" in obj and "input_layer.0.weight" in obj:
                return "ir_se"
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"unrecognised checkpoint layout (top-level keys {keys}); expected e4e_ffhq_encode.pt, a rosinality "
        "StyleGAN2 file with 'g_ema', an IR-SE Backbone state dict or a MobileFaceNet state dict"
    )


def load_checkpoint(path: str | Path, expect: str | None = None) -> LoadedCheckpoint:
    """Load an official file; ``expect`` ("e4e", "stylegan2", "ir_se", "mobilefacenet") guards the kind."""
    path = Path(path)
    obj = read_checkpoint_file(path)
    kind = detect_layout(obj)
    if expect is not None and kind != expect:
        raise CheckpointError(f"{path}: expected a {expect} checkpoint, found a {kind} checkpoint")
    ckpt = LoadedCheckpoint(kind=kind, path=path, sha256=file_sha256(path))
    if kind == "e4e":
        _load_e4e(obj, ckpt)
    elif kind == "stylegan2":
        _load_generator(obj["g_ema"], ckpt, f"{path.name} g_ema")
        ckpt.latent_avg = _latent_avg(obj, path)
    else:
        arch = infer_face_embedder_arch(obj)
        net = build_face_embedder(arch)
        strict_load(net, obj, f"{path.name} ({kind})")
        ckpt.face_embedder, ckpt.face_embedder_arch = net.eval(), arch
    return ckpt


def _latent_avg(obj: dict[str, Any], path: Path) -> torch.Tensor:
    latent_avg = obj.get("latent_avg")
    if not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path}: no 'latent_avg' tensor at the top level")
    return latent_avg.float()


def _load_generator(state: StateDict, ckpt: LoadedCheckpoint, what: str) -> None:
    arch = infer_generator_arch(state)
    gen = build_generator(arch)
    strict_load(gen, state, what)
    ckpt.generator, ckpt.generator_arch = gen.eval(), arch


def _load_e4e(obj: dict[str, Any], ckpt: LoadedCheckpoint) -> None:
    state = obj["state_dict"]
    name = ckpt.path.name
    opts = obj.get("opts") if isinstance(obj.get("opts"), dict) else {}
    enc_state = _sub(state, "encoder.")
    arch = infer_encoder_arch(enc_state)
    encoder = build_encoder(arch)
    strict_load(encoder, enc_state, f"{name} encoder")
    _load_generator(_sub(state, "decoder."), ckpt, f"{name} decoder")
    assert ckpt.generator is not None
    if encoder.n_styles != ckpt.generator.n_latent:
        raise CheckpointError(
            f"{name}: the encoder predicts {encoder.n_styles} styles but the decoder takes {ckpt.generator.n_latent}"
        )
    if opts.get("encoder_type", "Encoder4Editing") != "Encoder4Editing":
        raise CheckpointError(f"{name}: encoder_type {opts['encoder_type']!r} is not supported (Encoder4Editing only)")
    latent_avg = _latent_avg(obj, ckpt.path)
    if not opts.get("start_from_latent_avg", True):
        # pSp without start_from_latent_avg does not add the average: an all-zero offset is exact.
        latent_avg = torch.zeros_like(latent_avg)
    if latent_avg.dim() == 1:
        latent_avg = latent_avg.expand(encoder.n_styles, -1)
    if tuple(latent_avg.shape) != (encoder.n_styles, arch["style_dim"]):
        raise CheckpointError(f"{name}: latent_avg has shape {list(latent_avg.shape)}")
    ckpt.encoder, ckpt.encoder_arch, ckpt.latent_avg = encoder.eval(), arch, latent_avg.contiguous()

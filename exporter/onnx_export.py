"""Bundle → the ONNX models of the wire contract (DESIGN §4), with a dynamic batch axis.

| model                 | input                              | output                                 |
| --------------------- | ---------------------------------- | -------------------------------------- |
| e4e_encoder           | image  [B, 3, 256, 256] in [-1, 1] | w_plus [B, n_latent, style_dim]        |
| stylegan2_mapping     | z      [B, style_dim]              | w      [B, style_dim]                  |
| stylegan2_synthesis   | w_plus [B, n_latent, style_dim]    | image  [B, 3, R, R] (raw, not clamped) |
| face_embedder         | face   [B, 3, 112, 112] in [-1, 1] | embedding [B, D], L2-normalised        |

A bundle without an encoder (``mobile1024``) exports the other three; the generator models keep
their contract names whichever generator the bundle holds (StyleGAN2 or MobileStyleGAN, whose
``w_plus`` has 23 rows). Each graph holds its network's own pre-processing: ``e4e_encoder``
resizes the 256 px aligned face to the encoder's input size (a no-op for ffhq1024) and adds
``latent_avg``; MobileFaceNet's ImageNet normalisation is inside its module. Exported with the TorchScript exporter
(``dynamo=False``: no onnxscript dependency), opset 17, then checked with ``onnx.checker``
(full check, with shape inference) after onnxsim has folded the traced shape arithmetic.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxsim
import torch
from torch import nn

from anonymixer.bundle import Bundle
from anonymixer.losses import ALIGNED_SIZE, FR_SIZE, resize

OPSET = 17
log = logging.getLogger(__name__)
MODELS = ("e4e_encoder", "stylegan2_mapping", "stylegan2_synthesis", "face_embedder")


class _Encode(nn.Module):
    def __init__(self, model: Bundle) -> None:
        super().__init__()
        self.inverter = model.require_encoder("the e4e_encoder model")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inverter(resize(image, self.inverter.encoder.input_size))


class _Mapping(nn.Module):
    def __init__(self, model: Bundle) -> None:
        super().__init__()
        self.generator = model.generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator.mapping(z)


class _Synthesis(nn.Module):
    def __init__(self, model: Bundle) -> None:
        super().__init__()
        self.generator = model.generator

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesis(w_plus)


class _Embed(nn.Module):
    def __init__(self, model: Bundle) -> None:
        super().__init__()
        self.embedder = model.face_embedder

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.embedder(face)


@dataclass(frozen=True)
class Signature:
    """One ONNX model's tensors, per item (the batch axis is implied)."""

    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]


def signatures(model: Bundle) -> dict[str, Signature]:
    n, d, r, e = model.n_latent, model.style_dim, model.resolution, model.embedding_size
    return {
        "e4e_encoder": Signature("image", (3, ALIGNED_SIZE, ALIGNED_SIZE), "w_plus", (n, d)),
        "stylegan2_mapping": Signature("z", (d,), "w", (d,)),
        "stylegan2_synthesis": Signature("w_plus", (n, d), "image", (3, r, r)),
        "face_embedder": Signature("face", (3, FR_SIZE, FR_SIZE), "embedding", (e,)),
    }


def exported_models(model: Bundle) -> tuple[str, ...]:
    """The contract models this bundle has networks for."""
    return tuple(name for name in MODELS if name != "e4e_encoder" or model.encoder is not None)


def torch_modules(model: Bundle) -> dict[str, nn.Module]:
    """The exact functions the ONNX graphs compute, as PyTorch modules (for parity checks)."""
    wrappers: dict[str, type[nn.Module]] = {
        "e4e_encoder": _Encode,
        "stylegan2_mapping": _Mapping,
        "stylegan2_synthesis": _Synthesis,
        "face_embedder": _Embed,
    }
    return {name: wrappers[name](model).eval() for name in exported_models(model)}


def sample_input(sig: Signature, batch: int, seed: int = 0) -> np.ndarray:
    """Random inputs in each model's natural range (images in [-1, 1], latents ~ N(0, 1))."""
    rng = np.random.RandomState(seed)
    if sig.input_name in ("image", "face"):
        return rng.uniform(-1, 1, (batch, *sig.input_shape)).astype(np.float32)
    return rng.standard_normal((batch, *sig.input_shape)).astype(np.float32)


def simplify_graph(graph: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """onnxsim's graph, or the original with a warning saying why not (the export still succeeds:
    the unsimplified graph computes the same, only slower)."""
    try:
        simplified, ok = onnxsim.simplify(graph)
    except Exception as exc:  # onnxsim's passes raise whatever they raise (onnx, protobuf, RuntimeError)
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if ok:
            return simplified
        reason = "its check of the simplified graph against the original on random inputs failed"
    log.warning("%s: onnxsim failed (%s); keeping the unsimplified graph", label, reason)
    return graph


def export_model(module: nn.Module, sig: Signature, path: Path, *, simplify: bool = True) -> None:
    example = torch.from_numpy(sample_input(sig, 2))
    # The tracer warns about Python-level shape checks (they hold for every batch size) and the
    # legacy exporter about itself and about folding steps; none of it concerns these graphs.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[sig.input_name],
            output_names=[sig.output_name],
            dynamic_axes={sig.input_name: {0: "batch"}, sig.output_name: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    if simplify:
        # Measured (benchmarks/results/2026-11-22-cpu-2core/onnx_simplify_tiny.json): onnxsim folds the traced shape
        # arithmetic — synthesis 1130 → 233 nodes, 28 % faster on onnxruntime; never slower.
        graph = simplify_graph(graph, path.name)
    # Reshapes in the traced graph leave some output dims symbolic; the contract fixes every dim
    # but the batch, so state them (parity tests confirm what the graph computes).
    for value, dims in ((graph.graph.input[0], sig.input_shape), (graph.graph.output[0], sig.output_shape)):
        shape = value.type.tensor_type.shape.dim
        shape[0].dim_param = "batch"
        for dim, size in zip(shape[1:], dims, strict=True):
            dim.dim_value = size
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_all(
    model: Bundle, out_dir: str | Path, *, only: tuple[str, ...] | None = None, simplify: bool = True
) -> dict[str, dict]:
    """Write ``<name>.onnx`` for each model (default: all the bundle has) and ``onnx_manifest.json``;
    returns per-model facts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sigs, modules = signatures(model), torch_modules(model)
    facts = {}
    for name in only or exported_models(model):
        path = out / f"{name}.onnx"
        start = time.perf_counter()
        export_model(modules[name], sigs[name], path, simplify=simplify)
        facts[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "export_s": round(time.perf_counter() - start, 2),
            "input": {"name": sigs[name].input_name, "dims": list(sigs[name].input_shape)},
            "output": {"name": sigs[name].output_name, "dims": list(sigs[name].output_shape)},
        }
        print(f"{name}: {facts[name]['bytes'] / 2**20:.1f} MiB in {facts[name]['export_s']} s", file=sys.stderr)
    manifest = {"opset": OPSET, "simplified": simplify, "bundle": model.config, "models": facts}
    (out / "onnx_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return facts

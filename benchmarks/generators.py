"""The mobile1024 generator (MobileStyleGAN) against StyleGAN2 config-f: time and FLOPs per 1024 px image.

For MobileStyleGAN (the real weights of the random-face wheel): the median wall time of one batch-1
synthesis in PyTorch (this project's module), onnxruntime (its exported ``stylegan2_synthesis``
graph) and OpenVINO running the wheel's own IR (``INFERENCE_PRECISION_HINT`` f32, the exact
reference, and the CPU's default hint, which may be bf16). For both generators (StyleGAN2 with
seeded random weights: speed does not depend on them): FLOPs of one forward pass and of a forward
plus the backward pass to W+ (what one refinement step costs the generator), counted by torch's
FlopCounterMode.

    python -m benchmarks.generators --bundle DIR [--repeats 5] [--out DIR]    # DIR: a mobile1024 bundle

Writes ``generators_cpu.json`` to ``--out`` (default ``benchmarks/results/<date>-<machine>/``).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from anonymixer import bundle
from anonymixer.bundle import Bundle
from anonymixer.mobilestylegan_ir import locate_ir
from anonymixer.networks import build_generator
from anonymixer.profiles import ARCHITECTURES
from anonymixer.seeded_init import seeded_init_
from benchmarks.forward_timing import timed
from benchmarks.machine import results_dir, save_record


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def generator_flops(generator: torch.nn.Module, n_latent: int) -> dict[str, float]:
    w = torch.randn(1, n_latent, 512)

    def forward_backward() -> None:
        latent = w.clone().requires_grad_(True)
        generator.synthesis(latent).square().mean().backward()

    with torch.no_grad():
        forward = flops(lambda: generator.synthesis(w))
    return {"forward_gflop": forward / 1e9, "forward_backward_to_w_gflop": flops(forward_backward) / 1e9}


def onnxruntime_ms(model: Bundle, w_plus: np.ndarray, repeats: int) -> float:
    """The bundle's exported synthesis graph, as ``python -m exporter onnx`` writes it."""
    import onnxruntime as ort

    from exporter.onnx_export import export_model, signatures, torch_modules

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stylegan2_synthesis.onnx"
        export_model(torch_modules(model)["stylegan2_synthesis"], signatures(model)["stylegan2_synthesis"], path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return timed(lambda: session.run(None, {"w_plus": w_plus}), repeats, "cpu")["median_s"] * 1000


def openvino_ms(ir: Path, w: np.ndarray, repeats: int) -> dict[str, Any]:
    """The wheel's own IR on OpenVINO: f32 (the exact reference) and the CPU's default precision hint."""
    import openvino as ov

    core = ov.Core()
    out: dict[str, Any] = {"version": ov.__version__}
    for label, config in (("f32", {"INFERENCE_PRECISION_HINT": "f32"}), ("default", {})):
        compiled = core.compile_model(core.read_model(ir / "SynthesisNetwork.xml"), "CPU", config)
        out[f"{label}_ms"] = timed(lambda c=compiled: c(w), repeats, "cpu")["median_s"] * 1000
        out[f"{label}_hint"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="a mobile1024 bundle (python -m exporter bundle …)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(results_dir()), help="default benchmarks/results/<date>-<machine>")
    args = parser.parse_args()

    model = bundle.load(args.bundle)
    if model.profile != "mobile1024":
        raise SystemExit(f"{args.bundle}: a {model.profile} bundle; this benchmark compares mobile1024's generator")
    mobile = model.generator
    stylegan2 = seeded_init_(build_generator(ARCHITECTURES["ffhq1024"]["generator"]), 0, "generator.").eval()
    stylegan2.requires_grad_(False)
    with torch.no_grad():
        w = mobile.mapping(torch.randn(1, mobile.style_dim))
        w_plus = w[:, None].repeat(1, mobile.n_latent, 1)
        mobile_ms = timed(lambda: mobile.synthesis(w_plus), args.repeats, "cpu")["median_s"] * 1000
        stylegan2_ms = timed(lambda: stylegan2.synthesis(torch.randn(1, 18, 512)), 2, "cpu")["median_s"] * 1000
    m = {
        "pytorch_ms": mobile_ms,
        "onnxruntime_ms": onnxruntime_ms(model, w_plus.numpy(), args.repeats),
        "openvino": openvino_ms(locate_ir(), w.numpy(), args.repeats),  # the IR takes one w for every row
        **generator_flops(mobile, mobile.n_latent),
    }
    s = {"pytorch_ms": stylegan2_ms, **generator_flops(stylegan2, 18)}
    ratios = {
        "forward_flops": s["forward_gflop"] / m["forward_gflop"],
        "forward_backward_flops": s["forward_backward_to_w_gflop"] / m["forward_backward_to_w_gflop"],
        "pytorch_time": s["pytorch_ms"] / m["pytorch_ms"],
    }
    ov = m["openvino"]
    print(
        f"MobileStyleGAN 1024, batch 1: PyTorch {m['pytorch_ms']:.0f} ms, onnxruntime {m['onnxruntime_ms']:.0f} ms, "
        f"OpenVINO f32 {ov['f32_ms']:.0f} ms, OpenVINO default ({ov['default_hint']}) {ov['default_ms']:.0f} ms"
    )
    for name, r in (("MobileStyleGAN", m), ("StyleGAN2 config-f", s)):
        print(
            f"{name}: {r['forward_gflop']:.1f} GFLOP forward, {r['forward_backward_to_w_gflop']:.1f} GFLOP forward "
            f"+ backward to W+; PyTorch {r['pytorch_ms']:.0f} ms"
        )
    print("StyleGAN2 / MobileStyleGAN: " + ", ".join(f"{k} {v:.1f}×" for k, v in ratios.items()))
    results = {"mobilestylegan_1024": m, "stylegan2_config_f_1024": s, "stylegan2_over_mobilestylegan": ratios}
    save_record(Path(args.out) / "generators_cpu.json", "generators", results, repeats=args.repeats)


if __name__ == "__main__":
    main()

"""Wall time of single forward passes of the bundle networks, on the CPU (or CUDA with --device).

Measures the ``tiny`` profile's networks and the full-size official architectures with seeded
random weights (StyleGAN2 config-f 1024 synthesis and mapping, e4e at 256, IR-SE50 at 112).
Writes ``forward_<device>.json`` to ``--out`` (default ``benchmarks/results/<date>-<machine>/``) and prints a table.

    python -m benchmarks.forward_timing [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from anonymixer import profiles
from benchmarks.machine import results_dir, save_record


def timed(fn: Callable[[], torch.Tensor], repeats: int, device: str) -> dict[str, float]:
    fn()  # warm-up (allocations, kernels, autotuning)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(results_dir()), help="default benchmarks/results/<date>-<machine>")
    args = parser.parse_args()
    dev = args.device

    tiny = profiles.random_bundle("tiny").to(dev)
    full = profiles.random_bundle("ffhq1024").to(dev)
    tiny_g, tiny_e, tiny_f = tiny.generator, tiny.encoder, tiny.face_embedder
    full_g, full_e, full_f = full.generator, full.encoder, full.face_embedder

    cases: dict[str, Callable[[], torch.Tensor]] = {}
    for b in (1, 4):
        cases[f"tiny synthesis 64px, batch {b}"] = lambda b=b: tiny_g.synthesis(torch.randn(b, 10, 64, device=dev))
        cases[f"tiny e4e 64px, batch {b}"] = lambda b=b: tiny_e(torch.randn(b, 3, 64, 64, device=dev))
        cases[f"tiny IR-SE 112px, batch {b}"] = lambda b=b: tiny_f(torch.randn(b, 3, 112, 112, device=dev))
    cases["StyleGAN2 config-f mapping, batch 1"] = lambda: full_g.mapping(torch.randn(1, 512, device=dev))
    cases["StyleGAN2 config-f synthesis 1024px, batch 1"] = lambda: full_g.synthesis(
        torch.randn(1, 18, 512, device=dev)
    )
    cases["StyleGAN2 config-f synthesis to 256px, batch 1"] = lambda: full_g.synthesis(
        torch.randn(1, 18, 512, device=dev), resolution=256
    )
    cases["e4e (IR-SE50) 256px, batch 1"] = lambda: full_e(torch.randn(1, 3, 256, 256, device=dev))
    cases["IR-SE50 112px, batch 1"] = lambda: full_f(torch.randn(1, 3, 112, 112, device=dev))

    results = {}
    for name, fn in cases.items():
        results[name] = timed(fn, args.repeats, dev)
        print(f"{name:50s} {results[name]['median_s'] * 1000:10.1f} ms (median of {args.repeats})", flush=True)
    save_record(Path(args.out) / f"forward_{dev}.json", "forward_timing", results, device=dev)


if __name__ == "__main__":
    main()

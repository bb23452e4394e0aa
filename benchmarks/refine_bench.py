"""Refinement-loop throughput: ms per Adam step and protected images per second.

    python -m benchmarks.refine_bench [--profile tiny|ffhq1024] [--device cpu|cuda]
                                      [--batches 1 8] [--steps 10] [--precision fp32 bf16]

Runs ``refine_latents`` (the loop the service runs: synthesis, FR crop and embedding, the e4e
attribute loss, backward for the latent only, Adam) on seeded random weights. Items are refined
images (no augmented views: a single photo with the default 5 views costs 6 items). images/s is
for the default 50 steps: batch / (50 · ms_per_step). Peak memory is CUDA's max allocated, or the
process's peak RSS on the CPU. Writes ``benchmarks/results/refine_<profile>_<device>.json``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from anonymixer import profiles
from anonymixer.config import ProtectConfig
from anonymixer.keys import SecretKey, key_latents
from anonymixer.losses import ALIGNED_SIZE, E4EFeatureLoss, resize
from anonymixer.mixing import mix_latents
from anonymixer.refine import refine_latents
from benchmarks.machine import save_record

FULL_STEPS = 50


def run_case(model, batch: int, steps: int, precision: str, device: torch.device) -> dict[str, float]:
    config = ProtectConfig(precision=precision, views=0)
    gen = torch.Generator().manual_seed(batch)  # benchmark inputs only; not a key derivation
    x = (torch.rand(batch, 3, ALIGNED_SIZE, ALIGNED_SIZE, generator=gen) * 2 - 1).to(device)
    with torch.no_grad():
        w_real = model.encoder(resize(x, model.encoder.encoder.input_size))
        w_key = key_latents([SecretKey(f"bench {i}") for i in range(batch)], model.generator.mapping, model.w_avg)
    mix = mix_latents(w_real, w_key, config.mix_mode, config.identity_layers)
    attr = E4EFeatureLoss(model.encoder.encoder)
    kwargs = dict(generator=model.generator, face_embedder=model.face_embedder, attribute_loss=attr, config=config)
    groups = torch.arange(batch, device=device)
    refine_latents(mix, x, groups, steps=1, **kwargs)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    refine_latents(mix, x, groups, steps=steps, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    ms_step = 1000 * elapsed / steps
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "batch": batch,
        "precision": precision,
        "steps_timed": steps,
        "ms_per_step": round(ms_step, 2),
        "images_per_s_at_50_steps": round(batch / (FULL_STEPS * ms_step / 1000), 3),
        "peak_memory_mib": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=profiles.PROFILES, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    model = profiles.random_bundle(args.profile).to(device)
    rows = []
    for precision in args.precision:
        for batch in args.batches:
            row = run_case(model, batch, args.steps, precision, device)
            rows.append(row)
            print(
                f"{args.profile} {device.type} {precision} batch {batch:3d}: {row['ms_per_step']:9.1f} ms/step, "
                f"{row['images_per_s_at_50_steps']:7.3f} images/s at 50 steps, peak {row['peak_memory_mib']:.0f} MiB",
                flush=True,
            )
    save_record(
        Path(args.out) / f"refine_{args.profile}_{device.type}.json", "refine_bench", rows, profile=args.profile
    )


if __name__ == "__main__":
    main()

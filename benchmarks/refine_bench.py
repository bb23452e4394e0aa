"""Refinement-loop throughput: ms per Adam step and protected images per second.

    python -m benchmarks.refine_bench [--profile tiny|ffhq1024] [--device cpu|cuda]
                                      [--batches 1 8] [--steps 10] [--precision fp32 bf16] [--naive]

``--naive`` also runs the published code's way (one image at a time with its own Adam, fp32,
network weights not frozen) on the same inputs, and reports our speed-up and a correctness guard
(largest pixel difference and smallest template cosine between the two results).

Runs ``refine_latents`` (the loop the service runs: synthesis, FR crop and embedding, the e4e
attribute loss, backward for the latent only, Adam) on seeded random weights. Items are refined
images (no augmented views: a single photo with the default 5 views costs 6 items). FLOPs per
step are counted by torch's FlopCounterMode; achieved TFLOP/s = those FLOPs / measured time, and
the H100 floor of DESIGN §7 is FLOPs per item-step / 990 TFLOP/s. images/s is
for the default 50 steps: batch / (50 · ms_per_step). Peak memory is CUDA's max allocated, or the
process's peak RSS on the CPU. Writes ``benchmarks/results/refine_<profile>_<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from anonymixer import profiles
from anonymixer.config import ProtectConfig
from anonymixer.keys import SecretKey, key_latents
from anonymixer.losses import ALIGNED_SIZE, E4EFeatureLoss, fr_crop, resize
from anonymixer.mixing import Mix, mix_latents
from anonymixer.refine import refine_latents
from benchmarks.machine import save_record

FULL_STEPS = 50
H100_BF16_FLOPS = 990e12  # dense BF16 peak (DESIGN §7)


@contextlib.contextmanager
def unfrozen(model) -> Iterator[None]:
    """The published code's setting: network weights require gradients (autograd computes them
    and throws them away). The bundle's modules are frozen; this lifts it for the naive run."""
    modules = (model.generator, model.face_embedder, model.encoder)
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def prepare(model, batch: int, precision: str, device: torch.device) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    config = ProtectConfig(precision=precision, views=0)
    gen = torch.Generator().manual_seed(batch)  # benchmark inputs only; not a key derivation
    x = (torch.rand(batch, 3, ALIGNED_SIZE, ALIGNED_SIZE, generator=gen) * 2 - 1).to(device)
    with torch.no_grad():
        w_real = model.encoder(resize(x, model.encoder.encoder.input_size))
        w_key = key_latents([SecretKey(f"bench {i}") for i in range(batch)], model.generator.mapping, model.w_avg)
    mix = mix_latents(w_real, w_key, config.mix_mode, config.identity_layers)
    attr = E4EFeatureLoss(model.encoder.encoder)
    kwargs = dict(generator=model.generator, face_embedder=model.face_embedder, attribute_loss=attr, config=config)
    return mix, x, kwargs


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB): CUDA's max allocated, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return result, elapsed, peak


def row(batch: int, precision: str, steps: int, seconds: float, peak: float, **extra: Any) -> dict[str, Any]:
    ms_step = 1000 * seconds / steps
    return {
        "batch": batch,
        "precision": precision,
        "steps_timed": steps,
        "ms_per_step": round(ms_step, 2),
        "images_per_s_at_50_steps": round(batch / (FULL_STEPS * ms_step / 1000), 3),
        "peak_memory_mib": round(peak, 1),
        **extra,
    }


def flops_per_step(run: Callable[[int], Any]) -> int:
    """FLOPs of one refinement step (forward and backward), counted by torch's FlopCounterMode as
    the difference between a 2-step and a 1-step call (the per-call set-up cancels out)."""
    counts = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            run(steps)
        counts.append(counter.get_total_flops())
    return counts[1] - counts[0]


def run_case(model, batch: int, steps: int, precision: str, device: torch.device) -> tuple[dict[str, Any], Any]:
    """Ours: the whole batch under one Adam, frozen weights, gradients for the latent only."""
    mix, x, kwargs = prepare(model, batch, precision, device)
    groups = torch.arange(batch, device=device)
    flops = flops_per_step(lambda n: refine_latents(mix, x, groups, steps=n, **kwargs))  # also the warm-up
    result, seconds, peak = timed(device, lambda: refine_latents(mix, x, groups, steps=steps, **kwargs))
    achieved = flops / (seconds / steps) / 1e12
    extra = {
        "tflop_per_step_per_item": round(flops / batch / 1e12, 6),
        "achieved_tflops": round(achieved, 4),
        # DESIGN §7: the floor at a GPU's dense peak; on a CPU the figure is the share of that peak
        "floor_ms_per_item_step_h100_bf16": round(flops / batch / H100_BF16_FLOPS * 1e3, 4),
    }
    return row(batch, precision, steps, seconds, peak, path="ours", **extra), (mix, result.trainable)


def item(mix: Mix, i: int) -> Mix:
    return Mix(mix.fixed[i : i + 1], mix.trainable[i : i + 1], mix.rows)


def run_naive(model, batch: int, steps: int, device: torch.device) -> tuple[dict[str, Any], Any]:
    """The published code's way: one image at a time, its own Adam, fp32, weights not frozen."""
    mix, x, kwargs = prepare(model, batch, "fp32", device)
    one = torch.zeros(1, dtype=torch.long, device=device)

    def each() -> torch.Tensor:
        return torch.cat(
            [refine_latents(item(mix, i), x[i : i + 1], one, steps=steps, **kwargs).trainable for i in range(batch)]
        )

    with unfrozen(model):
        refine_latents(item(mix, 0), x[:1], one, steps=1, **kwargs)  # warm-up
        trainable, seconds, peak = timed(device, each)
    return row(batch, "fp32", steps, seconds, peak, path="naive"), (mix, trainable)


def agreement(model, ours: Any, naive: Any) -> dict[str, float]:
    """Correctness guard: the fast path's images and templates against the naive fp32 path's."""
    with torch.no_grad():
        (mix, fast), (_, slow) = ours, naive
        a = model.generator.synthesis(mix.assemble(fast)).clamp(-1, 1).float()
        b = model.generator.synthesis(mix.assemble(slow)).clamp(-1, 1).float()
        ta, tb = model.face_embedder(fr_crop(a)), model.face_embedder(fr_crop(b))
    return {
        "max_abs_pixel_diff_levels": round(float((a - b).abs().max()) * 127.5, 3),
        "min_template_cosine": round(float((ta * tb).sum(1).min()), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=profiles.PROFILES, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--naive", action="store_true", help="also run the published code's way at each batch size")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    model = profiles.random_bundle(args.profile).to(device)
    rows = []
    for precision in args.precision:
        for batch in args.batches:
            ours, ours_out = run_case(model, batch, args.steps, precision, device)
            cases = [ours]
            if args.naive:
                naive, naive_out = run_naive(model, batch, args.steps, device)
                ours["speedup_vs_naive"] = round(
                    ours["images_per_s_at_50_steps"] / naive["images_per_s_at_50_steps"], 2
                )
                ours.update(agreement(model, ours_out, naive_out))
                cases.append(naive)
            for case in cases:
                rows.append(case)
                print(
                    f"{args.profile} {device.type} {case['path']:5s} {case['precision']} batch {batch:3d}: "
                    f"{case['ms_per_step']:9.1f} ms/step, {case['images_per_s_at_50_steps']:7.3f} images/s (50 steps), "
                    f"peak {case['peak_memory_mib']:.0f} MiB"
                    + (
                        f", {case['speedup_vs_naive']}× naive, {case['min_template_cosine']} template cos"
                        if "speedup_vs_naive" in case
                        else ""
                    ),
                    flush=True,
                )
    save_record(
        Path(args.out) / f"refine_{args.profile}_{device.type}.json", "refine_bench", rows, profile=args.profile
    )


if __name__ == "__main__":
    main()

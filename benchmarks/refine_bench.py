"""Refinement-loop throughput: the naive baseline, ours, and each speed switch on its own.

    python -m benchmarks.refine_bench [--profile tiny|ffhq1024 | --bundle DIR] [--device cpu|cuda] [--batches 1 8]
        [--steps 10] [--precision fp32 tf32 bf16] [--switches channels_last compile cuda_graphs loss_256 loss_half]
        [--stages refinement inversion] [--no-combined] [--naive] [--trace] [--out DIR]

Per batch size, on the same seeded inputs, with random weights of a profile or the real weights
of a bundle on disk (``--bundle``: mobile1024, whose inputs start from its latent_avg since it
has no encoder; the inversion by optimisation is a stage of its own), with the bundle's own
algorithm settings (identity rows, attribute loss):

* ``naive`` (refinement only) — the published code's way: one image at a time with its own Adam, fp32, eager,
  network weights not frozen;
* ``fp32`` — ours, eager at full resolution: the whole batch under one Adam, frozen weights,
  gradients for the latent only (the bundle's own ``compile`` and ``loss_resolution`` set aside);
* each other precision (``tf32``, ``bf16`` autocast; CUDA only) and each switch on top of fp32 on
  its own: ``channels_last`` (NHWC), ``compile`` (torch.compile of the step), ``cuda_graphs``
  (torch.compile mode ``reduce-overhead``; CUDA only), ``loss_256`` (StyleGAN2: losses on the
  256 px RGB skip, the full image rendered once at the end; only for generators larger than 256),
  ``loss_half`` (MobileStyleGAN: losses on the image area-averaged to half size, exactly);
* ``combined`` — the last precision with every switch that applies.

``--stages``: the refinement step (the default) and the inversion-by-optimisation step (the
same generator, the reconstruction loss; bundles without an encoder), each with every variant.

Every variant reports (the median of ``--repeats`` timed runs) ms per step, images/s at the
default 50 steps (batch / (50 · s per step)), peak memory of that variant's timed runs (CUDA's
max allocated; on the CPU the peak resident set sampled during the runs, and how much it rose
above the resident set before them), the first call's time (compilation), FLOPs per item-step (torch's
FlopCounterMode, eager), achieved TFLOP/s, the ratio to the H100 BF16 floor of DESIGN §7 and its
speed-up over ``naive`` and over ``fp32``. On the CPU also the CPU's floor: FLOPs per item-step ÷
this CPU's peak, both as measured in the run (a large fp32 matmul on every core) and as the
nominal figure of issue 26 (2 cores × 2.0 GHz × 32 FLOP per cycle, AVX2: 128 GFLOP/s). Correctness
guard: each variant's refined latents are rendered at full resolution and compared with ``fp32``'s
(largest and mean pixel difference in 8-bit levels, smallest template cosine; the guard passes
when the cosine is ≥ 0.99), and ``fp32``'s with ``naive``'s. Items are refined images (no
augmented views: a single photo with the default 5 views costs 6 items).

``--trace`` profiles 3 steps of ``fp32`` at the largest batch (torch.profiler) and writes
``refine_profile.md``: time per stage of the step and the most expensive operators.
Writes ``refine_<profile>_<device>.json`` (and the profile) to ``--out``; rows of other batch sizes
already in that file are kept, so a sweep can be split over several calls.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from anonymixer import bundle, profiles
from anonymixer.bundle import Bundle
from anonymixer.config import Overrides, ProtectConfig, resolve_settings
from anonymixer.inversion import invert_as_configured
from anonymixer.keys import SecretKey, key_latents
from anonymixer.losses import ALIGNED_SIZE, fr_crop, resize
from anonymixer.mixing import Mix, mix_latents
from anonymixer.protect import build_attribute_loss
from anonymixer.refine import refine_latents, set_memory_format
from benchmarks.machine import results_dir, save_record

FULL_STEPS = 50
H100_BF16_FLOPS = 990e12  # dense BF16 peak (DESIGN §7)
GUARD_MIN_COSINE = 0.99
TRACE_STEPS = 3
SWITCHES: dict[str, dict[str, Any]] = {
    "channels_last": {"channels_last": True},
    "compile": {"compile": "default"},
    "cuda_graphs": {"compile": "reduce-overhead"},
    "loss_256": {"loss_resolution": 256},
    "loss_half": {"loss_resolution": "half"},  # the generator's size // 2
}
CPU_NOMINAL_GFLOPS = 128.0  # issue 26's floor: 2 cores × 2.0 GHz × (2 FMA units × 8 lanes × 2)
STAGES = ("synthesis", "face_embedder", "attribute_loss", "backward", "adam")  # anonymixer.refine spans


@dataclasses.dataclass
class Inputs:
    mix: Mix
    x: torch.Tensor
    groups: torch.Tensor


def base_config(model: Bundle) -> ProtectConfig:
    """The bundle's algorithm (its rows, attribute loss) without augmented views, eager at full
    resolution: the step every speed switch is measured against."""
    eager = {"views": 0, "compile": "off", "loss_resolution": None}
    return resolve_settings(model.config, Overrides("refine_bench", eager)).config


def make_inputs(model: Bundle, batch: int, device: torch.device) -> Inputs:
    config = base_config(model)
    gen = torch.Generator().manual_seed(batch)  # benchmark inputs only; not a key derivation
    x = (torch.rand(batch, 3, ALIGNED_SIZE, ALIGNED_SIZE, generator=gen) * 2 - 1).to(device)
    with torch.no_grad():
        if model.encoder is not None:
            w_real = model.encoder(resize(x, model.encoder.encoder.input_size))
        else:  # no encoder: a seeded spread around latent_avg stands in for inverted faces
            spread = torch.randn(batch, model.n_latent, model.style_dim, generator=gen).to(device)
            w_real = model.latent_avg[None] + 0.1 * spread
        w_key = key_latents([SecretKey(f"bench {i}") for i in range(batch)], model.generator, model.w_avg)
    mix = mix_latents(w_real, w_key, config.mix_mode, config.identity_layers)
    return Inputs(mix, x, torch.arange(batch, device=device))


def skip_reason(name: str, device: torch.device, model: Bundle) -> str | None:
    if name in ("tf32", "bf16", "cuda_graphs") and device.type != "cuda":
        return "CUDA only (the CPU path always runs fp32 eager)"
    if name == "loss_256" and model.resolution <= 256:
        return f"the generator renders {model.resolution} px: the losses already see ≤ 256 px"
    mobile = model.config["generator"].get("network") == "mobilestylegan"
    if name == "loss_256" and mobile:
        return "MobileStyleGAN has no intermediate images (only its last block reaches the image): see loss_half"
    if name == "loss_half" and not mobile:
        return "StyleGAN2's lower resolutions are RGB skips, not the image averaged: see loss_256"
    return None


def switch(name: str, model: Bundle) -> dict[str, Any]:
    """The config values of a switch (or precision) for this bundle."""
    values = dict(SWITCHES.get(name, {"precision": name}))
    if values.get("loss_resolution") == "half":
        values["loss_resolution"] = model.resolution // 2
    return values


def variant_configs(
    precisions: list[str], switches: list[str], combined: bool, device: torch.device, model: Bundle
) -> tuple[dict[str, ProtectConfig], dict[str, str]]:
    """The configs to measure (fp32 first) and the skipped ones with their reasons."""
    base = base_config(model)
    configs, skipped = {"fp32": base}, {}
    for name in [p for p in precisions if p != "fp32"] + switches:
        reason = skip_reason(name, device, model)
        if reason:
            skipped[name] = reason
        else:
            configs[name] = dataclasses.replace(base, **switch(name, model))
    applicable = [n for n in configs if n != "fp32"]
    if combined and len(applicable) > 1:
        precision = next((p for p in reversed(precisions) if p in configs), "fp32")
        overrides: dict[str, Any] = {"precision": precision}
        for name in (n for n in switches if n in configs):
            overrides.update(switch(name, model))
        configs["combined"] = dataclasses.replace(base, **overrides)
    return configs, skipped


@contextlib.contextmanager
def unfrozen(model: Bundle) -> Iterator[None]:
    """The published code's setting: network weights require gradients (autograd computes them
    and throws them away). The bundle's modules are frozen; this lifts it for the naive run."""
    params = [p for m in model.networks for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


@contextlib.contextmanager
def networks_for(model: Bundle, config: ProtectConfig) -> Iterator[None]:
    """The networks in ``config``'s memory format for the duration, then back to NCHW."""
    set_memory_format(model.networks, config.channels_last)
    try:
        yield
    finally:
        set_memory_format(model.networks, channels_last=False)


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakResident:
    """The process's resident set sampled every few ms while it runs (this variant's peak, not
    the process lifetime's ``ru_maxrss``), and the resident set before it."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.before, self.peak = interval_s, resident_mib(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_mib())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakResident:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_mib())


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """(result, seconds, peak MiB, MiB added over the start): CUDA's max allocated (above what was
    allocated before), or the sampled peak resident set on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    with contextlib.nullcontext() if device.type == "cuda" else PeakResident() as resident:
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        return result, elapsed, peak, peak - before
    assert resident is not None
    return result, elapsed, resident.peak, resident.peak - resident.before


class Case:
    """One configuration of one stage's loop on one batch: ``run(steps)`` → the optimised rows
    (refinement: the trainable rows; inversion: W+)."""

    def __init__(
        self, model: Bundle, inputs: Inputs, config: ProtectConfig, naive: bool = False, stage: str = "refinement"
    ) -> None:
        self.model, self.inputs, self.config, self.naive, self.stage = model, inputs, config, naive, stage
        self.attribute_loss = build_attribute_loss(config, model)

    def _refine(self, mix: Mix, x: torch.Tensor, groups: torch.Tensor, steps: int, config: ProtectConfig) -> Any:
        m = self.model
        return refine_latents(
            mix,
            x,
            groups,
            generator=m.generator,
            face_embedder=m.face_embedder,
            attribute_loss=self.attribute_loss,
            config=config,
            steps=steps,
        ).trainable

    def _invert(self, steps: int, config: ProtectConfig) -> torch.Tensor:
        return invert_as_configured(self.inputs.x, self.model, config, steps).w_plus

    def run(self, steps: int, config: ProtectConfig | None = None) -> torch.Tensor:
        config = config or self.config
        if self.stage == "inversion":
            return self._invert(steps, config)
        mix, x, groups = self.inputs.mix, self.inputs.x, self.inputs.groups
        if not self.naive:
            return self._refine(mix, x, groups, steps, config)
        one = groups[:1] * 0
        return torch.cat(
            [self._refine(mix.take(slice(i, i + 1)), x[i : i + 1], one, steps, config) for i in range(x.shape[0])]
        )

    def w_plus(self, result: torch.Tensor) -> torch.Tensor:
        """The W+ a result renders from."""
        return result if self.stage == "inversion" else self.inputs.mix.assemble(result)

    def flops_per_step(self) -> int:
        """FLOPs of one step (forward and backward), eager: a 2-step call minus a 1-step call."""
        eager = dataclasses.replace(self.config, compile="off")
        counts = []
        for steps in (1, 2):
            with FlopCounterMode(display=False) as counter:
                self.run(steps, eager)
            counts.append(counter.get_total_flops())
        return counts[1] - counts[0]


def measure(
    case: Case, name: str, steps: int, device: torch.device, repeats: int = 1
) -> tuple[dict[str, Any], torch.Tensor]:
    batch = case.inputs.x.shape[0]
    context = unfrozen(case.model) if case.naive else networks_for(case.model, case.config)
    with context:
        _, first, *_ = timed(device, lambda: case.run(1))  # warm-up; compiles where the config says so
        flops = case.flops_per_step()
        runs = [timed(device, lambda: case.run(steps)) for _ in range(repeats)]
    # the median run: a shared machine's hiccups land in one repeat, not in the figure
    trainable, seconds, *_ = sorted(runs, key=lambda r: r[1])[len(runs) // 2]
    peak, added = max(r[2] for r in runs), max(r[3] for r in runs)
    # Rounded once, and everything derived from the recorded value (as the speed-ups are), so a
    # record is consistent with itself: images/s from the unrounded time could differ in its last digit.
    ms_step = round(1000 * seconds / steps, 2)
    floor_ms = flops / batch / H100_BF16_FLOPS * 1e3
    return {
        "variant": name,
        "batch": batch,
        "steps_timed": steps,
        "repeats": repeats,
        "ms_per_step": ms_step,
        "images_per_s_at_50_steps": round(batch / (FULL_STEPS * ms_step / 1000), 3),
        "peak_memory_mib": round(peak, 1),
        "memory_added_mib": round(added, 1),
        "first_call_s": round(first, 2),
        "tflop_per_step_per_item": round(flops / batch / 1e12, 6),
        "achieved_tflops": round(flops / (seconds / steps) / 1e12, 4),
        # DESIGN §7: the floor at an H100's dense BF16 peak, and how far this run is above it
        "floor_ms_per_item_step_h100_bf16": round(floor_ms, 5),
        "ratio_to_floor": round(ms_step / batch / floor_ms, 1),
        "config": {
            k: v
            for k, v in dataclasses.asdict(case.config).items()
            if k in ("precision", "channels_last", "compile", "loss_resolution")
        },
    }, trainable


def agreement(case: Case, fast: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Correctness guard: render both results at full resolution and compare pixels and templates."""
    model = case.model
    with torch.no_grad():
        a = model.generator.synthesis(case.w_plus(fast)).clamp(-1, 1).float()
        b = model.generator.synthesis(case.w_plus(reference)).clamp(-1, 1).float()
        ta, tb = model.face_embedder(fr_crop(a)), model.face_embedder(fr_crop(b))
    cosine = float((ta * tb).sum(1).min())
    return {
        "max_abs_pixel_diff_levels": round(float((a - b).abs().max()) * 127.5, 3),
        "mean_abs_pixel_diff_levels": round(float((a - b).abs().mean()) * 127.5, 4),
        "min_template_cosine": round(cosine, 6),
        "guard_passed": cosine >= GUARD_MIN_COSINE,
    }


def trace(case: Case, device: torch.device) -> str:
    """Markdown: time per stage of a step and the top operators, over TRACE_STEPS steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with networks_for(case.model, case.config), torch.profiler.profile(activities=activities) as prof:
        case.run(TRACE_STEPS)
    events = prof.key_averages()
    attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    self_attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    stage_us = {e.key: getattr(e, attr) for e in events if e.key in STAGES}
    total = sum(stage_us.values()) or 1.0
    lines = [
        f"Profile of {TRACE_STEPS} steps, variant fp32, batch {case.inputs.x.shape[0]}, {device.type} "
        f"({'CUDA kernel' if device.type == 'cuda' else 'CPU'} time).",
        "",
        "| stage | ms per step | share |",
        "|---|---:|---:|",
        *(
            f"| {s} | {stage_us.get(s, 0) / 1e3 / TRACE_STEPS:.1f} | {100 * stage_us.get(s, 0) / total:.1f} % |"
            for s in STAGES
        ),
        "",
        "| operator | self ms per step | calls per step |",
        "|---|---:|---:|",
    ]
    ops = sorted((e for e in events if e.key not in STAGES), key=lambda e: getattr(e, self_attr), reverse=True)
    for e in ops[:12]:
        lines.append(f"| `{e.key}` | {getattr(e, self_attr) / 1e3 / TRACE_STEPS:.1f} | {e.count / TRACE_STEPS:g} |")
    return "\n".join(lines) + "\n"


def describe(row: dict[str, Any]) -> str:
    text = (
        f"{row['variant']:13s} batch {row['batch']:3d}: {row['ms_per_step']:9.1f} ms/step, "
        f"{row['images_per_s_at_50_steps']:7.3f} images/s (50 steps), peak {row['peak_memory_mib']:.0f} MiB, "
        f"{row['ratio_to_floor']}× floor"
    )
    if "speedup_vs_naive" in row:
        text += f", {row['speedup_vs_naive']}× naive"
    if "min_template_cosine" in row:
        text += f", template cos {row['min_template_cosine']}"
    return text


def save(
    args: argparse.Namespace,
    device: torch.device,
    rows: list[dict[str, Any]],
    skipped: dict[str, str],
    peak_gflops: float | None,
) -> Path:
    """The record so far, written after every batch size: a run stopped at its time limit (a GPU
    lease) keeps what it measured. Batch sizes and stages this run does not measure are kept from the file."""
    path = Path(args.out) / f"refine_{args.profile}_{device.type}.json"
    if path.exists():  # a run split over several calls: keep the other batch sizes
        earlier = json.loads(path.read_text())["results"]
        kept = [r for r in earlier if r["batch"] not in args.batches or r.get("stage", "refinement") not in args.stages]
        rows = sorted(kept + rows, key=lambda r: (r.get("stage", "refinement"), r["batch"]))
    floor = {"cpu_peak_gflops_measured": peak_gflops, "cpu_nominal_gflops": CPU_NOMINAL_GFLOPS} if peak_gflops else {}
    return save_record(
        path,
        "refine_bench",
        rows,
        profile=args.profile,
        skipped=skipped,
        guard=f"template cosine ≥ {GUARD_MIN_COSINE} against fp32 (pixel differences reported)",
        **floor,
    )


def measure_batch(
    args: argparse.Namespace,
    model: Bundle,
    device: torch.device,
    configs: dict[str, ProtectConfig],
    stage: str,
    batch: int,
    peak_gflops: float | None,
) -> list[dict[str, Any]]:
    """Every variant of one stage at one batch size, side by side, fp32 first."""
    inputs = make_inputs(model, batch, device)
    base_row, base = measure(
        Case(model, inputs, configs["fp32"], stage=stage), "fp32", args.steps, device, args.repeats
    )
    batch_rows = [base_row]
    naive = args.naive and stage == "refinement"
    if naive:
        naive_case = Case(model, inputs, configs["fp32"], naive=True)
        naive_row, naive_out = measure(naive_case, "naive", args.steps, device, args.repeats)
        base_row.update(agreement(naive_case, base, naive_out))
        batch_rows.append(naive_row)
    for name, config in configs.items():
        if name == "fp32":
            continue
        case = Case(model, inputs, config, stage=stage)
        variant_row, out = measure(case, name, args.steps, device, args.repeats)
        variant_row.update(agreement(case, out, base))
        variant_row["speedup_vs_fp32"] = round(base_row["ms_per_step"] / variant_row["ms_per_step"], 2)
        batch_rows.append(variant_row)
    for row in batch_rows:
        row["stage"] = stage
        if naive and row["variant"] != "naive":
            row["speedup_vs_naive"] = round(naive_row["ms_per_step"] / row["ms_per_step"], 2)
        if peak_gflops:
            flop = row["tflop_per_step_per_item"] * 1e12
            row["cpu_floor_ms_per_item_step"] = round(flop / (peak_gflops * 1e9) * 1e3, 3)
            row["cpu_nominal_floor_ms_per_item_step"] = round(flop / (CPU_NOMINAL_GFLOPS * 1e9) * 1e3, 3)
            row["ms_per_item_step"] = round(row["ms_per_step"] / row["batch"], 2)
            row["ratio_to_cpu_floor"] = round(row["ms_per_item_step"] / row["cpu_floor_ms_per_item_step"], 2)
            row["ratio_to_cpu_nominal_floor"] = round(
                row["ms_per_item_step"] / row["cpu_nominal_floor_ms_per_item_step"], 2
            )
        print(f"{args.profile} {device.type} {stage:10s} " + describe(row), flush=True)
    return batch_rows


def cpu_peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    """This CPU's fp32 peak as torch reaches it: a size² matmul on every intra-op thread, the best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: threads, caches, the clock
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return round(2 * size**3 / best / 1e9, 1)


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    model = bundle.load(args.bundle, device) if args.bundle else profiles.random_bundle(args.profile).to(device)
    args.profile = model.profile
    configs, skipped = variant_configs(args.precision, args.switches, args.combined, device, model)
    for name, reason in skipped.items():
        print(f"skip {name}: {reason}", flush=True)
    peak_gflops = cpu_peak_gflops() if device.type == "cpu" else None
    stages = [st for st in args.stages if st == "refinement" or model.encoder is None]
    for st in set(args.stages) - set(stages):
        skipped[st] = "the bundle has an encoder: no inversion by optimisation"
    rows = []
    for stage in stages:
        for batch in args.batches:
            rows += measure_batch(args, model, device, configs, stage, batch, peak_gflops)
            record = save(args, device, rows, skipped, peak_gflops)
    if args.trace:
        inputs = make_inputs(model, max(args.batches), device)
        path = Path(args.out) / f"refine_profile_{args.profile}_{device.type}.md"
        path.write_text(trace(Case(model, inputs, configs["fp32"]), device))
        print(f"wrote {path}")
    return {"path": record, "rows": rows, "skipped": skipped}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=profiles.RANDOM_PROFILES, default="tiny", help="random weights of a profile")
    p.add_argument("--bundle", help="a bundle on disk instead (real weights: mobile1024)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median counts (default 3)")
    p.add_argument("--precision", nargs="+", default=["fp32", "tf32", "bf16"], choices=["fp32", "tf32", "bf16"])
    p.add_argument("--switches", nargs="*", default=list(SWITCHES), choices=list(SWITCHES))
    p.add_argument("--stages", nargs="+", default=["refinement"], choices=["refinement", "inversion"])
    p.add_argument("--no-combined", dest="combined", action="store_false", help="skip the all-switches variant")
    p.add_argument("--naive", action="store_true", help="also run the published code's way at each batch size")
    p.add_argument("--trace", action="store_true", help="write a torch.profiler breakdown of one fp32 case")
    p.add_argument("--out", default=str(results_dir()), help="default benchmarks/results/<date>-<machine>")
    return p


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

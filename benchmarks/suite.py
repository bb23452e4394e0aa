"""The benchmark suite behind ``make bench``: every figure of one machine in one folder.

    python -m benchmarks.suite [--part refine load summary ...] [--out DIR] [--quick]

Runs, on CUDA when there is a GPU and on the CPU otherwise:

* ``refine`` — :mod:`benchmarks.refine_bench` with the naive baseline, every precision and speed
  switch and a torch.profiler breakdown. CPU: the ``tiny`` profile at batches 1/8/24 and the
  full-size ``ffhq1024`` networks at batch 1 (2 timed steps: ~11 s each here). CUDA: ``ffhq1024``
  at batches 1/8/16/32;
* ``load`` — :mod:`benchmarks.load` against an embedded server it starts on loopback (CPU: tiny,
  concurrency 1/2/4; CUDA: random-weight ffhq1024 on GPU 0, concurrency 1–32);
* ``summary`` — ``summary.md``: the headline table against the targets of issue 9 (one H100,
  ffhq1024, 50 steps: ≥ 10 protected faces/s at saturation, ≤ 1 s p50 for a single request,
  ≥ 20× the naive baseline), every measured table, and where the time goes.

Writes to ``benchmarks/results/<date>-<machine>/`` (``--out`` to change). Parts can run in separate
calls (a GPU lease is at most 10 minutes a call): ``--part refine --batches 1 8``, ``--part refine
--batches 16 32`` (rows of other batch sizes are kept), then ``--part load``, then
``--part summary``. ``--quick`` shortens everything (a smoke run, not figures to publish).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks import load, refine_bench
from benchmarks.machine import machine_label, results_dir

TARGETS = {"faces_per_s": 10.0, "p50_s": 1.0, "speedup": 20.0}  # issue 9, one H100, ffhq1024, 50 steps
PARTS = ("refine", "load", "summary")


def refine_runs(cuda: bool, quick: bool, batches: list[str] | None = None) -> list[list[str]]:
    """refine_bench argument lists for this machine (``batches`` overrides the main profile's)."""
    steps = "3" if quick else "10"
    if cuda:
        batches = batches or (["1", "8"] if quick else ["1", "8", "16", "32"])
        return [["--profile", "ffhq1024", "--device", "cuda", "--batches", *batches, "--steps", steps]]
    tiny_batches = batches or (["1", "8"] if quick else ["1", "8", "24"])
    # compiling the full-size step on 2 cores would dominate the run: the CPU's ffhq1024 run leaves it out
    full_size = ["--batches", "1", "--steps", "1" if quick else "2", "--repeats", "1"]
    full_size += ["--switches", "channels_last", "loss_256"]
    return [
        ["--profile", "tiny", "--device", "cpu", "--batches", *tiny_batches, "--steps", steps],
        ["--profile", "ffhq1024", "--device", "cpu", *full_size],
    ]


def load_args(cuda: bool, quick: bool) -> list[str]:
    levels = ["1", "2", "4", "8", "16", "32"] if cuda else ["1", "2", "4"]
    timing = ["--duration", "5", "--warmup", "2"] if quick else ["--duration", "30" if cuda else "40", "--warmup", "10"]
    target = ["--profile", "ffhq1024", "--gpu"] if cuda else ["--profile", "tiny"]
    return ["--start", *target, "--concurrency", *(levels[:2] if quick else levels), *timing]


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value: float, unit: str = "") -> str:
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return text + unit


def level(row: dict[str, float]) -> str:
    return f"concurrency {row['Concurrency']:g}" if "Concurrency" in row else f"{row['Request Rate']:g} requests/s"


def headline(refines: list[dict[str, Any]], load_rows: list[dict[str, float]], label: str) -> list[str]:
    """The headline table: each target beside what this run measured, labelled with the machine."""
    lines = [
        "| | target (1× H100, ffhq1024, 50 steps) | measured | machine, profile |",
        "|---|---|---|---|",
    ]
    if load_rows:
        best = max(load_rows, key=lambda r: r["Inferences/Second"])
        single = next((r for r in load_rows if r.get("Concurrency") == 1), None)  # none in a rate sweep
        lines.append(
            f"| protected faces/s at saturation (server, 5 views = 6 refined items per face) | "
            f"≥ {TARGETS['faces_per_s']:g} | {fmt(best['Inferences/Second'])} ({level(best)}) "
            f"| {label}, {load_rows[0].get('profile', '')} |"
        )
        if single:
            lines.append(
                f"| single-request latency p50 (server) | ≤ {TARGETS['p50_s']:g} s | "
                f"{fmt(single['p50 latency'] / 1e6, ' s')} | {label}, {load_rows[0].get('profile', '')} |"
            )
    for record in refines:
        rows = record["results"]
        naive = [r for r in rows if r["variant"] == "naive"]
        ours = [r for r in rows if r["variant"] != "naive" and r.get("guard_passed", True)]
        if not naive or not ours:
            continue
        best = max(ours, key=lambda r: r["images_per_s_at_50_steps"])
        # per refined item, so that the ratio keeps its digits when images/s rounds to 0.001
        naive_ms = min(r["ms_per_step"] / r["batch"] for r in naive)
        best_ms = best["ms_per_step"] / best["batch"]
        lines.append(
            f"| refinement throughput over the naive baseline (no views) | ≥ {TARGETS['speedup']:g}× | "
            f"{fmt(naive_ms / best_ms, '×')} ({best['variant']}, batch {best['batch']}: {fmt(best_ms, ' ms')} vs "
            f"{fmt(naive_ms, ' ms')} per item-step) | {label}, {record['profile']} |"
        )
        lines.append(
            f"| ms per refined item and step (floor {best['floor_ms_per_item_step_h100_bf16']:.3g} ms on an H100) | "
            f"≈ 0.46 ms at full size | {fmt(best_ms, ' ms')} ({best['ratio_to_floor']}× the floor) | "
            f"{label}, {record['profile']} |"
        )
    return lines


def guard(row: dict[str, Any]) -> str:
    if "guard_passed" not in row:
        return ""
    return "pass" if row["guard_passed"] else "**fail**"


def refine_table(record: dict[str, Any]) -> list[str]:
    lines = [
        f"### Refinement loop, {record['profile']} (guard: {record['guard']})",
        "",
        "| variant | batch | ms/step | images/s (50 steps) | × naive | × fp32 | peak MiB | first call s "
        "| TFLOP/item-step | achieved TFLOP/s | × floor | max / mean pixel diff | min template cos | guard |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in record["results"]:
        diff = (
            f"{r['max_abs_pixel_diff_levels']} / {r['mean_abs_pixel_diff_levels']}"
            if "max_abs_pixel_diff_levels" in r
            else ""
        )
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['ms_per_step']} | {r['images_per_s_at_50_steps']} | "
            f"{r.get('speedup_vs_naive', '')} | {r.get('speedup_vs_fp32', '')} | {r['peak_memory_mib']:.0f} | "
            f"{r['first_call_s']} | {r['tflop_per_step_per_item']} | {r['achieved_tflops']} | {r['ratio_to_floor']} | "
            f"{diff} | {r.get('min_template_cosine', '')} | {guard(r)} |"
        )
    for name, reason in record.get("skipped", {}).items():
        lines.append(f"\nNot measured here: `{name}` — {reason}.")
    return lines


def autoscale_lines(a: dict[str, Any]) -> list[str]:
    base, ramp = a["traffic"]["base_faces_per_s"], a["traffic"]["ramp"]
    return [
        "## Autoscaling, on paper (`python -m benchmarks.autoscale_sim`)",
        "",
        f"The HPA of the {a['overlay']} overlay on this run's load curve (one pod: "
        f"{fmt(a['curve']['pod_capacity_faces_per_s'])} faces/s at most): {fmt(base)} → {fmt(base * ramp)} faces/s "
        f"in {a['traffic']['ramp_minutes']:g} minutes, pods ready {a['startup_s']:g} s after creation. The peak "
        f"needs {a['replicas_needed_at_peak']} pods; the HPA went up to {a['max_replicas_seen']} and held "
        f"{a['replicas_at_peak_load']} at the end of the plateau. p99: {fmt(a['max_p99_s'], ' s')} at worst, "
        f"{fmt(a['p99_s_at_end_of_hold'], ' s')} at the end of the plateau. {fmt(a['pod_hours'])} pod-hours for "
        f"{a['faces_served']:.0f} faces: {fmt(a['pod_hours_per_million_faces'])} pod-hours per 1 M faces "
        f"(${fmt(a['usd_per_million_faces'])} at ${a['gpu_hour_usd']:g} per pod-hour, an assumed price); a pod "
        f"kept saturated would need {fmt(a['pod_hours_per_million_faces_at_saturation'])}.",
        "",
        "![autoscaling](autoscale.png)",
        "",
    ]


def write_summary(out: Path) -> Path:
    refines = [r for r in (read_json(p) for p in sorted(out.glob("refine_*.json"))) if r]
    load_record = read_json(out / "load.json")
    load_rows = []
    if load_record:
        load_rows = [dict(r, profile=load_record["served"]) for r in load_record["results"]]
    machine = (load_record or (refines[0] if refines else {})).get("machine", {})
    label = machine_label(machine) if machine else out.name
    lines = [
        f"# Benchmarks — {out.name}",
        "",
        f"Machine: `{json.dumps(machine)}`",
        "",
        "Figures from random-weight networks in the stated shapes (speed does not depend on the weights). "
        "The targets are for one H100 with the full-size networks; on another machine they are a yardstick, "
        "not a pass/fail.",
        "",
        "## Headline",
        "",
        *headline(refines, load_rows, label),
        "",
    ]
    for record in refines:
        lines += [*refine_table(record), ""]
    for profile in sorted(out.glob("refine_profile_*.md")):
        lines += [f"### Where the time goes ({profile.stem.removeprefix('refine_profile_')})", "", profile.read_text()]
    if (out / "load.md").exists():
        lines += [
            "## Load (perf_analyzer columns)",
            "",
            *(out / "load.md").read_text().splitlines()[2:],
            "",
            "![latency vs throughput](latency_throughput.png)",
            "",
        ]
    autoscale = read_json(out / "autoscale.json")
    if autoscale:
        lines += autoscale_lines(autoscale["results"])
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", default=None, help="default benchmarks/results/<date>-<machine>")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (not figures to publish)")
    parser.add_argument("--batches", nargs="+", help="refine: these batch sizes only (split a GPU sweep over calls)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else results_dir()
    cuda = torch.cuda.is_available()
    if "refine" in args.part:
        for run_args in refine_runs(cuda, args.quick, args.batches):
            print("refine_bench " + " ".join(run_args), flush=True)
            refine_bench.run(refine_bench.parser().parse_args([*run_args, "--naive", "--trace", "--out", str(out)]))
    if "load" in args.part:
        load_argv = [*load_args(cuda, args.quick), "--out", str(out)]
        print("load " + " ".join(load_argv), flush=True)
        load.main(load_argv)
    if "summary" in args.part:
        write_summary(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/refine_bench.py and the suite's summary on short real runs (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import refine_bench
from benchmarks.suite import write_summary


def test_refine_bench_measures_each_switch_against_fp32_and_the_naive_baseline(tmp_path: Path) -> None:
    args = ["--profile", "tiny", "--device", "cpu", "--batches", "1", "2", "--steps", "1", "--repeats", "1", "--naive"]
    args += ["--precision", "fp32", "bf16", "--switches", "channels_last", "cuda_graphs", "loss_256", "loss_half"]
    args += ["--stages", "refinement", "inversion"]
    result = refine_bench.run(refine_bench.parser().parse_args([*args, "--out", str(tmp_path)]))
    # bf16 and CUDA graphs need CUDA; the 64 px generator has nothing to gain from 256 px losses; the
    # half-size render is MobileStyleGAN's; tiny has an encoder, so no inversion by optimisation
    assert set(result["skipped"]) == {"bf16", "cuda_graphs", "loss_256", "loss_half", "inversion"}
    record = json.loads((tmp_path / "refine_tiny_cpu.json").read_text())
    rows = record["results"]
    assert record["cpu_peak_gflops_measured"] > 0 and record["cpu_nominal_gflops"] == 128.0
    assert [(r["variant"], r["batch"]) for r in rows] == [
        (v, b) for b in (1, 2) for v in ("fp32", "naive", "channels_last")
    ]
    for row in rows:
        assert row["ms_per_step"] > 0 and row["tflop_per_step_per_item"] > 0
        # this variant's own sampled peak, not the process's lifetime maximum
        assert 0 <= row["memory_added_mib"] <= row["peak_memory_mib"]
        assert row["images_per_s_at_50_steps"] == round(row["batch"] / (50 * row["ms_per_step"] / 1000), 3)
        assert row["stage"] == "refinement"
        # the CPU's floor from this run's measured peak: FLOPs per item-step ÷ GFLOP/s
        floor_ms = row["tflop_per_step_per_item"] * 1e12 / (record["cpu_peak_gflops_measured"] * 1e9) * 1e3
        assert row["cpu_floor_ms_per_item_step"] == pytest.approx(floor_ms, abs=6e-4)
        assert row["ratio_to_cpu_floor"] == pytest.approx(row["ms_per_item_step"] / floor_ms, rel=0.02, abs=0.02)
    by = {(r["variant"], r["batch"]): r for r in rows}
    for batch in (1, 2):
        naive, fp32, nhwc = (by[v, batch] for v in ("naive", "fp32", "channels_last"))
        # same arithmetic, so the same FLOPs per item-step (the naive path adds weight gradients)
        assert nhwc["tflop_per_step_per_item"] == fp32["tflop_per_step_per_item"]
        assert naive["tflop_per_step_per_item"] > fp32["tflop_per_step_per_item"]
        assert fp32["guard_passed"] and fp32["min_template_cosine"] >= 0.99  # against naive
        assert nhwc["guard_passed"] and nhwc["max_abs_pixel_diff_levels"] < 1.0  # against fp32
        assert fp32["speedup_vs_naive"] == round(naive["ms_per_step"] / fp32["ms_per_step"], 2)
        assert nhwc["speedup_vs_fp32"] == round(fp32["ms_per_step"] / nhwc["ms_per_step"], 2)

    summary = write_summary(tmp_path).read_text()
    best = max((r for r in rows if r["variant"] != "naive"), key=lambda r: r["images_per_s_at_50_steps"])
    naive_ms = min(r["ms_per_step"] / r["batch"] for r in rows if r["variant"] == "naive")
    ratio = naive_ms / (best["ms_per_step"] / best["batch"])
    line = next(x for x in summary.splitlines() if x.startswith("| refinement throughput over the naive"))
    assert f"{ratio:.3g}×" in line and "cpu-" in line and "tiny" in line
    assert "Not measured here: `bf16`" in summary


def test_a_sweep_split_over_calls_keeps_the_other_batch_sizes(tmp_path: Path) -> None:
    base = [
        "--profile",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--switches",
        "--out",
        str(tmp_path),
    ]
    refine_bench.run(refine_bench.parser().parse_args([*base, "--batches", "1", "2"]))
    first = json.loads((tmp_path / "refine_tiny_cpu.json").read_text())["results"]
    refine_bench.run(refine_bench.parser().parse_args([*base, "--batches", "2", "3"]))
    rows = json.loads((tmp_path / "refine_tiny_cpu.json").read_text())["results"]
    assert [(r["variant"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("fp32", 3)]
    assert rows[0] == first[0] and rows[1] != first[1]  # batch 1 kept, batch 2 measured again

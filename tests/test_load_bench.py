"""benchmarks/load.py against the live loopback server: the perf_analyzer columns, bounded in time."""

from __future__ import annotations

import csv
from pathlib import Path

from anonymixer_client import AnonymixerClient, CallRecord
from benchmarks.load import COLUMNS, main, sample_face, settled_totals
from benchmarks.suite import write_summary
from optimizer_backend.server import EmbeddedTritonServer


def test_a_short_sweep_writes_the_columns(triton_server: EmbeddedTritonServer, tmp_path: Path) -> None:
    args = ["--url", triton_server.grpc_url, "--concurrency", "1", "2", "--duration", "3", "--warmup", "1"]
    assert main([*args, "--steps", "1", "--out", str(tmp_path)]) == 0
    with (tmp_path / "load.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["Concurrency"]) for r in rows] == [1, 2] and list(rows[0]) == COLUMNS
    for row in rows:
        values = {k: float(v) for k, v in row.items()}
        assert values["Inferences/Second"] > 0
        assert values["p50 latency"] <= values["p90 latency"] <= values["p95 latency"] <= values["p99 latency"]
        assert all(values[c] >= 0 for c in COLUMNS[2:9]) and sum(values[c] for c in COLUMNS[4:8]) > 0
        assert values["Server Compute Infer"] > values["Client Send"]  # a refinement outweighs building a request
    assert (tmp_path / "latency_throughput.png").stat().st_size > 0
    assert "| Concurrency |" in (tmp_path / "load.md").read_text()
    # the suite's headline reads the same run: saturation = the best level, latency = concurrency 1
    headline = write_summary(tmp_path).read_text()
    best = max(float(r["Inferences/Second"]) for r in rows)
    faces = next(x for x in headline.splitlines() if x.startswith("| protected faces/s at saturation"))
    p50 = next(x for x in headline.splitlines() if x.startswith("| single-request latency p50"))
    assert f"| {best:.3g} (concurrency" in faces
    assert f"{float(rows[0]['p50 latency']) / 1e6:.3g} s" in p50
    assert_server_time_inside_latency(triton_server.grpc_url)


def assert_server_time_inside_latency(url: str) -> None:
    """What the columns split a request's latency into, checked on single requests: the server's
    queue + compute for a request lies inside the client's latency of that same request. (The
    sweep's server columns average every request Triton finished between two snapshots, the client's
    percentiles only those finished inside the window: on a loaded machine the two populations
    differ, so comparing them across can fail with nothing wrong.)"""
    heard: list[CallRecord] = []
    face = sample_face()
    with AnonymixerClient(url, on_call=heard.append) as client:
        for n in range(3):
            before = client.statistics()
            client.protect([face], f"inside {n}".encode(), steps=1)
            after = settled_totals(client, before.success_count + 1)
            parts = ("queue", "compute_input", "compute_infer", "compute_output")
            server_s = sum(getattr(after, f"{p}_ns") - getattr(before, f"{p}_ns") for p in parts) / 1e9
            assert after.success_count == before.success_count + 1  # this request alone
            # two clocks: Triton's stage timestamps and the client's; a few ms apart at most
            assert 0 < server_s <= heard[-1].seconds + 0.01, (server_s, heard[-1])


def test_a_request_rate_level_sends_on_schedule(triton_server: EmbeddedTritonServer, tmp_path: Path) -> None:
    args = ["--url", triton_server.grpc_url, "--request-rate", "1", "--duration", "4", "--warmup", "1"]
    assert main([*args, "--steps", "1", "--out", str(tmp_path)]) == 0
    with (tmp_path / "load.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert list(row) == ["Request Rate", *COLUMNS[1:]] and float(row["Request Rate"]) == 1
    # open loop: about one answer per second, whatever each takes (the last ones may fall outside)
    assert 0.25 <= float(row["Inferences/Second"]) <= 1.5
    assert float(row["p50 latency"]) <= float(row["p99 latency"])
    headline = write_summary(tmp_path).read_text()
    assert "(1 requests/s)" in headline and "single-request latency" not in headline

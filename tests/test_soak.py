"""Soak: concurrency 8 for 60 s against the live server — no failures, no memory growth."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import tritonclient.grpc as grpcclient

from benchmarks.overload import tree_rss_bytes
from optimizer_backend.server import EmbeddedTritonServer
from tests.test_anonymixer_server import FACE, SECRET_KEYS, request_inputs

DURATION_S = 60.0
WARMUP_S = 10.0
CONCURRENCY = 8


def test_soak(triton_server: EmbeddedTritonServer) -> None:
    assert triton_server.process is not None
    failures: list[str] = []
    counts = [0] * CONCURRENCY
    start = time.monotonic()
    rss_after_warmup = 0

    def worker(i: int) -> None:
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
            while time.monotonic() - start < DURATION_S:
                try:
                    inputs = request_inputs([FACE], [SECRET_KEYS[i % 2]], steps=[1 + i % 3])
                    client.infer("anonymixer", inputs, client_timeout=60)
                    counts[i] += 1
                except Exception as exc:  # every failure is recorded, none may happen
                    failures.append(f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        futures = [pool.submit(worker, i) for i in range(CONCURRENCY)]
        time.sleep(WARMUP_S)
        rss_after_warmup = tree_rss_bytes(triton_server.process.pid)
        for f in futures:
            f.result()
    rss_end = tree_rss_bytes(triton_server.process.pid)
    growth = rss_end / rss_after_warmup - 1
    print(
        f"soak: {sum(counts)} requests in {DURATION_S:.0f} s at concurrency {CONCURRENCY} "
        f"({sum(counts) / DURATION_S:.1f}/s), {len(failures)} failures, RSS {rss_after_warmup / 2**20:.0f} → "
        f"{rss_end / 2**20:.0f} MiB ({growth:+.1%})"
    )
    assert failures == []
    assert sum(counts) > CONCURRENCY
    assert growth < 0.10

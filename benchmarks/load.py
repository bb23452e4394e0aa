"""Load benchmark of a running service over gRPC, in perf_analyzer's columns.

    python -m benchmarks.load [--url 127.0.0.1:8001 | --start [--profile tiny|ffhq1024|mobile1024] [--gpu]]
                              [--concurrency 1 2 4 8 | --request-rate 0.5 1 2 [--max-outstanding 64]]
                              [--duration 20] [--warmup 5] [--steps N] [--out DIR]

For each concurrency level, that many threads (one client each: ``anonymixer_client``, the
library a pipeline uses, without retries, as perf_analyzer does none) send one-face requests to
``anonymixer`` back to back; with ``--request-rate``, requests leave on a fixed schedule (open loop,
up to ``--max-outstanding`` in flight, latency counted from the scheduled time). Each level runs
``--duration`` seconds after ``--warmup`` seconds that are not counted (a level with no answer yet
keeps measuring until one, up to 60 s). Per level it
records what perf_analyzer reports — Inferences/Second, Client Send,
Network+Server Send/Recv, Server Queue, Server Compute Input/Infer/Output, Client Recv and the
p50/p90/p95/p99 latencies, all in µs — the server parts from the deltas of Triton's statistics
API over the measured window (``client.statistics()``). Client Send is building the request
tensors, Client Recv is reading the outputs (the client's ``CallRecord``); Network+Server Send/Recv
is what is left of the mean latency. A request that fails is counted, not measured. Writes
``load.csv``, ``load.json`` and ``load.md`` (with the machine) and ``latency_throughput.png`` to
``--out`` (default ``benchmarks/results/<date>-<machine>/``). ``--start`` starts the embedded server
on loopback for the run: the tiny bundle, or ``--profile ffhq1024`` with seeded random weights in
the official shapes (``--gpu`` puts its models on GPU 0). Every level stops by itself (time, and
``--max-requests``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from anonymixer_client import AnonymixerClient, AnonymixerError, CallRecord, ModelStatistics
from anonymixer_client.wire import MODEL
from benchmarks.machine import machine_label, results_dir, save_record

LEVEL_COLUMN = {"concurrency": "Concurrency", "rate": "Request Rate"}  # perf_analyzer's first column
COLUMNS = [
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
]


def sample_face() -> bytes:
    """The built-in portrait's face, aligned as the service expects, as PNG."""
    from anonymixer.alignment import NEW_BUNDLE_FRAMING
    from anonymixer.face_detection import FaceDetector
    from anonymixer.samples import aligned_face, builtin_photos
    from optimizer_backend.decode import encode_png

    (_, photo), *_ = builtin_photos()
    face = aligned_face(photo, FaceDetector(), framing=NEW_BUNDLE_FRAMING)
    assert face is not None
    return encode_png(face)


def settled_totals(client: AnonymixerClient, expected: int, timeout_s: float = 10.0) -> ModelStatistics:
    """Triton updates its statistics just after it answers: poll until they count every request."""
    deadline = time.monotonic() + timeout_s
    while True:
        totals = client.statistics(MODEL)
        if totals.success_count >= expected or time.monotonic() > deadline:
            return totals
        time.sleep(0.05)


class Sender:
    """One sending thread's client (no retries, as perf_analyzer makes none) and what it heard of
    its last request."""

    def __init__(self, url: str) -> None:
        self.client = AnonymixerClient(url, timeout_s=600, retries=0, on_call=self._heard)
        self.last: CallRecord | None = None

    def _heard(self, call: CallRecord) -> None:
        self.last = call

    def protect(self, face: bytes, key: bytes, steps: int | None) -> CallRecord:
        """One one-face request; its record (timings)."""
        self.client.protect([face], key, steps=steps)
        assert self.last is not None
        return self.last

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_level(
    url: str,
    face: bytes,
    level: float,
    duration: float,
    warmup: float,
    steps: int | None,
    cap: int,
    mode: str = "concurrency",
    max_outstanding: int = 64,
) -> dict[str, float]:
    """One level: ``level`` closed-loop senders (``mode="concurrency"``), or ``level`` requests/s
    sent on a fixed schedule whatever the answers (``mode="rate"``, open loop; latency counts from
    the scheduled time, so waiting for one of ``max_outstanding`` senders is part of it)."""
    records: list[tuple[float, float, float]] = []  # (latency, send, recv) in seconds, of requests done in the window
    failures: list[str] = []
    lock = threading.Lock()
    measuring = threading.Event()
    stop = threading.Event()

    def send_one(sender: Sender, key: bytes, scheduled: float) -> None:
        try:
            call = sender.protect(face, key, steps)
        except AnonymixerError as exc:  # counted, not measured; the sender goes on
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            return
        done = time.perf_counter()
        if measuring.is_set():  # completed inside the measured window, as perf_analyzer counts
            with lock:
                records.append((done - scheduled, call.build_seconds, call.parse_seconds))
                if len(records) >= cap:
                    stop.set()

    def closed_loop(index: int) -> None:
        with Sender(url) as sender:
            n = 0
            while not stop.is_set():
                send_one(sender, f"load {index} {n}".encode(), time.perf_counter())
                n += 1

    def open_loop() -> None:
        local, senders = threading.local(), []

        def task(key: bytes, scheduled: float) -> None:
            if not hasattr(local, "sender"):
                local.sender = Sender(url)
                senders.append(local.sender)
            send_one(local.sender, key, scheduled)

        pool = ThreadPoolExecutor(max_outstanding)
        next_time, n = time.perf_counter(), 0
        while not stop.is_set():
            if stop.wait(max(next_time - time.perf_counter(), 0)):
                break
            pool.submit(task, f"load rate {n}".encode(), next_time)
            n, next_time = n + 1, next_time + 1 / level
        pool.shutdown(wait=True, cancel_futures=True)
        for sender in senders:
            sender.close()

    if mode == "rate":
        threads = [threading.Thread(target=open_loop, daemon=True)]
    else:
        threads = [threading.Thread(target=closed_loop, args=(i,), daemon=True) for i in range(int(level))]
    with AnonymixerClient(url) as stats_client:
        for thread in threads:
            thread.start()
        time.sleep(warmup)
        before = stats_client.statistics(MODEL)
        measuring.set()
        start = time.perf_counter()
        stop.wait(duration)
        while not records and time.perf_counter() - start < max(60.0, 3 * duration):  # slow levels: wait for one
            stop.wait(0.1)
        measuring.clear()
        elapsed = time.perf_counter() - start
        stop.set()
        for thread in threads:
            thread.join()
        after = settled_totals(stats_client, before.success_count + len(records))
    if not records:
        problem = f"; {len(failures)} failed, the last: {failures[-1]}" if failures else ""
        raise SystemExit(f"{mode} {level:g}: no request finished within {max(60.0, 3 * duration)} s{problem}")
    if failures:
        print(f"{mode} {level:g}: {len(failures)} request(s) failed, the first: {failures[0]}", file=sys.stderr)
    latency, send, recv = (np.array(column) * 1e6 for column in zip(*records, strict=True))
    served = max(after.success_count - before.success_count, 1)

    def server_us(part: str) -> float:
        return (getattr(after, f"{part}_ns") - getattr(before, f"{part}_ns")) / served / 1e3

    server = {p: server_us(p) for p in ("queue", "compute_input", "compute_infer", "compute_output")}
    return {
        LEVEL_COLUMN[mode]: level,
        "Inferences/Second": len(records) / elapsed,
        "Client Send": float(send.mean()),
        "Network+Server Send/Recv": max(float(latency.mean() - send.mean() - recv.mean()) - sum(server.values()), 0.0),
        "Server Queue": server["queue"],
        "Server Compute Input": server["compute_input"],
        "Server Compute Infer": server["compute_infer"],
        "Server Compute Output": server["compute_output"],
        "Client Recv": float(recv.mean()),
        **{f"p{q} latency": float(np.percentile(latency, q)) for q in (50, 90, 95, 99)},
    }


def cell(value: float | int) -> str:
    """Integers as they are; µs to one decimal; values below 10 (rates) to three significant digits."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    from evaluation.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    throughput = [r["Inferences/Second"] for r in rows]
    for q in (50, 99):
        ax.plot(throughput, [r[f"p{q} latency"] / 1e3 for r in rows], "o-", label=f"p{q}")
    for r in rows:
        label = f"c={r['Concurrency']:g}" if "Concurrency" in r else f"r={r['Request Rate']:g}/s"
        ax.annotate(label, (r["Inferences/Second"], r["p50 latency"] / 1e3), fontsize=8)
    ax.set_xlabel("protected faces / s")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def start_repository(profile: str, gpu: bool, stages_via: str = "bls") -> Path:
    """The model repository ``--start`` serves: the built-in tiny bundle, or seeded random weights
    in the profile's full-size shapes (the real weights are not needed to measure speed)."""
    from exporter.cache import cached_random_bundle, cached_repository

    return cached_repository(cached_random_bundle(profile), gpu=gpu, stages_via=stages_via)


def parser() -> argparse.ArgumentParser:
    from anonymixer.profiles import RANDOM_PROFILES
    from optimizer_backend.serve import add_stages_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--start", action="store_true", help="start the embedded server on loopback for the run")
    parser.add_argument(
        "--profile", choices=RANDOM_PROFILES, default="tiny", help="what --start serves (random weights)"
    )
    parser.add_argument("--gpu", action="store_true", help="--start with the models on GPU 0")
    add_stages_argument(parser)  # with --start
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="closed-loop senders")
    levels.add_argument("--request-rate", type=float, nargs="+", help="open loop: requests/s per level instead")
    parser.add_argument("--max-outstanding", type=int, default=64, help="open loop: at most this many in flight")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each level")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop a level after this many")
    parser.add_argument("--steps", type=int, default=None, help="STEPS per request (default: the server's)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/<date>-<machine>")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    face = sample_face()
    mode = "rate" if args.request_rate else "concurrency"
    columns = [LEVEL_COLUMN[mode], *COLUMNS[1:]]

    def sweep(url: str) -> list[dict[str, float]]:
        rows = []
        for level in args.request_rate or args.concurrency:
            row = run_level(
                url,
                face,
                level,
                args.duration,
                args.warmup,
                args.steps,
                args.max_requests,
                mode,
                args.max_outstanding,
            )
            print(
                f"{mode} {level:g}: {row['Inferences/Second']:.2f} infer/s, p50 {row['p50 latency'] / 1e3:.0f} ms, "
                f"p99 {row['p99 latency'] / 1e3:.0f} ms, server queue {row['Server Queue'] / 1e3:.0f} ms",
                flush=True,
            )
            rows.append(row)
        return rows

    if args.start:
        from optimizer_backend.server import EmbeddedTritonServer

        with EmbeddedTritonServer(start_repository(args.profile, args.gpu, args.stages_via)) as server:
            rows = sweep(server.grpc_url)
    else:
        rows = sweep(args.url)
    with (out / "load.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in r.items()} for r in rows)
    served = f"{args.profile} (random weights, started here)" if args.start else args.url
    record = save_record(
        out / "load.json", "load", rows, model=MODEL, served=served, steps=args.steps or "server default"
    )
    machine = json.loads(record.read_text())["machine"]
    title = f"{MODEL} ({served}), STEPS {args.steps or 'default'} — {machine_label(machine)}"
    plot(rows, out / "latency_throughput.png", title)
    lines = [
        f"# Load benchmark, {MODEL} — {served}",
        "",
        f"STEPS {args.steps or 'server default'}; {args.duration:g} s per level after {args.warmup:g} s warm-up; "
        "one face per request; latencies in µs.",
        "",
        f"Machine: `{json.dumps(machine)}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    (out / "load.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/load.csv, load.json, load.md and latency_throughput.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

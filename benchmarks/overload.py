"""Overload and soak (issue 28): the service under ten times the callers its model holds, and at
capacity for long. Busy must never look dead: no reloads, no lost calls, goodput held.

    python -m benchmarks.overload [--factor 10] [--duration 600] [--client-duration 300]
                                  [--soak 1800] [--steps 20] [--batch 8] [--queue 8] [--out DIR]

It starts ``anonymixer serve`` on loopback with the tiny bundle's repository (one ``anonymixer``
instance refining ``--batch`` requests of one face together, ``--queue`` more waiting: Triton refuses
the rest at once) and runs, one after the other:

1. **alone**: ``--batch`` closed-loop callers (the model's capacity) for ``--alone`` seconds: the
   goodput (answers per second) the others are measured against;
2. **raw overload**: ``factor × batch`` callers that retry a refused call after ``--raw-pause``
   seconds without backing off (the shipped client with ``retries=0``), for ``--duration`` seconds;
3. **client overload**: as many callers with the shipped client (jittered backoff, a deadline of
   ``--deadline`` seconds per call), for ``--client-duration`` seconds: each call is answered or
   raises ``DeadlineExceededError``;
4. **soak**: ``--batch`` closed-loop callers for ``--soak`` seconds while the server's resident
   memory (tritonserver, its stubs, the launcher) is sampled.

Throughout, ``/health/ready`` is sampled every second and every model's reloads are counted.
Writes ``overload.json`` and ``overload.png`` (answers per second, by minute, over the run) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.chaos import health, start_serve
from benchmarks.load import sample_face
from benchmarks.machine import results_dir, save_record

KEY = b"overload-key-0042"
ALGORITHM = '{"steps": 20, "views": 0}'


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (the launcher, tritonserver, stubs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
        stack += children.get(p, [])
    return total


def reloads(health_url: str) -> int:
    return sum(len(m.get("recoveries", [])) for m in health(health_url)[1].get("models", {}).values())


class Watch:
    """Samples ``/health/ready`` (and the server's memory) every second on a thread."""

    def __init__(self, health_url: str, pid: int) -> None:
        self.health_url, self.pid = health_url, pid
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            code, body = health(self.health_url)
            states = {name: m.get("state") for name, m in body.get("models", {}).items()}
            self.samples.append(
                {"t": time.monotonic(), "code": code, "states": states, "rss": tree_rss_bytes(self.pid)}
            )

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if start <= s["t"] <= end]


def run_callers(
    count: int, duration_s: float, call: Callable[[], str], pause_s: float
) -> list[tuple[float, float, str]]:
    """``count`` threads calling ``call()`` back to back for ``duration_s``, pausing ``pause_s``
    after a refusal (no backoff): (start, seconds, outcome)."""
    until = time.monotonic() + duration_s
    events: list[tuple[float, float, str]] = []
    lock = threading.Lock()

    def loop() -> None:
        while time.monotonic() < until:
            begin = time.monotonic()
            outcome = call()
            with lock:
                events.append((begin, time.monotonic() - begin, outcome))
            if outcome == "refused":
                time.sleep(pause_s)

    threads = [threading.Thread(target=loop) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return events


def raw_caller(url: str, face: bytes, steps: int) -> Callable[[], str]:
    """A caller without backoff: the shipped client with ``retries=0`` (a refusal comes back at once
    as ``ServiceBusyError``): ``served``, ``refused`` or the error."""
    from anonymixer_client import AnonymixerClient, ServiceBusyError

    local = threading.local()

    def call() -> str:
        if not hasattr(local, "client"):
            local.client = AnonymixerClient(url, timeout_s=600, retries=0)
        try:
            local.client.protect([face], KEY, steps=steps)
            return "served"
        except ServiceBusyError:
            return "refused"
        except Exception as exc:  # every outcome is counted: the benchmark's point
            return f"error: {type(exc).__name__}: {str(exc)[:300]}"

    return call


def client_caller(url: str, face: bytes, steps: int, deadline_s: float) -> Callable[[], str]:
    """The shipped client: ``served``, or the name of the error it raised (with its message)."""
    from anonymixer_client import AnonymixerClient

    local = threading.local()

    def call() -> str:
        if not hasattr(local, "client"):
            local.client = AnonymixerClient(url, timeout_s=deadline_s)
        try:
            local.client.protect([face], KEY, steps=steps)
            return "served"
        except Exception as exc:  # every outcome is counted: the benchmark's point
            return f"{type(exc).__name__}: {str(exc)[:300]}"

    return call


def summarise(events: list[tuple[float, float, str]], seconds: float) -> dict[str, Any]:
    served = [d for _, d, o in events if o == "served"]
    refused = [d for _, d, o in events if o == "refused"]
    others = Counter(o.split(":")[0] if not o.startswith("error") else o[:160] for _, _, o in events)
    others.pop("served", None)
    others.pop("refused", None)
    return {
        "calls": len(events),
        "served": len(served),
        "goodput_per_s": round(len(served) / seconds, 4),
        "served_latency_s": {q: round(float(np.percentile(served, p)), 2) for q, p in (("p50", 50), ("p99", 99))}
        if served
        else None,
        "refused": len(refused),
        "refusal_ms": {q: round(1000 * float(np.percentile(refused, p)), 1) for q, p in (("p50", 50), ("p99", 99))}
        if refused
        else None,
        "other_outcomes": dict(others),
    }


def settle(health_url: str, timeout_s: float = 600) -> None:
    """Until the anonymixer model has been idle for two seconds: requests a phase's callers gave up
    on may still be queued or running, and would count against the next phase."""
    idle_since, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        beats = health(health_url)[1].get("models", {}).get("anonymixer", {}).get("heartbeats", {})
        idle = bool(beats) and all(b["state"] == "idle" for b in beats.values())
        idle_since = (idle_since or time.monotonic()) if idle else None
        if idle_since and time.monotonic() - idle_since >= 2:
            return
        time.sleep(0.5)


def phase(
    name: str,
    watch: Watch,
    health_url: str,
    count: int,
    seconds: float,
    call: Callable[[], str],
    pause_s: float,
) -> tuple[dict[str, Any], list[tuple[float, float, str]]]:
    settle(health_url)
    print(f"{name}: {count} callers for {seconds:.0f} s …", file=sys.stderr, flush=True)
    before, start = reloads(health_url), time.monotonic()
    events = run_callers(count, seconds, call, pause_s)
    end = time.monotonic()
    samples = watch.between(start, end)
    result = {
        "callers": count,
        "seconds": round(end - start, 1),
        **summarise(events, end - start),
        "reloads": reloads(health_url) - before,
        "health_samples": len(samples),
        "health_not_ready": sum(s["code"] != 200 for s in samples),
        "busy_samples": sum("busy" in s["states"].values() for s in samples),
    }
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result, events


def rss_growth(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Resident memory at the start and end of the soak (means of its first and last tenths)."""
    if len(samples) < 20:
        return None
    tenth = max(len(samples) // 10, 1)
    first = float(np.mean([s["rss"] for s in samples[:tenth]]))
    last = float(np.mean([s["rss"] for s in samples[-tenth:]]))
    return {
        "first_mib": round(first / 2**20, 1),
        "last_mib": round(last / 2**20, 1),
        "growth": round(last / first - 1, 4),
    }


def build_repository(batch: int, queue: int, folder: Path) -> Path:
    from exporter.cache import cached_bundle, cached_repository
    from exporter.repository import RepositoryOptions
    from exporter.repository import build_repository as build

    models = cached_repository(cached_bundle("tiny", None), gpu=False, algorithm=ALGORITHM)
    options = RepositoryOptions(target="embedded", algorithm=ALGORITHM, protect_max_batch=batch, max_queue_size=queue)
    build(models.parent / "onnx", folder / "models", options, bundle_dir=cached_bundle("tiny", None))
    return folder / "models"


def run_overload(args: argparse.Namespace, url: str, health_url: str, pid: int) -> dict[str, Any]:
    face = sample_face()
    results: dict[str, Any] = {}
    timeline: list[tuple[str, list[tuple[float, float, str]]]] = []
    with Watch(health_url, pid) as watch:
        plan = [
            ("alone", args.batch, args.alone, raw_caller(url, face, args.steps)),
            (
                "raw_overload",
                args.factor * args.batch,
                args.duration,
                raw_caller(url, face, args.steps),
            ),
            (
                "client_overload",
                args.factor * args.batch,
                args.client_duration,
                client_caller(url, face, args.steps, args.deadline),
            ),
            ("soak", args.batch, args.soak, raw_caller(url, face, args.steps)),
        ]
        for name, count, seconds, call in plan:
            if seconds <= 0:
                continue
            start = time.monotonic()
            results[name], events = phase(name, watch, health_url, count, seconds, call, args.raw_pause)
            timeline.append((name, events))
            if name == "soak":
                results[name]["rss"] = rss_growth(watch.between(start, time.monotonic()))
    alone = results.get("alone", {}).get("goodput_per_s")
    for name in ("raw_overload", "client_overload"):
        if alone and name in results:
            results[name]["goodput_vs_alone"] = round(results[name]["goodput_per_s"] / alone, 3)
    results["_timeline"] = timeline
    return results


def plot(timeline: list[tuple[str, list[tuple[float, float, str]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not timeline:
        return
    origin = min(b for _, events in timeline for b, _, _ in events) if any(e for _, e in timeline) else 0
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name, events in timeline:
        done = np.array([b + d - origin for b, d, o in events if o == "served"])
        if not len(done):
            continue
        bins = np.arange(np.floor(done.min() / 60) * 60, done.max() + 60, 60)
        counts, edges = np.histogram(done, bins)
        ax.step(edges[:-1] / 60, counts / 60, where="post", label=name)
    ax.set_xlabel("minutes into the run")
    ax.set_ylabel("answers per second (1 min bins)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factor", type=int, default=10, help="overload callers = factor × batch")
    p.add_argument("--batch", type=int, default=8, help="the anonymixer model's max batch (its capacity)")
    p.add_argument("--queue", type=int, default=8, help="its max_queue_size")
    p.add_argument("--steps", type=int, default=20, help="STEPS per request")
    p.add_argument("--alone", type=float, default=120.0, help="seconds at capacity, the reference goodput")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of raw overload")
    p.add_argument("--client-duration", type=float, default=300.0, help="seconds of overload with the client")
    p.add_argument("--soak", type=float, default=1800.0, help="seconds at capacity, memory sampled")
    p.add_argument("--raw-pause", type=float, default=0.25, help="a raw caller's pause after a refusal")
    p.add_argument("--deadline", type=float, default=60.0, help="the client's deadline per call")
    p.add_argument("--out", default=None, help="default benchmarks/results/<date>-<machine>")
    p.add_argument("--name", default="overload")
    return p


def main(argv: list[str] | None = None) -> int:
    from optimizer_backend.server import free_ports

    args = parser().parse_args(argv)
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="overload-"))
    repository = build_repository(args.batch, args.queue, folder)
    ports = dict(zip(("grpc", "http", "metrics", "health"), free_ports(4), strict=True))
    command = [sys.executable, "-m", "apps", "serve", "--repository", str(repository)]
    command += [f"--{name}-port={port}" for name, port in ports.items()]
    log = folder / "serve.log"
    process: subprocess.Popen[bytes] = start_serve(command, log)
    url, health_url = f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['health']}"
    try:
        deadline = time.monotonic() + 600
        while health(health_url)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not become ready; see {log}")
            time.sleep(0.5)
        results = run_overload(args, url, health_url, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    timeline = results.pop("_timeline")
    served = f"anonymixer serve (tiny, batch {args.batch}, queue {args.queue}, {args.steps} steps per request)"
    save_record(out / f"{args.name}.json", "overload", results, served=served, command=" ".join(sys.argv))
    plot(timeline, out / f"{args.name}.png")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kill each model's process under load and count what the callers lose (issue 17).

    python -m benchmarks.chaos [--models anonymixer face_embedder anonymixer_scene face_detector]
                               [--concurrency 4] [--duration 60] [--out DIR]
                               [--url HOST:8001 --health http://HOST:8003 | --command-from-k8s OVERLAY]

Without ``--url`` it starts ``anonymixer serve`` on the tiny repository (5 refinement steps) on
loopback, or with ``--command-from-k8s OVERLAY`` the container command the rendered k8s overlay runs
(its ``/models`` and ports replaced by local ones). ``--concurrency`` client threads call
``protect`` and ``protect_scene`` alternately with the project's client, for at least
``--duration`` seconds, while the killer SIGKILLs each listed model's Python-backend stubs in turn
(pids from the supervisor's health report), waits until the health endpoint says the model serves
again and traffic flowed for a while, then kills the next (``--concurrency 0``: no traffic, the
recovery alone). Every answer is checked against the
answer the same call got before any kill (the same face: template cosine ≥ 0.999 and at most 2 grey
levels apart; the scene: same faces and actions). Writes ``chaos.json`` (recovery per model, what
``/health/ready`` said during each outage, calls, retries, failures) into ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_MODELS = ("anonymixer", "face_embedder", "anonymixer_scene", "face_detector")
KEY = b"chaos-key-5521"
CHAOS_ALGORITHM = '{"steps": 5, "views": 0}'  # short calls: many of them meet each outage


def health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


@dataclass
class Reference:
    face_png: bytes
    face_pixels: np.ndarray
    template: np.ndarray
    scene_photo: bytes
    scene_actions: list[str]

    def check_face(self, face: Any) -> str | None:
        pixels = np.asarray(Image.open(io.BytesIO(face.png)), dtype=np.int16)
        cosine = float(np.dot(face.template, self.template))
        worst = int(np.abs(pixels - self.face_pixels).max())
        if cosine < 0.999 or worst > 2:
            return f"protect: template cosine {cosine:.4f}, pixels up to {worst} apart"
        return None

    def check_scene(self, scene: Any) -> str | None:
        actions = [f.action for f in scene.faces]
        if actions != self.scene_actions:
            return f"protect_scene: actions {actions}, expected {self.scene_actions}"
        return None


@dataclass
class Traffic:
    calls: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_reference(client: Any, face: bytes, photo: bytes) -> Reference:
    first = client.protect([face], KEY)[0]
    scene = client.protect_scene(photo, KEY)
    return Reference(
        first.png,
        np.asarray(Image.open(io.BytesIO(first.png)), dtype=np.int16),
        first.template,
        scene.data,
        [f.action for f in scene.faces],
    )


def traffic_worker(client: Any, metrics: Any, ref: Reference, face: bytes, photo: bytes, t: Traffic, stop: Any) -> None:
    turn = 0
    while not stop.is_set():
        before = counter_total(metrics.retried_calls)
        try:
            if turn % 2 == 0:
                problem = ref.check_face(client.protect([face], KEY)[0])
            else:
                problem = ref.check_scene(client.protect_scene(photo, KEY))
        except Exception as exc:  # a lost call: what the test must never see
            problem = f"{type(exc).__name__}: {exc}"
        with t.lock:
            t.calls += 1
            t.retried += counter_total(metrics.retried_calls) > before
            if problem:
                t.failures.append(problem)
        turn += 1


def counter_total(counter: Any) -> float:
    """A Prometheus counter's value summed over its labels."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def kill_and_watch(health_url: str, model: str, timeout_s: float) -> dict[str, Any]:
    """SIGKILL ``model``'s stubs; time until the supervisor reports it serving again."""
    _, report = health(health_url)
    stubs = report["models"][model]["stubs"]
    if not stubs:
        raise RuntimeError(f"{model} has no stub process to kill (not a Python-backend model?)")
    recoveries = len(report["models"][model]["recoveries"])
    killed = time.monotonic()
    for pid in stubs:
        os.kill(pid, signal.SIGKILL)
    first_not_ready_s = None  # how long the health endpoint took to stop saying ready
    ready_again_too_early = False  # 200 after it had said 503, before the model was back
    while time.monotonic() - killed < timeout_s:
        status, report = health(health_url)
        state = report.get("models", {}).get(model, {})
        back = len(state.get("recoveries", [])) > recoveries and state.get("state") == "ready"
        if back and status == 200:
            return {
                "model": model,
                "killed_stubs": len(stubs),
                "recovered_s": round(time.monotonic() - killed, 2),
                "supervisor_s": state["recoveries"][-1]["seconds"],
                "detected_as": state["recoveries"][-1]["reason"],
                "health_not_ready_after_s": first_not_ready_s,
                "health_ready_again_before_recovery": ready_again_too_early,
            }
        if status != 200 and first_not_ready_s is None:
            first_not_ready_s = round(time.monotonic() - killed, 2)
        ready_again_too_early |= status == 200 and first_not_ready_s is not None
        time.sleep(0.1)
    raise RuntimeError(f"{model} did not come back within {timeout_s:.0f} s")


def run_chaos(
    url: str,
    health_url: str,
    *,
    models: tuple[str, ...] = DEFAULT_MODELS,
    concurrency: int = 4,
    duration_s: float = 60.0,
    settle_s: float = 3.0,
    recovery_timeout_s: float = 120.0,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from anonymixer.samples import builtin_photos
    from anonymixer_client import AnonymixerClient
    from anonymixer_client.metrics import ClientMetrics
    from benchmarks.load import sample_face
    from optimizer_backend.decode import encode_png

    face = sample_face()
    (_, photo_array), *_ = builtin_photos()
    photo = encode_png(photo_array)
    metrics = ClientMetrics(CollectorRegistry())
    with AnonymixerClient(url, timeout_s=timeout_s, metrics=metrics, max_concurrency=1) as client:
        client.wait_until_ready(120)
        # --concurrency 0 measures recovery alone (a profile whose calls take minutes)
        ref = make_reference(client, face, photo) if concurrency else None
        traffic, stop = Traffic(), threading.Event()
        workers = [
            threading.Thread(target=traffic_worker, args=(client, metrics, ref, face, photo, traffic, stop))
            for _ in range(concurrency)
        ]
        start = time.monotonic()
        for w in workers:
            w.start()
        outages = []
        try:
            time.sleep(settle_s)
            for model in models:
                print(f"chaos: killing {model} …", file=sys.stderr, flush=True)
                outage = kill_and_watch(health_url, model, recovery_timeout_s)
                print(f"chaos: {model} back after {outage['recovered_s']} s", file=sys.stderr, flush=True)
                outages.append(outage)
                time.sleep(settle_s)
            remaining = duration_s - (time.monotonic() - start)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout_s)
        return {
            "seconds": round(time.monotonic() - start, 1),
            "concurrency": concurrency,
            "calls": traffic.calls,
            "calls_retried": traffic.retried,
            "retries": counter_total(metrics.retries),
            "failed_calls": len(traffic.failures),
            "failures": traffic.failures[:20],
            "outages": outages,
        }


def k8s_command(overlay: str, repository: Path, ports: dict[str, int]) -> list[str]:
    """The rendered overlay's (or ``base``'s) container command, run here: /models → ``repository``,
    its ports → ``ports``, its listen address → loopback (a fault test talks only to loopback)."""
    from k8s.check import render

    k8s = Path(__file__).resolve().parent.parent / "k8s"
    folder = k8s / "base" if overlay == "base" else k8s / "overlays" / overlay
    deployment = next(o for o in render(folder) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = [*container["command"], *container.get("args", [])]
    flags = {"--grpc-port": "grpc", "--http-port": "http", "--metrics-port": "metrics", "--health-port": "health"}
    out = []
    for arg in command:
        name = arg.split("=", 1)[0]
        if name in flags:
            arg = f"{name}={ports[flags[name]]}"
        elif name == "--host":
            arg = "--host=127.0.0.1"
        out.append(arg.replace("/models", str(repository)))
    return [str(Path(sys.executable).parent / out[0]), *out[1:]] if out[0] == "anonymixer" else out


def start_serve(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import results_dir, save_record
    from optimizer_backend.server import free_ports

    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--url", help="a running server's gRPC address (with --health)")
    parser.add_argument("--health", help="its supervisor's health address, http://HOST:8003")
    parser.add_argument("--describe", default=None, help="what the running server is, for the record")
    parser.add_argument(
        "--command-from-k8s", metavar="OVERLAY", help="start the container command of base or an overlay (cpu-demo)"
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="at least this many seconds of traffic")
    parser.add_argument("--out", default=None, help="default benchmarks/results/<date>-<machine>")
    parser.add_argument("--name", default="chaos", help="the record's file name (NAME.json)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / f"{args.name}-serve.log"
    process = None
    served = args.describe or args.url
    if not args.url:
        from exporter.cache import cached_bundle, cached_repository

        repository = cached_repository(cached_bundle("tiny", None), gpu=False, algorithm=CHAOS_ALGORITHM)
        ports = dict(zip(("grpc", "http", "metrics", "health"), free_ports(4), strict=True))
        if args.command_from_k8s:
            command = k8s_command(args.command_from_k8s, repository, ports)
            served = f"k8s overlay {args.command_from_k8s}: {' '.join(command[1:])}"
        else:
            command = [str(Path(sys.executable).parent / "anonymixer"), "serve", "--repository", str(repository)]
            command += [f"--{name}-port={port}" for name, port in ports.items()]
            served = "anonymixer serve (tiny, 5 steps)"
        command += ["--probe-interval=2"]
        process = start_serve(command, log)
        args.url, args.health = f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['health']}"
    try:
        deadline = time.monotonic() + 600
        while health(args.health)[0] != 200:
            if process is not None and process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready within 600 s")
            time.sleep(0.5)
        results = run_chaos(
            args.url, args.health, models=tuple(args.models), concurrency=args.concurrency, duration_s=args.duration
        )
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    save_record(out / f"{args.name}.json", "chaos", results, served=served, command=" ".join(sys.argv))
    print(json.dumps({k: v for k, v in results.items() if k != "failures"}, indent=1))
    return 0 if results["failed_calls"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

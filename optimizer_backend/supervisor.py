"""Keep every model of a running Triton serving, and say truthfully whether it does.

Triton's Python backend does not restart a stub process that died (the kernel's OOM killer, a
native crash in a decoder, a CUDA fault): the model answers every request with "Stub process
'<instance>' is not healthy" while Triton's own ``/v2/health/*`` endpoints keep answering 200
(triton-inference-server/server#7230). Triton runs in explicit model-control mode and the
supervisor, a thread of the launcher's process:

- checks every ``check_interval_s`` that each Python model's stub processes (children of
  ``tritonserver``) are alive, not stopped by the kernel (state T for ``stopped_grace_s``) and, when
  busy, still making progress: every model writes a heartbeat (:mod:`optimizer_backend.heartbeat`)
  each refinement or inversion step, which the supervisor reads from a file. This evidence does not
  queue behind work, so a stub wedged in the middle of a 300 s request is told from a busy one in
  seconds (stopped) or ``heartbeat_timeout_s`` (no progress);
- sends every model that is not visibly working a cheap real inference every
  ``probe_interval_s`` (a working model's beats already prove it serves, and a probe would take
  a place in its queue): zeros for a network model; for the service models a request with the
  probe's id, which their ``execute`` answers at once (``responses.probe_answer``: not logged, not
  counted as an error). Two probes in a row answered with an unhealthy-stub error mark the model
  down. A probe refused for a full queue says the model is busy, not dead (ready stays 200). A probe still waiting after
  ``probe_timeout_s`` marks the model down only if its heartbeat shows no work; a model that
  answers probes UNSUPPORTED (``cannot serve: …``: loaded with a bundle or settings it cannot
  protect with) is not ready, and not reloaded, since a reload loads the same;
- reloads a down or wedged model through the repository API with its own configuration plus a
  reload counter (``supervisor_reload``): Triton starts fresh stubs and swaps them in, the model's
  name never disappears, so callers only ever see a retryable error, and models that call it over
  BLS find it again; what is left of a wedged stub is killed;
- backs off between attempts and gives up after ``max_restarts`` within ``restart_window_s``;
  the launcher then stops Triton and exits non-zero, so the orchestrator replaces the pod; it does
  the same when tritonserver exits, or stops answering its own liveness endpoint for
  ``triton_timeout_s`` (killed first);
- answers ``GET /health/ready`` (200 only when Triton is ready and every model's stubs are alive,
  not wedged, and its last probe was answered or refused as busy, or its heartbeat shows work)
  and ``GET /health/live`` (200 until it gives up), with a JSON body per model. The k8s probes use these, not Triton's.

The repository API is restricted to a header secret only this process knows (``admin_key``), so
no caller can unload a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from optimizer_backend.heartbeat import ENV as HEARTBEAT_ENV
from optimizer_backend.heartbeat import Beat, read_beat
from optimizer_backend.responses import CANNOT_SERVE, PROBE_REQUEST_ID, says_model_down
from optimizer_backend.server import EmbeddedTritonServer, ServerError

RELOAD_PARAMETER = "supervisor_reload"
ADMIN_HEADER = "admin-key"
API_KEY_HEADER = "api-key"
EXIT_GAVE_UP = 3
EXIT_TRITON_HUNG = 4
PROBE_HTTP_TIMEOUT_S = 3600.0  # the longest request a CPU deployment answers (metrics' last bucket)


@dataclass(frozen=True)
class SupervisorSettings:
    """The supervisor's timing; ``anonymixer serve`` flags of the same names set them."""

    check_interval_s: float = 1.0
    probe_interval_s: float = 10.0
    # A probe waits in the model's queue; one older than this marks the model wedged only when
    # its heartbeat shows no work either (a busy model's probe waits as long as the work takes).
    probe_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 60.0  # a busy stub's beats stop this long: no progress, wedged
    stopped_grace_s: float = 2.0  # a stub stopped (SIGSTOP, state T) this long is wedged
    triton_timeout_s: float = 60.0  # tritonserver not answering /v2/health/live this long: hung
    load_timeout_s: float = 600.0
    max_restarts: int = 5
    restart_window_s: float = 600.0
    max_backoff_s: float = 30.0


@dataclass
class ModelHealth:
    """One model as the supervisor sees it. ``state``: ready | busy (serving, its queue full or its
    probe waiting behind work it visibly does) | unsupported (loaded, cannot serve: not reloaded)
    | down | recovering | failed."""

    name: str
    state: str = "ready"
    reason: str = ""
    stubs: list[int] = field(default_factory=list)
    last_probe_ok: bool = True
    last_probe_at: float = 0.0
    failed_probes: int = 0
    restarts: list[float] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    stopped_since: dict[int, float] = field(default_factory=dict)
    heartbeats: dict[int, Beat] = field(default_factory=dict)

    def serving(self) -> bool:
        return self.state in ("ready", "busy") and self.last_probe_ok

    def report(self, now: float) -> dict[str, Any]:
        hidden = ("restarts", "last_probe_at", "failed_probes", "stopped_since", "heartbeats")
        out = {k: v for k, v in asdict(self).items() if k not in hidden}
        out["restarts"] = len(self.restarts)
        out["last_probe_s_ago"] = round(now - self.last_probe_at, 1) if self.last_probe_at else None
        out["heartbeats"] = {
            str(pid): {"state": beat.state, "s_ago": round(beat.age(now), 1)} for pid, beat in self.heartbeats.items()
        }
        return out


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def stub_processes(server_pid: int) -> dict[str, set[int]]:
    """model name → pids of its live Python-backend stubs (the stub's first argument is the
    model's ``<repository>/<model>/<version>/model.py``)."""
    out: dict[str, set[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or not argv[0].endswith(b"triton_python_backend_stub"):
            continue
        stat = _stat(pid)
        if stat is None or stat[0] == "Z" or stat[1] != server_pid:
            continue
        out.setdefault(Path(argv[1].decode()).parent.parent.name, set()).add(pid)
    return out


def stub_alive(pid: int, server_pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[1] == server_pid


PROBE_DTYPES = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64"}


def probe_body(config: dict[str, Any]) -> dict[str, Any]:
    """A batch-1 inference request for ``config``'s model that is cheap to answer: empty bytes
    for a string input (the service models refuse it at once), zeros otherwise (free dimensions 64)."""
    inputs = []
    batched = int(config.get("max_batch_size", 0)) > 0
    for spec in config.get("input", []):
        if spec.get("optional"):
            continue
        dims = [1] * batched + [64 if int(d) < 0 else int(d) for d in spec.get("dims", [])]
        size = 1
        for d in dims:
            size *= d
        dtype = spec["data_type"]
        if dtype == "TYPE_STRING":
            inputs.append({"name": spec["name"], "shape": dims, "datatype": "BYTES", "data": [""] * size})
        else:
            inputs.append({"name": spec["name"], "shape": dims, "datatype": PROBE_DTYPES[dtype], "data": [0] * size})
    return {"id": PROBE_REQUEST_ID, "inputs": inputs}


QUEUE_FULL = "exceeds maximum queue size"


def probe_verdict(status: int, message: str) -> str:
    """What a probe's answer says of the model: ``ok`` (its stub ran ``execute``: a model's own
    refusal of the probe's empty input, 400, is the answer we want), ``busy`` (Triton refused it
    for a full queue: the model is serving all it can hold), ``cannot serve`` (loaded in a state
    that answers every request UNSUPPORTED) or ``failed`` (Triton's model-down errors, no answer)."""
    if CANNOT_SERVE in message:
        return "cannot serve"
    if QUEUE_FULL in message.lower():
        return "busy"
    if status == 200 or (status == 400 and not says_model_down(message)):
        return "ok"
    return "failed"


class TritonAdmin:
    """The HTTP calls the supervisor makes to its Triton (on loopback)."""

    def __init__(self, http_url: str, admin_key: str, api_key: str | None = None) -> None:
        self.http_url, self.admin_key, self.api_key = http_url, admin_key, api_key

    def _request(self, path: str, body: dict[str, Any] | None, timeout_s: float) -> tuple[int, str]:
        headers = {"Content-Type": "application/json", ADMIN_HEADER: self.admin_key}
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def models(self) -> list[str]:
        _, text = self._request("/v2/repository/index", {"ready": True}, 30)
        return sorted(m["name"] for m in json.loads(text))

    def config(self, model: str) -> dict[str, Any]:
        status, text = self._request(f"/v2/models/{model}/config", None, 30)
        if status != 200:
            raise ServerError(f"{model}: config: HTTP {status} {text}")
        return json.loads(text)

    def infer(self, model: str, body: dict[str, Any], timeout_s: float) -> tuple[int, str]:
        try:
            return self._request(f"/v2/models/{model}/infer", body, timeout_s)
        except (OSError, TimeoutError) as exc:
            return 0, f"no answer: {exc}"

    def reload(self, model: str, config: dict[str, Any], timeout_s: float) -> None:
        status, text = self._request(
            f"/v2/repository/models/{model}/load", {"parameters": {"config": json.dumps(config)}}, timeout_s
        )
        if status != 200:
            raise ServerError(f"{model}: reload: HTTP {status} {text}")


class Supervisor:
    """``Supervisor(server, admin_key).start()`` once Triton is ready; ``health()`` any time."""

    def __init__(
        self,
        server: EmbeddedTritonServer,
        admin_key: str,
        settings: SupervisorSettings | None = None,
        *,
        api_key: str | None = None,
        heartbeat_dir: Path | None = None,
        log: Any = sys.stderr,
    ) -> None:
        self.server, self.settings, self.log = server, settings or SupervisorSettings(), log
        self.heartbeat_dir = heartbeat_dir
        self.triton_hung: str | None = None
        self._triton_answered = time.monotonic()
        self._triton_probe: Future[bool] | None = None
        self.admin = TritonAdmin(server.http_url, admin_key, api_key)
        self.models: dict[str, ModelHealth] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.gave_up = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="supervisor")
        self._probes: dict[str, tuple[float, Future[tuple[int, str]]]] = {}
        self._recovering: dict[str, Future[None]] = {}
        self._thread: threading.Thread | None = None

    @property
    def server_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def start(self) -> Supervisor:
        stubs = stub_processes(self.server_pid)
        for name in self.admin.models():
            self.configs[name] = self.admin.config(name)
            self.models[name] = ModelHealth(name, stubs=sorted(stubs.get(name, ())))
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _say(self, message: str) -> None:
        print(f"supervisor: {message}", file=self.log, flush=True)

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.settings.check_interval_s):
            if self.server.process is None or self.server.process.poll() is not None:
                return
            try:
                now = time.monotonic()
                self._check_triton(now)
                self._check_all(now)
            except Exception as exc:  # the supervisor must outlive any one bad check
                self._say(f"check failed: {type(exc).__name__}: {exc}")

    def _check_triton(self, now: float) -> None:
        """Give up on a tritonserver that stopped answering its own liveness endpoint (hung, or
        stopped): on a thread, so that a hung server does not hold this loop."""
        if self._triton_probe is None or self._triton_probe.done():
            if self._triton_probe is not None and self._triton_probe.result():
                self._triton_answered = now
            self._triton_probe = self._pool.submit(self.server.live)
        silent = now - self._triton_answered
        if silent > self.settings.triton_timeout_s and self.triton_hung is None:
            self.triton_hung = f"tritonserver has not answered /v2/health/live for {silent:.0f} s"
            self._say(f"{self.triton_hung}; stopping it")
            self.gave_up.set()

    def _check_all(self, now: float) -> None:
        for name, model in self.models.items():
            if name in self._recovering:
                continue
            dead = [pid for pid in model.stubs if not stub_alive(pid, self.server_pid)]
            if dead:
                self._down(model, f"stub process {dead[0]} is gone")
                continue
            model.heartbeats = self._heartbeats(model.stubs)
            wedged = self._wedged(model, now)
            if wedged:
                self._down(model, wedged)
                continue
            self._check_probe(model, now)

    def _heartbeats(self, stubs: list[int]) -> dict[int, Beat]:
        if self.heartbeat_dir is None:
            return {}
        beats = {pid: read_beat(self.heartbeat_dir, pid) for pid in stubs}
        return {pid: beat for pid, beat in beats.items() if beat is not None}

    def _wedged(self, model: ModelHealth, now: float) -> str | None:
        """Why ``model`` is wedged, by evidence that does not queue behind its work: a stub the
        kernel holds stopped, or a busy stub whose heartbeat stopped advancing. None if neither."""
        for pid in model.stubs:
            stat = _stat(pid)
            if stat is None or stat[0] not in "Tt":
                model.stopped_since.pop(pid, None)
                continue
            since = model.stopped_since.setdefault(pid, now)
            if now - since >= self.settings.stopped_grace_s:
                return f"stub process {pid} is stopped (state {stat[0]}) for {now - since:.0f} s"
        for pid, beat in model.heartbeats.items():
            if beat.state == "busy" and beat.age(now) > self.settings.heartbeat_timeout_s:
                return f"stub process {pid} is busy but made no progress for {beat.age(now):.0f} s"
        return None

    def _working(self, model: ModelHealth, now: float) -> bool:
        """Whether a stub of ``model`` visibly works: beating while busy, or waiting on a model it calls."""
        return any(
            beat.state == "waiting" or (beat.state == "busy" and beat.age(now) <= self.settings.heartbeat_timeout_s)
            for beat in model.heartbeats.values()
        )

    def _check_probe(self, model: ModelHealth, now: float) -> None:
        sent = self._probes.get(model.name)
        if sent is None:
            if now - model.last_probe_at < self.settings.probe_interval_s:
                return
            if self._working(model, now):  # its beats prove it serves; a probe would only take a queue place
                with self._lock:
                    model.last_probe_at, model.last_probe_ok, model.failed_probes = now, True, 0
                    model.state, model.reason = "busy", ""
                return
            self._probes[model.name] = (now, self._pool.submit(self._probe, model.name))
            return
        at, future = sent
        if not future.done():
            if now - at <= self.settings.probe_timeout_s:
                return
            if self._working(model, now):  # busy, not dead: the probe waits behind real work
                with self._lock:
                    model.state = "busy"
                return
            del self._probes[model.name]
            self._down(
                model,
                f"no answer to a probe within {self.settings.probe_timeout_s:.0f} s and no sign of work",
            )
            return
        del self._probes[model.name]
        status, message = future.result()
        verdict = probe_verdict(status, message)
        with self._lock:
            model.last_probe_at, model.last_probe_ok = now, verdict in ("ok", "busy")
            model.failed_probes = model.failed_probes + 1 if verdict == "failed" else 0
            if verdict == "cannot serve":
                if model.state != "unsupported":
                    self._say(f"{model.name} loaded but cannot serve; not ready (a reload would not help): {message}")
                model.state, model.reason = "unsupported", message[:500]
            elif verdict != "failed":
                model.state, model.reason = ("busy" if verdict == "busy" else "ready"), ""
        # Two in a row: right after a reload, requests queued at the old instance still fail once.
        if model.failed_probes >= 2:
            self._down(model, f"probe failed twice: HTTP {status} {message[:200]}")

    def _probe(self, name: str) -> tuple[int, str]:
        # The supervisor, not this timeout, decides when a waiting probe means a wedged model.
        return self.admin.infer(name, probe_body(self.configs[name]), PROBE_HTTP_TIMEOUT_S)

    def _down(self, model: ModelHealth, reason: str) -> None:
        self._probes.pop(model.name, None)  # sent to the dead instance: its answer says nothing of the new one
        with self._lock:
            model.state, model.reason, model.last_probe_ok = "down", reason, False
        self._say(f"{model.name} is down ({reason}); reloading it")
        self._recovering[model.name] = self._pool.submit(self._recover, model, time.monotonic())
        self._recovering[model.name].add_done_callback(lambda _: self._recovering.pop(model.name, None))

    def _recover(self, model: ModelHealth, detected: float) -> None:
        attempt = 0
        while not self._stop.is_set():
            now = time.monotonic()
            model.restarts = [t for t in model.restarts if now - t < self.settings.restart_window_s]
            if len(model.restarts) >= self.settings.max_restarts:
                with self._lock:
                    model.state = "failed"
                    model.reason = (
                        f"{len(model.restarts)} reloads within {self.settings.restart_window_s:.0f} s; giving up"
                    )
                self._say(f"{model.name}: {model.reason}")
                self.gave_up.set()
                return
            model.restarts.append(now)
            with self._lock:
                model.state = "recovering"
            try:
                self._reload(model)
            except (ServerError, OSError) as exc:
                attempt += 1
                backoff = min(2.0**attempt, self.settings.max_backoff_s)
                self._say(f"{model.name}: reload failed ({exc}); next try in {backoff:.0f} s")
                self._stop.wait(backoff)
                continue
            seconds = time.monotonic() - detected
            with self._lock:
                model.state, model.last_probe_ok, model.last_probe_at = "ready", True, time.monotonic()
                model.failed_probes = 0
                model.recoveries.append({"reason": model.reason, "seconds": round(seconds, 2)})
                model.reason = ""
            self._say(f"{model.name} is back after {seconds:.1f} s")
            return

    def _reload(self, model: ModelHealth) -> None:
        config = json.loads(json.dumps(self.configs[model.name]))
        reloads = int(config.get("parameters", {}).get(RELOAD_PARAMETER, {}).get("string_value", "0")) + 1
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(reloads)}
        old = set(model.stubs)
        self.admin.reload(model.name, config, self.settings.load_timeout_s)
        self.configs[model.name] = config
        status, message = self._probe(model.name)
        if probe_verdict(status, message) == "failed":
            raise ServerError(f"probe after reload: HTTP {status} {message[:200]}")
        model.stubs = sorted(stub_processes(self.server_pid).get(model.name, set()) - old)
        model.stopped_since.clear()
        for pid in old:  # a wedged (stopped, stuck) stub outlives its instance: free what it holds
            if stub_alive(pid, self.server_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.heartbeat_dir is not None:
                (self.heartbeat_dir / str(pid)).unlink(missing_ok=True)

    # -- health -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            models = {name: m.report(now) for name, m in self.models.items()}
            serving = all(m.serving() for m in self.models.values())
        triton = self.server.process is not None and self.server.process.poll() is None and self.server.ready()
        report = {"live": triton and not self.gave_up.is_set(), "ready": triton and serving, "triton_ready": triton}
        if self.triton_hung:
            report["reason"] = self.triton_hung
        return {**report, "models": models}


def health_handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/health/ready", "/health/live", "/health"):
                self.send_error(404)
                return
            report = supervisor.health()
            ok = report["live"] if self.path == "/health/live" else report["ready"]
            body = json.dumps(report, indent=1).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # the probes come every few seconds: no access log
            pass

    return Handler


def new_admin_key() -> str:
    return secrets.token_urlsafe(24)


def restricted_api_args(admin_key: str, api_key: str | None) -> tuple[str, ...]:
    """Triton flags: the repository API only with the supervisor's secret; inference (and the
    rest of the data plane) with the deployment's API key when it has one."""
    args = [
        f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={admin_key}",
        f"--http-restricted-api=model-repository:{ADMIN_HEADER}={admin_key}",
    ]
    if api_key:
        args += [
            f"--grpc-restricted-protocol=inference:{API_KEY_HEADER}={api_key}",
            f"--http-restricted-api=inference:{API_KEY_HEADER}={api_key}",
        ]
    return tuple(args)


def triton_exit_code(returncode: int) -> int:
    """This launcher's exit status when tritonserver exited with ``returncode``: the same, or
    128 + N when signal N ended it (as a shell says), never 0."""
    if returncode < 0:
        return 128 - returncode
    return returncode or 1


def serve_supervised(
    server: EmbeddedTritonServer,
    admin_key: str,
    *,
    ready_timeout_s: float,
    health_host: str,
    health_port: int,
    settings: SupervisorSettings | None = None,
    api_key: str | None = None,
) -> int:
    """Start Triton, supervise it and serve the health endpoints until Ctrl-C or SIGTERM (exit 0),
    Triton exits (``triton_exit_code``), hangs (``EXIT_TRITON_HUNG``, after killing it) or the
    supervisor gives up on a model (``EXIT_GAVE_UP``). Every way but the first is non-zero, so the
    orchestrator restarts the container (Triton is not restarted in place: a fresh pod also
    frees whatever the dead server held, GPU memory included)."""

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt  # unwinds to the finally below, which stops Triton gracefully

    signal.signal(signal.SIGTERM, terminate)
    supervisor: Supervisor | None = None
    health: ThreadingHTTPServer | None = None
    heartbeats = Path(tempfile.mkdtemp(prefix="anonymixer-heartbeats-"))
    server.env[HEARTBEAT_ENV] = str(heartbeats)
    server.start()
    try:
        server.wait_ready(ready_timeout_s)
        supervisor = Supervisor(server, admin_key, settings, api_key=api_key, heartbeat_dir=heartbeats).start()
        health = ThreadingHTTPServer((health_host, health_port), health_handler(supervisor))
        threading.Thread(target=health.serve_forever, name="health", daemon=True).start()
        print(
            f"anonymixer ready on {server.repository}\n  gRPC    {server.grpc_url}\n  HTTP    {server.http_url}\n"
            f"  metrics {server.metrics_url}\n  health  http://{health_host}:{health.server_port}/health/ready\n"
            f"  log     {server.log_file}\nCtrl-C stops it.",
            flush=True,
        )
        assert server.process is not None
        while server.process.poll() is None and not supervisor.gave_up.wait(1.0):
            pass
        if supervisor.triton_hung:
            print(f"error: {supervisor.triton_hung}; killing it", file=sys.stderr)
            server.stop(timeout_s=0)
            return EXIT_TRITON_HUNG
        if supervisor.gave_up.is_set():
            print("error: a model could not be brought back; stopping", file=sys.stderr)
            return EXIT_GAVE_UP
        code = server.process.returncode
        print(f"error: tritonserver exited with code {code}", file=sys.stderr)
        return triton_exit_code(code)
    except KeyboardInterrupt:
        return 0
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if health is not None:
            health.shutdown()
        if supervisor is not None:
            supervisor.stop()
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(heartbeats, ignore_errors=True)

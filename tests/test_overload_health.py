"""Busy is not dead (issue 28): ``anonymixer serve`` under overload keeps its models, replaces a
stopped or wedged stub within seconds even mid-request, says 503 for a model that loaded but
cannot serve, and exits non-zero when Triton itself exits or hangs. Every test talks to a real
server on loopback and stops by itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from anonymixer_client import AnonymixerClient
from benchmarks.chaos import health
from optimizer_backend.heartbeat import Heartbeat, read_beat
from optimizer_backend.responses import CANNOT_SERVE
from optimizer_backend.supervisor import EXIT_TRITON_HUNG, probe_verdict, triton_exit_code
from tests.conftest import build_test_repository
from tests.test_anonymixer_server import png, request_inputs
from tests.test_cli import processes_mentioning
from tests.test_protect import faces
from tests.test_self_healing import KEY, own_repository, served, wait_ready

FAULT_MODELS = Path(__file__).parent / "fault_models"


def anonymixer_health(health_url: str) -> dict[str, Any]:
    return health(health_url)[1]["models"]["anonymixer"]


def wait_for_recovery(health_url: str, model: str, before: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        recoveries = health(health_url)[1].get("models", {}).get(model, {}).get("recoveries", [])
        if len(recoveries) > before:
            return recoveries[-1]
        assert time.monotonic() < deadline, f"{model} was not replaced within {timeout_s:.0f} s"
        time.sleep(0.2)


def tritonserver_of(launcher: int) -> int:
    (pid,) = [
        pid
        for pid in processes_mentioning("tritonserver")
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(launcher)
    ]
    return pid


# -- the evidence, unit by unit ---------------------------------------------------------------


def test_probe_verdicts_tell_busy_from_dead() -> None:
    assert probe_verdict(400, "alive") == "ok"
    assert probe_verdict(200, "") == "ok"
    assert probe_verdict(503, '{"error":"[request id: p] Exceeds maximum queue size"}') == "busy"
    assert probe_verdict(400, CANNOT_SERVE + "the e4e attribute loss needs an e4e encoder") == "cannot serve"
    assert probe_verdict(400, "Stub process 'anonymixer_0_0' is not healthy.") == "failed"
    assert probe_verdict(0, "no answer: timed out") == "failed"
    assert triton_exit_code(-9) == 137 and triton_exit_code(0) == 1 and triton_exit_code(2) == 2


def test_a_heartbeat_is_read_back_as_written(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path)
    assert read_beat(tmp_path, os.getpid()).state == "idle"
    with beat.working():
        busy = read_beat(tmp_path, os.getpid())
        assert busy.state == "busy" and abs(busy.age(time.monotonic())) < 5
        with beat.waiting():
            assert read_beat(tmp_path, os.getpid()).state == "waiting"
        assert read_beat(tmp_path, os.getpid()).state == "busy"
    assert read_beat(tmp_path, os.getpid()).state == "idle"
    assert read_beat(tmp_path, 1) is None  # never beat
    Heartbeat(None).beat()  # without the supervisor: nothing to write, no error


# -- a real server --------------------------------------------------------------------------


def test_overload_is_served_and_a_stopped_stub_is_replaced_mid_request(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """Six callers against a model that holds two (one running, one queued): the queue-full
    refusals and the probes that wait behind minutes of work leave it ready (200), never reloaded.
    Then its stub is SIGSTOPped in the middle of a long request: replaced within 60 s, and the
    call that met it is answered on the client's retry."""
    repository = build_test_repository(
        tiny_bundle_dir, tmp_path / "repository", "--protect-max-batch", "1", "--max-queue-size", "1"
    )
    flags = ("--probe-timeout=2", "--heartbeat-timeout=30")
    with served(repository, tmp_path, *flags) as (_, url, health_url):
        slow = request_inputs([png(faces(1, seed=5)[0])], [KEY], steps=[120])  # seconds of work each
        until = time.monotonic() + 20
        outcomes: list[str] = []

        def caller() -> None:
            with grpcclient.InferenceServerClient(url) as c:
                while time.monotonic() < until:
                    try:
                        c.infer("anonymixer", slow, client_timeout=300)
                        outcomes.append("served")
                    except InferenceServerException as exc:
                        outcomes.append(str(exc))
                        time.sleep(0.05)

        seen = []
        with ThreadPoolExecutor(6) as pool:
            callers = [pool.submit(caller) for _ in range(6)]
            while not all(f.done() for f in callers):
                seen.append(health(health_url))
                time.sleep(0.3)
            for f in callers:
                f.result()
        refused = [o for o in outcomes if o != "served"]
        print(f"overload: {outcomes.count('served')} served, {len(refused)} refused, {len(seen)} health checks")
        assert "served" in outcomes and refused
        assert all("exceeds maximum queue size" in o.lower() for o in refused), refused[:3]
        assert [b for code, b in seen if code != 200] == []  # busy is ready
        assert "busy" in {body["models"]["anonymixer"]["state"] for _, body in seen}
        assert anonymixer_health(health_url)["recoveries"] == []  # not one reload

        # a stub stopped mid-request
        (stub,) = anonymixer_health(health_url)["stubs"]
        with AnonymixerClient(url, timeout_s=240) as client:
            answer: dict[str, Any] = {}
            thread = threading.Thread(
                target=lambda: answer.update(faces=client.protect([png(faces(1, seed=6)[0])], KEY, steps=60))
            )
            thread.start()
            time.sleep(2)  # inside the refinement
            stopped = time.monotonic()
            os.kill(stub, signal.SIGSTOP)
            recovery = wait_for_recovery(health_url, "anonymixer", 0, timeout_s=60)
            replaced_s = time.monotonic() - stopped
            thread.join(240)
        print(f"stopped stub: replaced after {replaced_s:.1f} s ({recovery})")
        assert recovery["reason"].startswith(f"stub process {stub} is stopped"), recovery
        assert replaced_s < 60
        assert answer["faces"][0].png.startswith(b"\x89PNG")  # retried to a real answer
        assert stub not in processes_mentioning(str(repository / "anonymixer"))
        wait_ready(health_url)


HANGER_CONFIG = """name: "hanger"
backend: "python"
max_batch_size: 0
input [{ name: "MODE" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "ECHO" data_type: TYPE_INT32 dims: [1, 1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""


def test_a_wedged_stub_is_replaced_whether_it_hangs_busy_or_idle(triton_repository: Path, tmp_path: Path) -> None:
    """A model that hangs inside ``execute`` (its beats stop), and one that hangs with its heartbeat
    idle (only a probe that never returns shows it): both reloaded, the other models untouched."""
    repository = own_repository(triton_repository, tmp_path)
    (repository / "hanger" / "1").mkdir(parents=True)
    shutil.copy(FAULT_MODELS / "hanger.py", repository / "hanger" / "1" / "model.py")
    (repository / "hanger" / "config.pbtxt").write_text(HANGER_CONFIG)
    flags = ("--probe-timeout=2", "--heartbeat-timeout=4")
    with served(repository, tmp_path, *flags) as (_, url, health_url):
        expected = {1: "is busy but made no progress", 2: "no answer to a probe within 2 s and no sign of work"}
        for mode, reason in expected.items():
            before = len(health(health_url)[1]["models"]["hanger"]["recoveries"])
            mode_input = grpcclient.InferInput("MODE", [1], "INT32")
            mode_input.set_data_from_numpy(np.array([mode], dtype=np.int32))
            errors: list[str] = []

            def hang(mode_input: Any = mode_input, errors: list[str] = errors) -> None:
                with grpcclient.InferenceServerClient(url) as c:
                    try:
                        c.infer("hanger", [mode_input], client_timeout=90)
                    except InferenceServerException as exc:
                        errors.append(str(exc))

            thread = threading.Thread(target=hang)
            started = time.monotonic()
            thread.start()
            recovery = wait_for_recovery(health_url, "hanger", before, timeout_s=60)
            print(f"hang mode {mode}: replaced after {time.monotonic() - started:.1f} s ({recovery['reason']})")
            assert reason in recovery["reason"], recovery
            thread.join(90)
            assert errors  # the wedged call was failed, not left hanging
            wait_ready(health_url)
        with grpcclient.InferenceServerClient(url) as c:
            mode_input = grpcclient.InferInput("MODE", [1], "INT32")
            mode_input.set_data_from_numpy(np.array([0], dtype=np.int32))
            assert c.infer("hanger", [mode_input]).as_numpy("ECHO").tolist() == [[0]]
        others = {name: m for name, m in health(health_url)[1]["models"].items() if name != "hanger"}
        assert all(m["recoveries"] == [] for m in others.values()), others


def test_a_model_that_cannot_serve_is_not_ready_and_not_reloaded(triton_repository: Path, tmp_path: Path) -> None:
    """``anonymixer`` loaded with settings its bundle cannot protect with (the e4e attribute loss,
    the encoder gone from the bundle): every request is answered UNSUPPORTED, so ``/health/ready``
    says 503 with the reason — while liveness stays 200 (a restart would load the same)."""
    repository = own_repository(triton_repository, tmp_path)
    manifest = repository / "anonymixer" / "1" / "bundle" / "bundle.json"
    config = json.loads(manifest.read_text())
    config["encoder"] = None
    config["files"].pop("encoder.safetensors")
    manifest.write_text(json.dumps(config))
    with served(repository, tmp_path, "--probe-timeout=2", until_ready=False) as (_, url, health_url):
        deadline = time.monotonic() + 30
        while anonymixer_health(health_url)["state"] != "unsupported":
            assert time.monotonic() < deadline, health(health_url)
            time.sleep(0.3)
        status, body = health(health_url)
        assert status == 503 and not body["ready"]
        assert "the e4e attribute loss needs an e4e encoder" in body["models"]["anonymixer"]["reason"]
        assert body["models"]["face_embedder"]["state"] == "ready"
        with urllib.request.urlopen(health_url + "/health/live", timeout=5) as live:
            assert live.status == 200
        with grpcclient.InferenceServerClient(url) as c, pytest.raises(InferenceServerException) as refused:
            c.infer("anonymixer", request_inputs([png(faces(1, seed=7)[0])], [KEY], steps=[1]))
        assert "cannot protect faces with this server's bundle" in str(refused.value)
        time.sleep(3)  # several more probes
        assert anonymixer_health(health_url)["recoveries"] == [] and health(health_url)[0] == 503


def test_triton_exiting_or_hanging_ends_the_launcher_non_zero(triton_repository: Path, tmp_path: Path) -> None:
    """Kubernetes replaces the pod (the container's command exits): Triton killed → 128 + 9;
    Triton stopped (answers nothing) → killed by the launcher after --triton-timeout, exit 4."""
    first, second = tmp_path / "exit", tmp_path / "hang"
    first.mkdir()
    second.mkdir()
    with served(own_repository(triton_repository, first), first) as (process, _, _):
        os.kill(tritonserver_of(process.pid), signal.SIGKILL)
        assert process.wait(30) == 128 + signal.SIGKILL
    assert "tritonserver exited with code -9" in (first / "serve.log").read_text()

    with served(own_repository(triton_repository, second), second, "--triton-timeout=3") as (process, _, _):
        triton = tritonserver_of(process.pid)
        stopped = time.monotonic()
        os.kill(triton, signal.SIGSTOP)
        assert process.wait(60) == EXIT_TRITON_HUNG
        print(f"hung tritonserver: the launcher exited after {time.monotonic() - stopped:.1f} s")
        assert triton not in processes_mentioning("tritonserver")
    assert "has not answered /v2/health/live" in (second / "serve.log").read_text()


def test_a_short_overload_run_loses_nothing(tmp_path: Path) -> None:
    """``benchmarks.overload`` shortened for CI (the record is the full run): ten times the callers
    the model holds, raw and with the shipped client — no reload, no call failed but for a full
    queue (raw) or a clear deadline (client), ``/health/ready`` 200 throughout."""
    from benchmarks.overload import main as overload

    args = ["--batch", "4", "--queue", "4", "--steps", "5", "--alone", "10", "--duration", "20"]
    args += ["--client-duration", "20", "--soak", "0", "--deadline", "30", "--out", str(tmp_path)]
    assert overload(args) == 0
    results = json.loads((tmp_path / "overload.json").read_text())["results"]
    assert set(results) == {"alone", "raw_overload", "client_overload"}
    for name, phase in results.items():
        assert phase["reloads"] == 0 and phase["health_not_ready"] == 0, (name, phase)
        assert phase["served"] > 0, (name, phase)
    raw = results["raw_overload"]
    assert raw["refused"] > 0 and raw["other_outcomes"] == {}, raw  # refused at the door, none failed inside
    client = results["client_overload"]
    assert set(client["other_outcomes"]) <= {"DeadlineExceededError"}, client
    assert client["served"] + sum(client["other_outcomes"].values()) == client["calls"]

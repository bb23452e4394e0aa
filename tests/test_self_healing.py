"""``anonymixer serve`` under faults: killed stubs come back and no client call is lost; the
health endpoint tells the truth; the repository API, inference and gRPC are access-controlled."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from anonymixer_client import AnonymixerClient, InvalidInputError, ModelUnavailableError
from anonymixer_client.cli import main as client_main
from benchmarks.chaos import DEFAULT_MODELS, health, run_chaos
from optimizer_backend.server import free_ports
from tests.test_anonymixer_server import png
from tests.test_cli import processes_mentioning
from tests.test_protect import faces

KEY = b"self-healing-key"


@contextmanager
def served(
    repository: Path, tmp_path: Path, *flags: str, until_ready: bool = True
) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``anonymixer serve`` on free loopback ports: (process, gRPC address, health URL), once
    ``/health/ready`` says 200 (``until_ready``) or answers at all."""
    ports = dict(zip(("grpc", "http", "metrics", "health"), free_ports(4), strict=True))
    command = [sys.executable, "-m", "apps", "serve", "--repository", str(repository)]
    command += [f"--{name}-port={port}" for name, port in ports.items()]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [*command, "--probe-interval=1", *flags], stdout=log, stderr=subprocess.STDOUT, text=True
    )
    health_url = f"http://127.0.0.1:{ports['health']}"
    try:
        deadline = time.monotonic() + 180
        while health(health_url)[0] not in ((200,) if until_ready else (200, 503)):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready within 180 s"
            time.sleep(0.3)
        yield process, f"127.0.0.1:{ports['grpc']}", health_url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        log.close()


def own_repository(triton_repository: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(triton_repository, tmp_path / "repository"))  # its own stub processes


def test_every_killed_model_comes_back_and_no_call_is_lost(triton_repository: Path, tmp_path: Path) -> None:
    """The issue's probe, shortened for CI: 4 callers, each model's stub SIGKILLed in turn."""
    with served(own_repository(triton_repository, tmp_path), tmp_path) as (_, url, health_url):
        report = run_chaos(url, health_url, concurrency=4, duration_s=0, settle_s=2.0, timeout_s=120)
        assert report["failed_calls"] == 0, report["failures"]
        assert [o["model"] for o in report["outages"]] == list(DEFAULT_MODELS)
        for outage in report["outages"]:
            # the truth while it was down: not ready within the supervisor's 1 s check, until it is back
            assert outage["health_not_ready_after_s"] is not None and outage["health_not_ready_after_s"] < 5, outage
            assert not outage["health_ready_again_before_recovery"], outage
            assert outage["detected_as"].startswith("stub process")
            assert outage["recovered_s"] < 60
        assert report["calls_retried"] >= 1  # some calls met an outage and were retried to a correct answer
        status, body = health(health_url)
        # serving again; a model still finishing the last calls is "busy" until its next probe
        assert status == 200 and all(m["state"] in ("ready", "busy") for m in body["models"].values()), body
        # the repository API is the supervisor's alone
        with grpcclient.InferenceServerClient(url) as plain:
            with pytest.raises(Exception, match="This protocol is restricted"):
                plain.unload_model("anonymixer")
            assert plain.is_model_ready("anonymixer")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificate_authority(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a client
    certificate it did not sign."""
    files = {n: str(folder / f"{n}.pem") for n in ("ca", "ca_key", "server", "server_key", "client", "client_key")}
    files |= {"rogue": str(folder / "rogue.pem"), "rogue_key": str(folder / "rogue_key.pem")}
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=anonymixer-test-ca",
        "-keyout", files["ca_key"], "-out", files["ca"],
    )  # fmt: skip
    for name, cn, extension in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"), ("client", "pipeline", "")):
        csr = folder / f"{name}.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", files[f"{name}_key"],
                "-out", str(csr))  # fmt: skip
        ext = folder / f"{name}.ext"
        ext.write_text(extension + "\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", files["ca"], "-CAkey", files["ca_key"], "-CAcreateserial",
                "-days", "1", "-out", files[name], *(["-extfile", str(ext)] if extension else []))  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rogue",
            "-keyout", files["rogue_key"], "-out", files["rogue"])  # fmt: skip
    return files


def test_mutual_tls_api_key_and_giving_up(triton_repository: Path, tmp_path: Path) -> None:
    tls = certificate_authority(tmp_path)
    api_key = tmp_path / "api.key"
    api_key.write_text("deployment-api-key-3312\n")
    flags = ["--tls-cert", tls["server"], "--tls-key", tls["server_key"], "--tls-ca", tls["ca"]]
    flags += ["--api-key-file", str(api_key), "--max-restarts=1"]
    face = png(faces(1, seed=41)[0])
    with served(own_repository(triton_repository, tmp_path), tmp_path, *flags) as (process, url, health_url):
        common = {"root_certificates": tls["ca"], "timeout_s": 20, "retries": 0}
        trusted = {"certificate_chain": tls["client"], "private_key": tls["client_key"]}
        with AnonymixerClient(url, ssl=True, api_key="deployment-api-key-3312", **common, **trusted) as client:
            protected = client.protect([face], KEY, steps=1)[0]
            assert protected.png.startswith(b"\x89PNG") and np.isfinite(protected.template).all()
            with pytest.raises(InvalidInputError, match="IMAGE item 0"):  # errors still name the item
                client.protect([b"not an image"], KEY)
        cli = ["--url", url, "--ssl", "--root-certificates", tls["ca"], "--timeout", "20"]
        key_file = tmp_path / "user.key"
        key_file.write_bytes(KEY)
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "face.png").write_bytes(face)
        protect = ["protect", str(tmp_path / "in"), "--key-file", str(key_file), "--out", str(tmp_path / "out")]
        trusted_cli = ["--certificate", tls["client"], "--private-key", tls["client_key"]]
        assert client_main([*cli, *trusted_cli, "--api-key-file", str(api_key), *protect, "--steps", "1"]) == 0
        assert (tmp_path / "out" / "face.protected.png").is_file()
        assert client_main([*cli, *trusted_cli, "health"]) == 0  # health needs the certificate, not the key
        refused = [
            AnonymixerClient(url, ssl=True, **common),  # no client certificate
            AnonymixerClient(url, ssl=True, certificate_chain=tls["rogue"], private_key=tls["rogue_key"], **common),
            AnonymixerClient(url, ssl=True, **common, **trusted),  # a trusted certificate but no API key
            AnonymixerClient(url, ssl=True, api_key="guess", **common, **trusted),
        ]
        for client in refused:
            with client, pytest.raises(Exception):  # noqa: B017, PT011 - TLS or permission refusals vary in type
                client.protect([face], KEY, steps=1)

        # --max-restarts 1: the first death is healed, the second makes the pod give up (exit 3)
        for round_ in range(2):
            stubs = health(health_url)[1]["models"]["anonymixer"]["stubs"]
            os.kill(stubs[0], signal.SIGKILL)
            if round_ == 0:
                deadline = time.monotonic() + 60
                while not health(health_url)[1]["models"]["anonymixer"]["recoveries"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        assert process.wait(60) == 3


def test_a_dead_model_is_a_retryable_error_and_a_wedged_one_is_replaced(
    triton_repository: Path, tmp_path: Path
) -> None:
    """A stub killed with supervision too slow to save the call: the client raises the typed,
    retryable error once its deadline has passed, not a generic failure. Then a stub that hangs
    (SIGSTOP: alive, answering nothing) is replaced and what is left of it killed."""
    with served(own_repository(triton_repository, tmp_path), tmp_path, "--probe-timeout=3") as (
        process,
        url,
        health_url,
    ):
        # the supervisor lives in the launcher: SIGSTOP holds it while the stub dies
        (stub,) = health(health_url)[1]["models"]["anonymixer"]["stubs"]
        os.kill(process.pid, signal.SIGSTOP)
        try:
            os.kill(stub, signal.SIGKILL)
            time.sleep(0.5)
            with AnonymixerClient(url, timeout_s=10) as client, pytest.raises(ModelUnavailableError):
                client.protect([png(faces(1, seed=42)[0])], KEY, steps=1)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        wait_ready(health_url)

        before = health(health_url)[1]["models"]["anonymixer"]
        (wedged,) = before["stubs"]
        os.kill(wedged, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while len(health(health_url)[1]["models"]["anonymixer"]["recoveries"]) == len(before["recoveries"]):
            assert time.monotonic() < deadline, "the hung stub was not replaced"
            time.sleep(0.2)
        wait_ready(health_url)
        recovery = health(health_url)[1]["models"]["anonymixer"]["recoveries"][-1]
        # Triton notices the hung stub too: the probes fail, or Triton ends the stub first
        assert recovery["reason"].startswith(("probe failed twice", "no answer to a probe", "stub process")), recovery
        # killed, not leaked
        assert wedged not in processes_mentioning(str(tmp_path / "repository" / "anonymixer"))
        with AnonymixerClient(url, timeout_s=60) as client:
            assert client.protect([png(faces(1, seed=43)[0])], KEY, steps=1)[0].png.startswith(b"\x89PNG")


def wait_ready(health_url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while health(health_url)[0] != 200:
        assert time.monotonic() < deadline, health(health_url)
        time.sleep(0.2)

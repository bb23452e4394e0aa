"""k8s/: every overlay renders with kustomize and passes k8s/check.py; each rule of the checker fails
on a manifest that breaks it."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from k8s import check

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    check.kustomize_command() is None, reason="needs kubectl (kubectl kustomize) or kustomize on PATH"
)
OVERLAYS = ("gpu", "cpu-demo", "gpu-object-store")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: check.render(ROOT / "k8s" / "overlays" / name) for name in OVERLAYS}


def test_every_overlay_is_checked() -> None:
    assert sorted(p.name for p in check.overlays()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_every_check(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "ServiceMonitor", "ServiceAccount"} <= kinds
    assert check.schema_problems(objects) == []
    assert check.lint_problems(objects) == []
    assert check.reference_problems(objects, check.adapter_metric_names()) == []


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Deployment")


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return deployment(objects)["spec"]["template"]["spec"]["containers"][0]


def test_gpu_overlay_asks_for_one_gpu_and_scales_on_queue_time_and_gpu_use(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["gpu"]
    container = server(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--tls-ca=/etc/anonymixer/tls/ca.crt" in container["args"]  # mutual TLS by default
    assert "--triton-arg=--allow-gpu-metrics=true" in container["args"]
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["anonymixer_queue_time_us_per_request", "anonymixer_gpu_utilization"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    # the cpu-demo overlay brings its own salt; the gpu one needs the operator's Secret (README)
    assert not any(o["kind"] == "Secret" for o in objects)
    assert any(o["kind"] == "Secret" for o in rendered["cpu-demo"])
    assert "create secret generic anonymixer-secrets" in (ROOT / "k8s" / "README.md").read_text()


POOL_ARG = "--triton-arg=--cuda-memory-pool-byte-size=0:805306368"


def test_gpu_overlay_sizes_the_cuda_memory_pool_as_the_server_does(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The checker's floor is the launcher's own size for 1024 px images at max batch 16; the gpu
    overlays (the object-store one builds on it) pass it, the cpu-demo has no GPU to size."""
    from optimizer_backend.server import cuda_pool_bytes

    assert cuda_pool_bytes(16, (3, 1024, 1024)) == check.MIN_CUDA_POOL_BYTES
    for overlay in ("gpu", "gpu-object-store"):
        assert POOL_ARG in server(rendered[overlay])["args"]
    assert not any("cuda-memory-pool" in a for a in server(rendered["cpu-demo"]).get("args", []))


def triton_flags() -> set[str]:
    """The options the embedded tritonserver (2.51, nvidia-pytriton) knows, from its --help."""
    from optimizer_backend.server import pytriton_paths

    server_dir, libs = pytriton_paths()
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    out = subprocess.run(
        [str(server_dir / "bin" / "tritonserver"), "--help"], capture_output=True, text=True, env=env, check=False
    )
    return set(re.findall(r"--[a-z][a-z-]+", out.stdout + out.stderr))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_server_command_is_one_its_program_accepts(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Every overlay runs the one supervised launcher; what it passes on to Triton is Triton's."""
    from apps.cli import build_parser

    container = server(rendered[overlay])
    command = container["command"] + container.get("args", [])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert command[:2] == ["anonymixer", "serve"]
    args = build_parser().parse_args(command[1:])
    assert args.host == "0.0.0.0"  # reachable from the Service
    assert (args.http_port, args.grpc_port, args.metrics_port, args.health_port) == (
        ports["http"],
        ports["grpc"],
        ports["metrics"],
        ports["health"],
    )
    known = triton_flags()
    assert {"--model-repository", "--exit-timeout-secs", "--grpc-use-ssl-mutual"} <= known  # --help was read
    assert [a for a in check.triton_args(command) if a.split("=")[0] not in known] == []


def test_object_store_overlay_fetches_the_repository_before_triton_starts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pod = deployment(rendered["gpu-object-store"])["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    fetched = {m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/models"}
    served = {m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/models"}
    assert fetched == served == {"model-repository-copy"}
    assert not any(o["kind"] == "PersistentVolumeClaim" for o in rendered["gpu-object-store"])


def broken(objects: list[dict[str, Any]], change: Any) -> list[dict[str, Any]]:
    objects = copy.deepcopy(objects)
    change(objects)
    return objects


def problems_after(objects: list[dict[str, Any]], change: Any) -> str:
    changed = broken(objects, change)
    found = (
        check.schema_problems(changed)
        + check.lint_problems(changed)
        + check.reference_problems(changed, check.adapter_metric_names())
    )
    return "\n".join(found)


def test_each_rule_catches_what_it_is_for(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gpu = rendered["gpu"]

    def pod(o: list[dict[str, Any]]) -> dict[str, Any]:
        return deployment(o)["spec"]["template"]["spec"]

    def hpa(o: list[dict[str, Any]]) -> dict[str, Any]:
        return next(x for x in o if x["kind"] == "HorizontalPodAutoscaler")

    def monitor(o: list[dict[str, Any]]) -> dict[str, Any]:
        return next(x for x in o if x["kind"] == "ServiceMonitor")

    cases = {
        "schema: spec.template.spec.containers.0": lambda o: server(o).update(imagePullPolicyy="Always"),
        "runAsNonRoot must be true": lambda o: pod(o)["securityContext"].pop("runAsNonRoot"),
        "resources.limits lacks ['memory']": lambda o: server(o)["resources"]["limits"].pop("memory"),
        "readOnlyRootFilesystem must be true": lambda o: server(o)["securityContext"].pop("readOnlyRootFilesystem"),
        "the server has no livenessProbe": lambda o: server(o).pop("livenessProbe"),
        "/dev/shm must be a memory-backed emptyDir": lambda o: next(
            v for v in pod(o)["volumes"] if v["name"] == "dshm"
        )["emptyDir"].pop("medium"),
        "needs a fixed tag": lambda o: server(o).update(image="nvcr.io/nvidia/tritonserver:latest"),
        "requests (1) and limits (2) differ": lambda o: server(o)["resources"]["limits"].update(
            {"nvidia.com/gpu": "2"}
        ),
        "≤ --exit-timeout-secs 330": lambda o: pod(o).update(terminationGracePeriodSeconds=300),
        "but the server runs --http-port 9000": lambda o: server(o)["args"].__setitem__(
            server(o)["args"].index("--http-port=8000"), "--http-port=9000"
        ),
        "readinessProbe path '/health/live'": lambda o: server(o)["readinessProbe"]["httpGet"].update(
            path="/health/live"
        ),
        "livenessProbe must use the supervisor's health port": lambda o: server(o)["livenessProbe"]["httpGet"].update(
            path="/v2/health/live", port="http"
        ),
        "must run anonymixer serve (supervised), not ['tritonserver']": lambda o: server(o).update(
            command=["tritonserver"]
        ),
        "must use gRPC with mutual TLS; it lacks ['--tls-ca']": lambda o: server(o)["args"].remove(
            "--tls-ca=/etc/anonymixer/tls/ca.crt"
        ),
        "--tls-key /tmp/tls.key is not mounted from a Secret": lambda o: server(o)["args"].__setitem__(
            server(o)["args"].index("--tls-key=/etc/anonymixer/tls/tls.key"), "--tls-key=/tmp/tls.key"
        ),
        "is no prometheus-adapter rule's output": lambda o: hpa(o)["spec"]["metrics"][0]["pods"]["metric"].update(
            name="queue_time"
        ),
        "endpoint port 'prometheus' is not a port": lambda o: monitor(o)["spec"]["endpoints"][0].update(
            port="prometheus"
        ),
        "selects no Service": lambda o: monitor(o)["spec"]["selector"]["matchLabels"].update(app="other"),
        "needs Secret tls-pair, which nothing creates": lambda o: next(
            v for v in pod(o)["volumes"] if v["name"] == "tls"
        )["secret"].update(secretName="tls-pair"),
        "a GPU server must size Triton's CUDA memory pool": lambda o: server(o)["args"].remove(POOL_ARG),
        "--cuda-memory-pool-byte-size 67108864 bytes < 805306368": lambda o: server(o)["args"].__setitem__(
            server(o)["args"].index(POOL_ARG), "--triton-arg=--cuda-memory-pool-byte-size=0:67108864"
        ),
    }
    for expected, change in cases.items():
        assert expected in problems_after(gpu, change), expected

"""Offline checks of the rendered manifests: schemas, security and reliability rules, cross-references.

    python k8s/check.py [overlays/gpu overlays/cpu-demo ...]      (default: every overlay)

Renders each overlay with ``kubectl kustomize`` (or ``kustomize build``), validates every built-in
object against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown fields are
errors) and the ServiceMonitor against the fields it must have, then applies this project's rules:
the supervised launcher (``anonymixer serve``) and its health probes, mutual TLS for GPU
(production) servers with its files from Secrets, their CUDA memory pool sized, resources, non-root
and read-only containers, the Python backend's /dev/shm, graceful termination, and that names agree
across objects (HPA metric ↔ prometheus-adapter rule, probe and Service ports ↔ the launcher's
flags, ServiceMonitor ↔ Service, selectors ↔ pod labels, referenced Secrets/ConfigMaps/PVCs).
Prints every problem; exits 1 if there is one. No cluster is contacted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

K8S = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.32.0"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
# Created by the operator (k8s/README.md), never committed: the salt and the TLS pair.
EXTERNAL_SECRETS = {"anonymixer-secrets"}
SERVER_PORT_FLAGS = {
    "http": "--http-port",
    "grpc": "--grpc-port",
    "metrics": "--metrics-port",
    "health": "--health-port",
}
SERVER = "triton"  # the serving container's name in every overlay
LAUNCHER = ["anonymixer", "serve"]  # the one launcher: Triton under the supervisor (optimizer_backend/supervisor.py)
PROBE_PATHS = {"startupProbe": "/health/ready", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
SECRET_FILE_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca", "--api-key-file")
MUTUAL_TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")
CUDA_POOL_FLAG = "--cuda-memory-pool-byte-size"
# Triton's CUDA memory pool on a GPU server: at least optimizer_backend.server.cuda_pool_bytes(16,
# (3, 1024, 1024)), four 1024 px float images at max batch 16 (tests/test_k8s.py keeps the two equal)
MIN_CUDA_POOL_BYTES = 4 * 16 * 3 * 1024 * 1024 * 4

Obj = dict[str, Any]


def overlays() -> list[Path]:
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(overlay: Path) -> list[Obj]:
    command = kustomize_command()
    if command is None:
        raise RuntimeError("neither kubectl nor kustomize is on PATH")
    out = subprocess.run([*command, str(overlay)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{overlay}: {' '.join(command)} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def schema_problems(objects: Iterable[Obj]) -> list[str]:
    import kubernetes_validate

    problems = []
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            problems += servicemonitor_problems(obj)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{name_of(obj)}: schema: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name_of(obj)}: no Kubernetes {KUBERNETES_VERSION} schema for {obj['apiVersion']}")
    return problems


def servicemonitor_problems(obj: Obj) -> list[str]:
    """The Prometheus operator's CRD is not in the Kubernetes schemas: the fields that matter here."""
    spec = obj.get("spec", {})
    problems = []
    if obj["kind"] != "ServiceMonitor":
        problems.append(f"{name_of(obj)}: unexpected kind in monitoring.coreos.com/v1")
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append(f"{name_of(obj)}: spec.selector.matchLabels is required")
    endpoints = spec.get("endpoints") or []
    if not endpoints or not all(isinstance(e.get("port"), str) for e in endpoints):
        problems.append(f"{name_of(obj)}: every endpoint needs a named port")
    return problems


def pod_specs(objects: Iterable[Obj]) -> list[tuple[Obj, Obj]]:
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def flag_value(args: list[str], flag: str) -> str | None:
    """``--flag=value`` or ``--flag value``."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def triton_args(args: list[str]) -> list[str]:
    """The tritonserver flags the launcher passes on (``--triton-arg=FLAG``)."""
    return [a.split("=", 1)[1] for a in args if a.startswith("--triton-arg=")]


def mounted_from_secret(path: str, container: Obj, volumes: dict[str, Obj]) -> bool:
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/") and "secret" in volumes.get(mount["name"], {}):
            return True
    return False


def lint_problems(objects: list[Obj]) -> list[str]:
    """Security and reliability rules for every workload."""
    problems = []
    for owner, template in pod_specs(objects):
        where = name_of(owner)
        spec = template["spec"]
        pod_security = spec.get("securityContext", {})
        if not pod_security.get("runAsNonRoot"):
            problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
        if spec.get("automountServiceAccountToken", True):
            problems.append(f"{where}: automountServiceAccountToken should be false (no API access needed)")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            cname = f"{where} container {container['name']}"
            for kind in ("requests", "limits"):
                have = container.get("resources", {}).get(kind, {})
                missing = [r for r in ("cpu", "memory") if r not in have]
                if missing:
                    problems.append(f"{cname}: resources.{kind} lacks {missing}")
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation", True):
                problems.append(f"{cname}: allowPrivilegeEscalation must be false")
            if not security.get("readOnlyRootFilesystem"):
                problems.append(f"{cname}: readOnlyRootFilesystem must be true")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{cname}: capabilities must drop ALL")
            image = container.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{cname}: image {image!r} needs a fixed tag")
        server = next((c for c in spec["containers"] if c["name"] == SERVER), None)
        if server is None:
            problems.append(f"{where}: no container named {SERVER!r}")
            continue
        for probe in PROBE_PATHS:
            if probe not in server:
                problems.append(f"{where}: the server has no {probe}")
        command = server.get("command", []) + server.get("args", [])
        if command[:2] != LAUNCHER:
            problems.append(f"{where}: the server must run {' '.join(LAUNCHER)} (supervised), not {command[:1]}")
        for flag in SECRET_FILE_FLAGS:
            path = flag_value(command, flag)
            if path is not None and not mounted_from_secret(path, server, volumes):
                problems.append(f"{where}: {flag} {path} is not mounted from a Secret")
        gpu_requests = server.get("resources", {}).get("requests", {}).get("nvidia.com/gpu")
        gpu_limits = server.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpu_requests != gpu_limits:
            problems.append(f"{where}: nvidia.com/gpu requests ({gpu_requests}) and limits ({gpu_limits}) differ")
        missing_tls = [f for f in MUTUAL_TLS_FLAGS if flag_value(command, f) is None]
        if gpu_limits and missing_tls:  # production: only clients holding a certificate the CA signed
            problems.append(f"{where}: a production (GPU) server must use gRPC with mutual TLS; it lacks {missing_tls}")
        if gpu_limits:
            problems += cuda_pool_problems(where, triton_args(command))
        shm = next((m for m in server.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"), None)
        if shm is None or volumes.get(shm["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
            problems.append(f"{where}: /dev/shm must be a memory-backed emptyDir (the Python backend needs it)")
        exit_timeout = flag_value(triton_args(command), "--exit-timeout-secs")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if exit_timeout is not None and grace <= int(exit_timeout):
            problems.append(f"{where}: terminationGracePeriodSeconds {grace} ≤ --exit-timeout-secs {exit_timeout}")
    return problems


def cuda_pool_problems(where: str, flags: list[str]) -> list[str]:
    """A GPU server must size Triton's CUDA memory pool of GPU 0 for its largest stage tensor."""
    value = flag_value(flags, CUDA_POOL_FLAG)
    device, _, size = (value or "").partition(":")
    if value is None or device != "0" or not size.isdigit():
        return [f"{where}: a GPU server must size Triton's CUDA memory pool: --triton-arg={CUDA_POOL_FLAG}=0:BYTES"]
    if int(size) < MIN_CUDA_POOL_BYTES:
        return [f"{where}: {CUDA_POOL_FLAG} {size} bytes < {MIN_CUDA_POOL_BYTES} (the largest stage tensors)"]
    return []


def adapter_metric_names(values: Path = ADAPTER_VALUES) -> set[str]:
    rules = yaml.safe_load(values.read_text())["rules"]["custom"]
    return {rule["name"]["as"] for rule in rules}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def reference_problems(objects: list[Obj], adapter_metrics: set[str]) -> list[str]:
    """Names that must agree between objects of one rendering."""
    problems = []
    by_kind: dict[str, dict[str, Obj]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    services = list(by_kind.get("Service", {}).values())
    for owner, template in pod_specs(objects):
        where = name_of(owner)
        labels = template["metadata"].get("labels", {})
        spec = template["spec"]
        server = next(c for c in spec["containers"] if c["name"] == SERVER)
        command = server.get("command", []) + server.get("args", [])
        ports = {p["name"]: p["containerPort"] for p in server.get("ports", [])}
        for name, flag in SERVER_PORT_FLAGS.items():
            value = flag_value(command, flag)
            if value is None or ports.get(name) != int(value):
                problems.append(f"{where}: container port {name}={ports.get(name)} but the server runs {flag} {value}")
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = server.get(probe_name, {}).get("httpGet", {})
            port = probe.get("port")
            if port not in ports and port not in ports.values():
                problems.append(f"{where}: {probe_name} uses port {port!r}, which the server does not expose")
            expected = PROBE_PATHS[probe_name]
            if port not in ("health", ports.get("health")):
                problems.append(f"{where}: {probe_name} must use the supervisor's health port, not {port!r}")
            if probe.get("path") != expected:
                problems.append(f"{where}: {probe_name} path {probe.get('path')!r}, expected {expected}")
        for volume in spec.get("volumes", []):
            secret = volume.get("secret", {}).get("secretName")
            if secret and secret not in by_kind.get("Secret", {}) and secret not in EXTERNAL_SECRETS:
                problems.append(f"{where}: volume {volume['name']} needs Secret {secret}, which nothing creates")
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                problems.append(f"{where}: volume {volume['name']} needs PVC {claim}, which is not rendered")
        for container in spec.get("initContainers", []) + spec["containers"]:
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in by_kind.get("ConfigMap", {}):
                    problems.append(f"{where}: envFrom ConfigMap {ref} is not rendered")
        if not any(selects(s["spec"].get("selector", {}), labels) for s in services):
            problems.append(f"{where}: no Service selects its pods")
        for kind in ("PodDisruptionBudget", "NetworkPolicy"):
            for obj in by_kind.get(kind, {}).values():
                selector = obj["spec"].get("selector" if kind == "PodDisruptionBudget" else "podSelector", {})
                if not selects(selector.get("matchLabels", {}), labels):
                    problems.append(f"{name_of(obj)} does not select the pods of {where}")
    for service in services:
        targets = {p["name"]: p.get("targetPort") for p in service["spec"]["ports"]}
        if "grpc" not in targets:
            problems.append(f"{name_of(service)}: no port named grpc")
    for monitor in by_kind.get("ServiceMonitor", {}).values():
        selector = monitor["spec"]["selector"].get("matchLabels", {})
        chosen = [s for s in services if selects(selector, s["metadata"].get("labels", {}))]
        if not chosen:
            problems.append(f"{name_of(monitor)} selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if not any(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in chosen):
                problems.append(f"{name_of(monitor)}: endpoint port {endpoint['port']!r} is not a port of the Service")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            problems.append(f"{name_of(hpa)}: scales {target['kind']}/{target['name']}, which is not rendered")
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] in ("Pods", "Object"):
                name = metric[metric["type"].lower()]["metric"]["name"]
                if name not in adapter_metrics:
                    problems.append(f"{name_of(hpa)}: metric {name!r} is no prometheus-adapter rule's output")
    return problems


def check(overlay: Path) -> list[str]:
    objects = render(overlay)
    return schema_problems(objects) + lint_problems(objects) + reference_problems(objects, adapter_metric_names())


def main(argv: list[str]) -> int:
    targets = [K8S / a if not Path(a).is_absolute() else Path(a) for a in argv] or overlays()
    failed = False
    for overlay in targets:
        problems = check(overlay)
        failed |= bool(problems)
        label = re.sub(r"^.*?/k8s/", "k8s/", str(overlay))
        print(f"{label}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""``anonymixer serve``: the embedded (or an installed) Triton server under the supervisor.

    anonymixer serve [--repository DIR | --profile tiny|ffhq1024|mobile1024 [--weights DIR] [--generator-ir DIR]]
                     [--gpu [--stages-via torch]] [--host 127.0.0.1] [--grpc-port 8001] [--http-port 8000]
                     [--metrics-port 8002] [--health-port 8003] [--tritonserver PATH]
                     [--tls-cert F --tls-key F [--tls-ca F]] [--api-key-file F]
                     [--probe-interval S] [--probe-timeout S] [--heartbeat-timeout S]
                     [--triton-timeout S] [--max-restarts N]

Without ``--repository`` the bundle and repository are built on first use and cached by content
(:mod:`exporter.cache`). Triton runs under the supervisor (:mod:`optimizer_backend.supervisor`):
a model whose stub process dies or hangs is reloaded on its own (a busy one is not),
``/health/ready`` on the health port tells whether every model really serves, and the process
exits non-zero when Triton exits (its code), hangs (4) or a model cannot be brought back (3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from anonymixer import profiles
from exporter.cache import cached_bundle, cached_repository
from exporter.repository import RepositoryOptions
from optimizer_backend.bls import VIA
from optimizer_backend.server import EmbeddedTritonServer
from optimizer_backend.supervisor import SupervisorSettings


def add_build_arguments(parser: argparse.ArgumentParser, default_profile: str, profile_help: str) -> None:
    """What to build and where to run it: the options ``serve`` and ``demo`` share."""
    parser.add_argument("--profile", choices=profiles.PROFILES, default=default_profile, help=profile_help)
    parser.add_argument(
        "--weights", help="folder with the downloaded files: ffhq1024's official ones, mobile1024's mobilefacenet.pt"
    )
    parser.add_argument(
        "--generator-ir", help="mobile1024: folder with the MobileStyleGAN IR files (default: the random-face wheel)"
    )
    parser.add_argument("--gpu", action="store_true", help="run the models on GPU 0 (KIND_GPU instances)")
    add_stages_argument(parser)


def add_stages_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stages-via",
        choices=VIA,
        default=RepositoryOptions().stages_via,
        help="the gradient-free stages: BLS calls to the ONNX network models (default), or in-process in "
        "PyTorch (a GPU without onnxruntime-gpu)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_build_arguments(parser, "tiny", "the bundle to build and serve without --repository (default tiny)")
    parser.add_argument("--repository", help="serve this repository instead of building one")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--health-port", type=int, default=8003, help="the supervisor's /health/ready and /health/live")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument(
        "--log-file", default=None, help="Triton's log (default: tritonserver.log beside the repository)"
    )
    parser.add_argument("--tritonserver", default=None, help="an installed tritonserver (default: nvidia-pytriton's)")
    parser.add_argument(
        "--triton-arg", action="append", default=[], help="one more tritonserver flag (--triton-arg=--log-verbose=1)"
    )
    parser.add_argument("--tls-cert", help="PEM certificate of the server: gRPC with TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", help="PEM CA: mutual TLS, only clients with a certificate it signed get in")
    parser.add_argument(
        "--api-key-file", help="a file holding the deployment's API key: inference needs header api-key"
    )
    defaults = SupervisorSettings()
    parser.add_argument(
        "--probe-interval", type=float, default=defaults.probe_interval_s, help="seconds between probes"
    )
    parser.add_argument(
        "--probe-timeout",
        type=float,
        default=defaults.probe_timeout_s,
        help="a probe not answered within this, while the model's heartbeat shows no work, marks it wedged",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=defaults.heartbeat_timeout_s,
        help="a busy model whose heartbeat does not advance for this long is wedged (it beats every step)",
    )
    parser.add_argument(
        "--triton-timeout",
        type=float,
        default=defaults.triton_timeout_s,
        help="tritonserver not answering its liveness endpoint this long is hung: kill it and exit 4",
    )
    parser.add_argument(
        "--max-restarts", type=int, default=defaults.max_restarts, help="per model within --restart-window"
    )
    parser.add_argument("--restart-window", type=float, default=defaults.restart_window_s)
    parser.set_defaults(run=serve)


def print_notice(repository: Path) -> None:
    """The terms of the served bundle's weights, where they restrict use: once per start."""
    manifest = repository / "repository.json"
    notice = json.loads(manifest.read_text())["bundle"].get("notice") if manifest.is_file() else None
    if notice:
        print(f"NOTE: {notice}", file=sys.stderr)


def tls_args(cert: str | None, key: str | None, ca: str | None) -> tuple[str, ...]:
    """Triton's gRPC TLS flags: TLS with the server's certificate, mutual when a CA is given
    (then only clients holding a certificate that CA signed get through)."""
    if not cert and not key and not ca:
        return ()
    if not cert or not key:
        raise SystemExit("--tls-cert and --tls-key go together (the server's certificate and its key)")
    for path in filter(None, (cert, key, ca)):
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such file")
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    if ca:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={ca}"]
    return tuple(args)


def read_secret(path: str | None) -> str | None:
    if not path:
        return None
    secret = Path(path).read_text().strip()
    if not secret:
        raise SystemExit(f"{path}: the API key file is empty")
    return secret


def serve(args: argparse.Namespace) -> int:
    from optimizer_backend.supervisor import new_admin_key, restricted_api_args, serve_supervised

    if args.repository:
        repository = Path(args.repository)
    else:
        bundle_dir = cached_bundle(args.profile, args.weights, generator_ir=args.generator_ir)
        repository = cached_repository(bundle_dir, gpu=args.gpu, stages_via=args.stages_via)
    print_notice(repository)
    tls = tls_args(args.tls_cert, args.tls_key, args.tls_ca)
    api_key = read_secret(args.api_key_file)
    admin_key = os.environ.get("ANONYMIXER_ADMIN_KEY") or new_admin_key()
    server = EmbeddedTritonServer(
        repository,
        host=args.host,
        # Triton's HTTP has no TLS: with TLS on gRPC, HTTP (the supervisor's own channel) stays on loopback
        http_host="127.0.0.1" if tls else args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        binary=args.tritonserver,
        log_file=args.log_file,
        extra_args=(
            "--model-control-mode=explicit",
            "--load-model=*",
            *restricted_api_args(admin_key, api_key),
            *tls,
            *args.triton_arg,
        ),
    )
    settings = SupervisorSettings(
        probe_interval_s=args.probe_interval,
        probe_timeout_s=args.probe_timeout,
        heartbeat_timeout_s=args.heartbeat_timeout,
        triton_timeout_s=args.triton_timeout,
        max_restarts=args.max_restarts,
        restart_window_s=args.restart_window,
    )
    return serve_supervised(
        server,
        admin_key,
        ready_timeout_s=args.ready_timeout,
        health_host=args.host,
        health_port=args.health_port,
        settings=settings,
        api_key=api_key,
    )

"""``anonymixer ui``: the browser front end (:mod:`webui`) on a running service (``--server``) or
on the embedded server it starts, as ``anonymixer demo`` does (mobile1024's real weights by
default; tiny when MobileFaceNet cannot be had). The page is a client like any other: the TLS and
API-key flags are the client CLI's own and pass through to every call."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

from apps.demo import demo_weights
from exporter.cache import cached_bundle, cached_repository
from optimizer_backend import serve
from optimizer_backend.server import EmbeddedTritonServer

if TYPE_CHECKING:
    from webui.connection import Connection

MISSING_GRADIO = "the browser UI needs gradio, the `ui` extra: pip install -e '.[ui]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serve.add_build_arguments(
        parser, "mobile1024", "without --server: mobile1024 (real weights; tiny when MobileFaceNet cannot be had), …"
    )
    parser.add_argument("--server", help="gRPC address of a running service (default: start the embedded one)")
    parser.add_argument("--metrics-url", help="with --server: its Prometheus metrics (http://HOST:8002/metrics)")
    parser.add_argument("--host", default="127.0.0.1", help="the page's listen address (default loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="the page's port (default 7860)")
    parser.add_argument("--ssl", action="store_true", help="gRPC with TLS (the client CLI's flags from here on)")
    parser.add_argument("--root-certificates", help="PEM file of the CA that signed the server certificate")
    parser.add_argument("--certificate", help="this client's PEM certificate (a server with mutual TLS)")
    parser.add_argument("--private-key", help="the PEM private key of --certificate")
    parser.add_argument("--api-key-file", help="a file holding the deployment's API key (sent as header api-key)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="deadline per call, seconds (default 1800)")
    parser.set_defaults(run=run)


def connection(args: argparse.Namespace, url: str, metrics_url: str | None) -> Connection:
    """The client's options from the flags; the TLS and API-key ones only with --server."""
    from webui.connection import Connection

    remote = (args.ssl, args.root_certificates, args.certificate, args.private_key, args.api_key_file)
    if not args.server and any(remote):
        raise SystemExit("the TLS and API-key flags are for a running service: give --server too")
    if bool(args.certificate) != bool(args.private_key):
        raise SystemExit("--certificate and --private-key go together")
    return Connection(
        url,
        ssl=args.ssl,
        root_certificates=args.root_certificates,
        certificate_chain=args.certificate,
        private_key=args.private_key,
        api_key=serve.read_secret(args.api_key_file),
        timeout_s=args.timeout,
        metrics_url=metrics_url,
    )


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a container stopping) ends the page as Ctrl-C does, so the embedded server is stopped too."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    try:
        from webui.app import build, launch
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("gradio", "gradio_client"):
            raise SystemExit(MISSING_GRADIO) from None
        raise
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    if args.server:
        launch(build(connection(args, args.server, args.metrics_url)), args.host, args.port)
        return 0
    connection(args, "", None)  # refuse remote-only flags before minutes of building
    profile, weights = demo_weights(args.profile, args.weights)
    bundle_dir = cached_bundle(profile, weights, generator_ir=args.generator_ir)
    repository = cached_repository(bundle_dir, gpu=args.gpu, stages_via=args.stages_via)
    serve.print_notice(repository)
    print(f"starting the embedded server ({profile}); the page follows once every model is ready …", file=sys.stderr)
    with EmbeddedTritonServer(repository, log_file=repository.parent / "tritonserver-ui.log") as server:
        launch(build(connection(args, server.grpc_url, server.metrics_url)), args.host, args.port)
    return 0

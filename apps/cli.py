"""``anonymixer``: run the service (``serve``), the end-to-end demo against it (``demo``) or the
browser front end (``ui``).

    anonymixer serve [--repository DIR | --profile tiny|ffhq1024|mobile1024 [--weights DIR]] …
    anonymixer demo  [--profile mobile1024|tiny|ffhq1024 [--weights DIR]] [--faces FILE_OR_DIR…]
                     [--pair PHOTO PHOTO] [--scenes PHOTO…] [--keys K1 K2] [--steps N] [--out out/demo]
    anonymixer ui    [--server HOST:PORT [--metrics-url URL] [TLS and API-key flags] | --profile …]
                     [--host 127.0.0.1] [--port 7860]

``anonymixer <command> --help`` lists every option; ``serve`` is :mod:`optimizer_backend.serve`,
``demo`` is :mod:`apps.demo`, ``ui`` is :mod:`apps.ui` (the page itself: :mod:`webui`).
"""

from __future__ import annotations

import argparse
import sys

from anonymixer.bundle import BundleError
from apps import demo, ui
from exporter.cache import MissingInputError
from optimizer_backend import serve


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    serve.add_build_arguments(
        parser, "mobile1024", "mobile1024 (real weights; tiny when MobileFaceNet cannot be had), tiny or ffhq1024"
    )
    parser.add_argument("--faces", nargs="*", default=[], help="photos or folders whose largest face is protected")
    parser.add_argument(
        "--pair", nargs="*", default=[], help="two photos of one person: shows that one key gives them one new identity"
    )
    parser.add_argument(
        "--scenes", nargs="*", default=[], help="whole photos for scene mode (default: the --faces photos)"
    )
    parser.add_argument("--limit", type=int, default=3, help="at most this many --faces files (default 3)")
    parser.add_argument(
        "--keys",
        nargs="+",
        default=list(demo.DEMO_KEYS),
        help="keys, one column each (demo only: command-line keys are visible to other users)",
    )
    parser.add_argument("--steps", type=int, default=None, help="refinement steps (default: the server's)")
    parser.add_argument("--out", default="out/demo")
    parser.set_defaults(run=demo.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymixer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_arguments(sub.add_parser("serve", help="start the Triton server under the supervisor"))
    add_demo_arguments(sub.add_parser("demo", help="protect sample faces and photos end to end"))
    ui.add_arguments(sub.add_parser("ui", help="the browser front end, on a running service or the embedded one"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (MissingInputError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

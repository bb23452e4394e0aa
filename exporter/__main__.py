"""``python -m exporter``: official checkpoints → model bundle (and, in later stages, ONNX/TensorRT/Triton)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anonymixer import bundle, profiles
from anonymixer.bundle import BundleError
from anonymixer.checkpoints import CheckpointError
from exporter.download import DEFAULT_FILES, OFFICIAL_FILES, DownloadError, download_file


def _bundle(args: argparse.Namespace) -> None:
    if args.profile == "ffhq1024" and not args.random_weights:
        if not args.e4e or not args.fr:
            raise SystemExit(
                "--profile ffhq1024 needs --e4e PATH (e4e_ffhq_encode.pt) and --fr PATH (model_ir_se50.pth), "
                "or --random-weights"
            )
        out = profiles.build_ffhq1024(args.out, e4e=args.e4e, fr=args.fr, overwrite=args.force)
    else:
        if args.e4e:
            raise SystemExit("--e4e is for the official ffhq1024 bundle; random-weight bundles take only --fr")
        model = profiles.random_bundle(args.profile, seed=args.seed, fr=args.fr)
        out = bundle.save(model, args.out, overwrite=args.force)
    print(f"bundle written to {out}")


def _download(args: argparse.Namespace) -> None:
    pins = {}
    for item in args.sha256:
        name, _, hexdigest = item.partition("=")
        if name not in OFFICIAL_FILES or len(hexdigest) != 64:
            raise SystemExit(f"--sha256 wants NAME=64-hex-digits with NAME in {sorted(OFFICIAL_FILES)}, got {item!r}")
        pins[name] = hexdigest.lower()
    unknown = [name for name in args.files if name not in OFFICIAL_FILES]
    if unknown:
        raise SystemExit(f"unknown file(s) {unknown}; known: {sorted(OFFICIAL_FILES)}")
    for name in args.files or DEFAULT_FILES:
        download_file(
            OFFICIAL_FILES[name],
            Path(args.dest),
            mirror=args.mirror,
            sha256=pins.get(name),
            allow_unpinned=args.allow_unpinned,
            timeout_s=args.timeout,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bundle", help="build a model bundle (bundle.json + safetensors)")
    b.add_argument("--profile", choices=profiles.PROFILES, required=True)
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--e4e", help="e4e_ffhq_encode.pt (ffhq1024)")
    b.add_argument("--fr", help="face recognition checkpoint: model_ir_se50.pth or mobilefacenet.pt")
    b.add_argument("--random-weights", action="store_true", help="ffhq1024 shapes with seeded random weights")
    b.add_argument("--seed", type=int, default=0, help="seed of random weights (tiny, --random-weights; default 0)")
    b.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    b.set_defaults(run=_bundle)

    d = sub.add_parser("download", help="fetch the official pretrained files (resumable, SHA-256 verified)")
    d.add_argument("--dest", required=True)
    d.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help=f"which files (default: {' '.join(DEFAULT_FILES)}; known: {' '.join(OFFICIAL_FILES)})",
    )
    d.add_argument("--mirror", help="base URL serving the files by name (replaces the official URLs)")
    d.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX", help="pin or override a hash")
    d.add_argument("--allow-unpinned", action="store_true", help="download files with no pinned hash and print it")
    d.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    d.set_defaults(run=_download)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (BundleError, CheckpointError, DownloadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m exporter``: official checkpoints → model bundle → ONNX → TensorRT → Triton model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anonymixer import bundle, profiles
from anonymixer.bundle import BundleError
from anonymixer.checkpoints import CheckpointError
from anonymixer.config import ProtectConfig
from exporter.download import DEFAULT_FILES, OFFICIAL_FILES, DownloadError, download_file
from exporter.repository import TARGETS, RepositoryOptions

DEFAULTS = RepositoryOptions()  # every repository default, defined once there
# the repository's numeric options: flag → (RepositoryOptions field, what it sets)
REPOSITORY_NUMBERS = {
    "--instances": ("instances", "instances per GPU, or on the CPU"),
    "--max-batch": ("max_batch_size", "max_batch_size of every network model"),
    "--max-queue-delay-us": ("max_queue_delay_us", "the networks' dynamic batcher delay"),
    "--protect-max-batch": ("protect_max_batch", "anonymixer: items per execute"),
    "--max-image-pixels": ("max_image_pixels", "anonymixer: largest aligned face"),
    "--max-queue-size": ("max_queue_size", "anonymixer: requests allowed to wait; more are refused at once"),
    "--queue-timeout": ("queue_timeout_s", "anonymixer: seconds a request may wait in the queue before it is refused"),
    "--scene-max-batch": ("scene_max_batch", "anonymixer_scene: photos per execute"),
    "--max-photo-pixels": ("max_photo_pixels", "anonymixer_scene: largest photo"),
}


def _bundle(args: argparse.Namespace) -> None:
    if args.generator_ir and args.profile != "mobile1024":
        raise SystemExit("--generator-ir is for --profile mobile1024")
    if args.profile == "mobile1024":
        if not args.fr or args.e4e or args.random_weights:
            raise SystemExit(
                "--profile mobile1024 takes --fr PATH (mobilefacenet.pt: python -m exporter download --dest DIR "
                "mobilefacenet) and the generator of the random-face wheel (or --generator-ir DIR); "
                "no --e4e, no --random-weights"
            )
        out = profiles.build_mobile1024(args.out, fr=args.fr, generator_ir=args.generator_ir, overwrite=args.force)
        print(bundle.read_config(out)["notice"], file=sys.stderr)
    elif args.profile == "ffhq1024" and not args.random_weights:
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


def _faces(args: argparse.Namespace) -> None:
    from anonymixer.images import save_grid
    from anonymixer.samples import generated_faces

    model = bundle.load(args.bundle)
    if model.notice:
        print(model.notice, file=sys.stderr)
    faces = generated_faces(model, args.count, psi=args.psi, seed=args.seed)
    columns = [faces[i : i + args.rows] for i in range(0, args.count, args.rows)]
    print(f"{args.count} faces (ψ {args.psi}, seed {args.seed}) in {save_grid(columns, args.out, tile=args.tile)}")


def _onnx(args: argparse.Namespace) -> None:
    from exporter.onnx_export import export_all

    export_all(bundle.load(args.bundle), args.out, simplify=not args.no_simplify)
    print(f"ONNX models written to {args.out}")


def _tensorrt(args: argparse.Namespace) -> None:
    from exporter.tensorrt_build import build_engines, check_plans

    build_engines(args.onnx, args.out, precision=args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch)
    print(f"TensorRT plans written to {args.out}")
    if args.check:  # raises PlanCheckError (exit 1) naming each plan that fails
        check_plans(args.onnx, args.out, max_batch_size=args.max_batch)
        print(f"every plan matches onnxruntime and takes batches 1–{args.max_batch}")


def _repository(args: argparse.Namespace) -> None:
    from exporter.onnx_export import export_all
    from exporter.repository import build_repository

    options = RepositoryOptions(
        target=args.target,
        gpus=tuple(int(g) for g in args.gpus.split(",")) if args.gpus else (),
        ort_provider=args.ort_provider,
        algorithm=args.algorithm,
        stages_via=args.stages_via,
        scene=args.scene,
        detector=args.detector,
        **{field: getattr(args, field) for field, _ in REPOSITORY_NUMBERS.values()},
    )
    onnx_dir = Path(args.onnx) if args.onnx else Path(args.out).with_name(Path(args.out).name + "-onnx")
    if not args.onnx:
        export_all(bundle.load(args.bundle), onnx_dir)
    models = build_repository(onnx_dir, args.out, options, engines_dir=args.engines, bundle_dir=args.bundle)
    print(f"{options.target} repository with {', '.join(sorted(models))} written to {args.out}")


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
    b.add_argument(
        "--generator-ir",
        help="mobile1024: folder with MappingNetwork.{xml,bin} and SynthesisNetwork.{xml,bin} "
        "(default: the installed random-face wheel's)",
    )
    b.add_argument("--random-weights", action="store_true", help="ffhq1024 shapes with seeded random weights")
    b.add_argument("--seed", type=int, default=0, help="seed of random weights (tiny, --random-weights; default 0)")
    b.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    b.set_defaults(run=_bundle)

    f = sub.add_parser("faces", help="a grid of faces the bundle's generator draws from seeded z")
    f.add_argument("--bundle", required=True)
    f.add_argument("--out", required=True, help="picture file (.png, .jpg)")
    f.add_argument("--count", type=int, default=8, help="faces (default 8)")
    f.add_argument("--rows", type=int, default=2, help="rows of the grid (default 2)")
    psi = ProtectConfig().truncation_psi
    f.add_argument("--psi", type=float, default=psi, help=f"truncation ψ (default {psi:g}, the key latents')")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument(
        "--tile", type=int, default=256, help="px per face (default 256; a row of 512 px faces makes a group photo)"
    )
    f.set_defaults(run=_faces)

    o = sub.add_parser("onnx", help="export the bundle's networks to ONNX (opset 17, dynamic batch)")
    o.add_argument("--bundle", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--no-simplify", action="store_true", help="skip onnxsim (for benchmarks.onnx_simplify)")
    o.set_defaults(run=_onnx)

    t = sub.add_parser("tensorrt", help="build TensorRT plans from the ONNX models (needs a CUDA GPU)")
    t.add_argument("--onnx", required=True, help="folder written by `python -m exporter onnx`")
    t.add_argument("--out", required=True)
    t.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    t.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULTS.max_batch_size,
        help=f"the largest batch the plans take: a repository's --max-batch (default {DEFAULTS.max_batch_size})",
    )
    t.add_argument("--opt-batch", type=int, default=None, help="batch size TensorRT tunes for (default max/2)")
    t.add_argument(
        "--check",
        action="store_true",
        help="compare every plan with onnxruntime at batch 1 and --max-batch (fp32: ≤ 1e-3 relative; fp16/bf16: "
        "template cosine ≥ 0.999, image PSNR ≥ 40 dB) and record the verdict; the tensorrt repository target "
        "takes only plans that passed",
    )
    t.set_defaults(run=_tensorrt)

    r = sub.add_parser("repository", help="build a Triton model repository")
    r.add_argument("--bundle", required=True)
    r.add_argument("--target", choices=TARGETS, default=DEFAULTS.target)
    r.add_argument("--out", required=True)
    r.add_argument("--onnx", help="reuse ONNX models from this folder (default: export into OUT-onnx)")
    r.add_argument("--engines", help="TensorRT plans (tensorrt target)")
    r.add_argument("--gpus", default="", help="comma-separated GPU ids: KIND_GPU instances (default: KIND_CPU)")
    for flag, (field, what) in REPOSITORY_NUMBERS.items():
        value = getattr(DEFAULTS, field)
        shown = f"{value:g}" if isinstance(value, float) else value
        r.add_argument(flag, type=type(value), default=value, dest=field, help=f"{what} (default {shown})")
    r.add_argument(
        "--ort-provider",
        choices=["cuda", "tensorrt"],
        default=DEFAULTS.ort_provider,
        help="embedded target on GPUs: onnxruntime's CUDA or TensorRT provider",
    )
    r.add_argument(
        "--algorithm",
        default=DEFAULTS.algorithm,
        help='anonymixer: JSON settings over the bundle\'s (docs/settings.md), e.g. \'{"steps": 30, "views": 0}\'',
    )
    r.add_argument(
        "--stages-via",
        choices=["bls", "torch"],
        default=DEFAULTS.stages_via,
        help="anonymixer: run encode/render/embed through BLS (default) or in-process torch",
    )
    r.add_argument(
        "--scene",
        default=DEFAULTS.scene,
        help='anonymixer_scene: JSON settings, e.g. \'{"min_face": 64, "small_faces": "keep"}\' (anonymixer.scene)',
    )
    r.add_argument(
        "--detector", default=DEFAULTS.detector, help="face_detector: JSON settings (anonymixer.face_detection)"
    )
    r.set_defaults(run=_repository)

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
    except (BundleError, CheckpointError, DownloadError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

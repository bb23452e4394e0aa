"""``anonymixer``: run the service (``serve``) or the end-to-end demo (``demo``) on the embedded Triton.

    anonymixer serve [--repository DIR | --profile tiny|ffhq1024|mobile1024 [--weights DIR] [--generator-ir DIR]]
                     [--gpu [--stages-via torch]] [--host 127.0.0.1] [--grpc-port 8001] [--http-port 8000]
                     [--metrics-port 8002] [--health-port 8003] [--tritonserver PATH]
                     [--tls-cert F --tls-key F [--tls-ca F]] [--api-key-file F]
                     [--probe-interval S] [--probe-timeout S] [--max-restarts N]
    anonymixer demo  [--profile mobile1024|tiny|ffhq1024 [--weights DIR]] [--faces FILE_OR_DIR…]
                     [--pair PHOTO PHOTO] [--scenes PHOTO…] [--keys K1 K2] [--out out/demo]

Bundles and repositories are built on first use and cached under ``build/cache`` by a hash of
their content (the bundle's file hashes, the repository settings and this package's version), so
a second start reuses them.

``serve`` runs Triton under the supervisor (optimizer_backend.supervisor): a model whose stub
process dies is reloaded on its own, ``/health/ready`` on the health port tells whether every model
really serves, and the process exits 3 when a model cannot be brought back.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import anonymixer
from anonymixer import bundle, profiles
from anonymixer.face_detection import FaceDetector
from anonymixer.images import save_grid
from anonymixer.samples import aligned_face, builtin_photos, photos_from
from optimizer_backend.decode import encode_png
from optimizer_backend.server import EmbeddedTritonServer
from optimizer_backend.supervisor import SupervisorSettings

CACHE = Path("build/cache")
DEMO_KEYS = ("demo key A", "demo key B")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def prepare_bundle(profile: str, weights: str | None, cache: Path = CACHE, *, generator_ir: str | None = None) -> Path:
    if profile == "tiny":
        out = cache / "bundles" / "tiny-seed0"
        if not (out / bundle.MANIFEST).exists():
            profiles.build_tiny(out, overwrite=True)
        return out
    if profile == "mobile1024":
        return _mobile1024_bundle(weights, generator_ir, cache)
    if not weights:
        raise SystemExit(
            "--profile ffhq1024 needs --weights DIR holding e4e_ffhq_encode.pt and model_ir_se50.pth "
            "(python -m exporter download --dest DIR)"
        )
    from anonymixer.checkpoints import file_sha256

    e4e, fr = Path(weights) / "e4e_ffhq_encode.pt", Path(weights) / "model_ir_se50.pth"
    for path in (e4e, fr):
        if not path.is_file():
            raise SystemExit(f"{path}: missing (python -m exporter download --dest {weights})")
    out = cache / "bundles" / f"ffhq1024-{_digest(file_sha256(e4e), file_sha256(fr))}"
    if not (out / bundle.MANIFEST).exists():
        print(f"building the ffhq1024 bundle in {out} …", file=sys.stderr)
        profiles.build_ffhq1024(out, e4e=e4e, fr=fr, overwrite=True)
    return out


def _mobile1024_bundle(weights: str | None, generator_ir: str | None, cache: Path) -> Path:
    from anonymixer.checkpoints import file_sha256
    from anonymixer.mobilestylegan_ir import locate_ir, verify_ir

    if not weights:
        raise SystemExit(
            "--profile mobile1024 needs --weights DIR holding mobilefacenet.pt "
            "(python -m exporter download --dest DIR mobilefacenet)"
        )
    fr = Path(weights) / "mobilefacenet.pt"
    if not fr.is_file():
        raise SystemExit(f"{fr}: missing (python -m exporter download --dest {weights} mobilefacenet)")
    try:
        ir_hashes = verify_ir(locate_ir(generator_ir))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    settings = json.dumps([profiles.MOBILE1024_ALGORITHM, profiles.MOBILE1024_FRAMING], sort_keys=True)
    out = cache / "bundles" / f"mobile1024-{_digest(file_sha256(fr), *ir_hashes.values(), settings)}"
    if not (out / bundle.MANIFEST).exists():
        print(f"building the mobile1024 bundle in {out} …", file=sys.stderr)
        profiles.build_mobile1024(out, fr=fr, generator_ir=generator_ir, overwrite=True)
    return out


def print_notice(repository: Path) -> None:
    """The terms of the served bundle's weights, where they restrict use: once per start."""
    manifest = repository / "repository.json"
    notice = json.loads(manifest.read_text())["bundle"].get("notice") if manifest.is_file() else None
    if notice:
        print(f"NOTE: {notice}", file=sys.stderr)


def prepare_repository(
    bundle_dir: Path, *, gpu: bool, algorithm: str = "{}", stages_via: str = "bls", cache: Path = CACHE
) -> Path:
    from exporter.onnx_export import export_all
    from exporter.repository import RepositoryOptions, build_repository

    options = RepositoryOptions(target="embedded", gpus=(0,) if gpu else (), algorithm=algorithm, stages_via=stages_via)
    config = (bundle_dir / bundle.MANIFEST).read_text()
    key = _digest(config, repr(options), anonymixer.__version__)
    root = cache / "repositories" / key
    if not (root / "models" / "repository.json").exists():
        print(f"building the Triton repository in {root} …", file=sys.stderr)
        export_all(bundle.load(bundle_dir), root / "onnx")
        build_repository(root / "onnx", root / "models", options, bundle_dir=bundle_dir)
    return root / "models"


def _repository(args: argparse.Namespace) -> Path:
    if getattr(args, "repository", None):
        return Path(args.repository)
    bundle_dir = prepare_bundle(args.profile, args.weights, generator_ir=args.generator_ir)
    return prepare_repository(bundle_dir, gpu=args.gpu, stages_via=args.stages_via)


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

    repository = _repository(args)
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


def protect_over_grpc(
    url: str, images: list[bytes], keys: list[bytes], steps: int | None = None, timeout_s: float = 900.0, chunk: int = 8
) -> dict:
    """``anonymixer`` requests (``chunk`` items each, item i under ``keys[i]``) with plain tritonclient:
    PNGs, templates, similarities."""
    import tritonclient.grpc as grpcclient

    pngs, templates, similarity = [], [], []
    start = time.perf_counter()
    with grpcclient.InferenceServerClient(url) as client:
        for first in range(0, len(images), chunk):
            part = images[first : first + chunk]
            image_in = grpcclient.InferInput("IMAGE", [len(part), 1], "BYTES")
            image_in.set_data_from_numpy(np.array([[im] for im in part], dtype=np.object_))
            key_in = grpcclient.InferInput("KEY", [len(part), 1], "BYTES")
            key_in.set_data_from_numpy(np.array([[k] for k in keys[first : first + chunk]], dtype=np.object_))
            inputs = [image_in, key_in]
            if steps is not None:
                steps_in = grpcclient.InferInput("STEPS", [len(part), 1], "INT32")
                steps_in.set_data_from_numpy(np.full((len(part), 1), steps, dtype=np.int32))
                inputs.append(steps_in)
            result = client.infer("anonymixer", inputs, client_timeout=timeout_s)
            pngs += [row[0] for row in result.as_numpy("PROTECTED")]
            templates.append(result.as_numpy("TEMPLATE"))
            similarity.append(result.as_numpy("ORIGINAL_SIMILARITY")[:, 0])
    return {
        "pngs": pngs,
        "templates": np.concatenate(templates),
        "similarity": np.concatenate(similarity),
        "seconds": time.perf_counter() - start,
    }


def scene_over_grpc(url: str, photo: bytes, key: bytes, steps: int | None, timeout_s: float = 600.0) -> dict:
    """One ``anonymixer_scene`` request with plain tritonclient: the photo and what happened to each face."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, value, dtype in (("IMAGE", photo, "BYTES"), ("KEY", key, "BYTES"), ("STEPS", steps, "INT32")):
        if value is None:
            continue
        tensor = grpcclient.InferInput(name, [1, 1], dtype)
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_ if dtype == "BYTES" else np.int32))
        inputs.append(tensor)
    start = time.perf_counter()
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("anonymixer_scene", inputs, client_timeout=timeout_s)
    return {
        "image": np.asarray(Image.open(io.BytesIO(result.as_numpy("IMAGE")[0, 0]))),
        "actions": [a.decode() for a in result.as_numpy("FACE_ACTIONS")[0] if a],
        "seconds": time.perf_counter() - start,
    }


# What the demo changes on 2 CPU cores for mobile1024 so that it ends within 10 minutes (a real
# 1024 px refinement step costs ~2.3 s per face there); the service's defaults are the bundle's.
DEMO_CPU_ALGORITHM = {"inversion_steps": 20, "steps": 10, "views": 0}
# ../shared beside the checkout (the project's data folder; ANONYMIXER_SHARED elsewhere), when present
SHARED = Path(os.environ.get("ANONYMIXER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED_MOBILEFACENET = SHARED / "weights" / "mobilefacenet"
DEMO_WEIGHTS = Path("build/weights")


def demo_weights(profile: str, weights: str | None) -> tuple[str, str | None]:
    """(profile, weights folder) for the demo: mobile1024 takes MobileFaceNet from ``--weights``,
    ../shared or a download with its pinned hash; when none can be had it says so and uses tiny."""
    if profile != "mobile1024" or weights:
        return profile, weights
    from exporter.download import OFFICIAL_FILES, DownloadError, download_file, sha256_of

    spec = OFFICIAL_FILES["mobilefacenet"]
    shared = SHARED_MOBILEFACENET / spec.filename
    if shared.is_file() and sha256_of(shared) == spec.sha256:
        return profile, str(SHARED_MOBILEFACENET)
    try:
        download_file(spec, DEMO_WEIGHTS, attempts=1, timeout_s=30)
        return profile, str(DEMO_WEIGHTS)
    except DownloadError as exc:
        print(
            f"mobile1024 needs MobileFaceNet: not in {SHARED_MOBILEFACENET} and the download failed ({exc}); "
            "falling back to the tiny profile (random weights, no real faces)",
            file=sys.stderr,
        )
        return "tiny", None


def demo_faces(args: argparse.Namespace, detector: FaceDetector, framing: str) -> list[tuple[str, np.ndarray]]:
    """The aligned sample faces: --faces, then the --pair (two photos of one person), or the
    built-in portrait when neither is given."""
    photos = photos_from(args.faces, args.limit) + photos_from(args.pair, 2)
    if not photos:
        photos = builtin_photos()
    faces = []
    for name, photo in photos:
        face = aligned_face(photo, detector, framing=framing)
        if face is None:
            print(f"{name}: no face found, skipped for the aligned-face part", file=sys.stderr)
        else:
            faces.append((name, face))
    if not faces:
        raise SystemExit("no faces: give --faces or --pair, or install scikit-image for the built-in sample")
    return faces


def demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    profile, weights = demo_weights(args.profile, args.weights)
    bundle_dir = prepare_bundle(profile, weights, generator_ir=args.generator_ir)
    config = bundle.read_config(bundle_dir)
    algorithm = {} if args.gpu or profile != "mobile1024" else dict(DEMO_CPU_ALGORITHM)
    if args.steps is not None:
        algorithm["steps"] = args.steps
    if algorithm:
        print(f"demo settings on the CPU (the service's defaults are the bundle's): {algorithm}", file=sys.stderr)
    repository = prepare_repository(
        bundle_dir, gpu=args.gpu, algorithm=json.dumps(algorithm, sort_keys=True), stages_via=args.stages_via
    )
    print_notice(repository)
    detector = FaceDetector()
    framing = bundle.config_framing(config)
    faces = demo_faces(args, detector, framing)
    scene_photos = photos_from(args.scenes, args.limit) if args.scenes else photos_from(args.faces, args.limit)
    scene_photos = scene_photos or builtin_photos()
    originals = [face for _, face in faces]
    payload = [encode_png(im) for im in originals]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if profile == "tiny":
        print(
            "Using the built-in tiny bundle: seeded random weights, so protected faces are structured noise. "
            "For real faces: --profile mobile1024 (MobileFaceNet from ../shared or a download).",
            file=sys.stderr,
        )
    with EmbeddedTritonServer(repository, log_file=out / "tritonserver.log") as server:
        ready = time.perf_counter()
        print(
            f"server ready in {ready - start:.1f} s (gRPC {server.grpc_url}); protecting {len(faces)} face(s) "
            f"with {len(args.keys)} key(s) …",
            file=sys.stderr,
        )
        # every face under every key in one request: each face is inverted once for all its keys
        keys = [k.encode() for k in args.keys for _ in payload]
        both = protect_over_grpc(server.grpc_url, payload * len(args.keys), keys, args.steps)
        n = len(payload)
        results = [
            {
                "pngs": both["pngs"][i * n : (i + 1) * n],
                "templates": both["templates"][i * n : (i + 1) * n],
                "similarity": both["similarity"][i * n : (i + 1) * n],
                "seconds": both["seconds"],
            }
            for i in range(len(args.keys))
        ]
        print(f"scene mode: {len(scene_photos)} whole photo(s) with key 1 …", file=sys.stderr)
        scenes = [
            scene_over_grpc(server.grpc_url, encode_png(photo), args.keys[0].encode(), args.steps)
            for _, photo in scene_photos
        ]
        stats = _execution_stats(server.grpc_url)
    print("reconstructions (the inversion the server ran, rendered here) …", file=sys.stderr)
    reconstructions, reconstruct_seconds = _reconstructions(bundle_dir, algorithm, originals)
    scene_dir = out / "scenes"
    scene_dir.mkdir(exist_ok=True)
    for (name, photo), scene in zip(scene_photos, scenes, strict=True):
        Image.fromarray(np.concatenate([photo, scene["image"]], axis=1)).save(scene_dir / f"{name}.png")
    protected = [np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in r["pngs"]]) for r in results]
    import torch

    grid = save_grid(
        [
            torch.from_numpy(c).permute(0, 3, 1, 2).float() / 127.5 - 1
            for c in [np.stack(originals), reconstructions, *protected]
        ],
        out / "before_after.png",
    )
    names = [name for name, _ in faces]
    pair = [names.index(Path(p).stem) for p in args.pair if Path(p).stem in names]
    summary = {
        "profile": profile,
        "bundle": str(bundle_dir),
        "repository": str(repository),
        "settings": {**config.get("algorithm", {}), **algorithm},
        "faces": names,
        "keys": len(args.keys),
        "requests": [
            {
                "key_index": i,
                "seconds": round(r["seconds"], 2),
                "original_similarity": [round(float(v), 4) for v in r["similarity"]],
            }
            for i, r in enumerate(results)
        ],
        "template_cosine_between_keys": (
            [round(float(a @ b), 4) for a, b in zip(results[0]["templates"], results[1]["templates"], strict=True)]
            if len(results) > 1
            else []
        ),
        "same_person_pair": (
            {
                "photos": [names[i] for i in pair],
                "template_cosine_per_key": [
                    round(float(r["templates"][pair[0]] @ r["templates"][pair[1]]), 4) for r in results
                ],
            }
            if len(pair) == 2
            else None
        ),
        "scenes": [
            {"photo": name, "faces": scene["actions"], "seconds": round(scene["seconds"], 2)}
            for (name, _), scene in zip(scene_photos, scenes, strict=True)
        ],
        "reconstruction_seconds": round(reconstruct_seconds, 1),
        "server": stats,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for i, r in enumerate(results):
        sims = ", ".join(f"{name} {s:+.3f}" for name, s in zip(names, r["similarity"], strict=True))
        print(f"key {i + 1}: {r['seconds']:.1f} s; cos(protected, original): {sims}")
    if summary["same_person_pair"]:
        pair_summary = summary["same_person_pair"]
        photos = ", ".join(pair_summary["photos"])
        print(f"one person, two photos ({photos}): template cos per key {pair_summary['template_cosine_per_key']}")
    for scene in summary["scenes"]:
        print(f"scene {scene['photo']}: {len(scene['faces'])} face(s) {scene['faces']} in {scene['seconds']} s")
    print(
        f"wrote {grid} (aligned original | reconstruction | one column per key), {scene_dir}/*.png (photo | "
        f"protected photo) and {out / 'summary.json'}; {summary['total_seconds']} s in all"
    )
    return 0


def _reconstructions(bundle_dir: Path, algorithm: dict, faces: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """What the generator makes of each face before mixing, with the server's inversion settings."""
    from anonymixer.config import ProtectConfig
    from anonymixer.protect import Protector

    start = time.perf_counter()
    model = bundle.load(bundle_dir)
    protector = Protector(model, ProtectConfig.from_dict({**model.config.get("algorithm", {}), **algorithm}))
    images = protector.render(protector.invert(faces))
    return images, time.perf_counter() - start


def _execution_stats(url: str) -> dict:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics("anonymixer", as_json=True)["model_stats"][0]
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymixer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "start the embedded Triton server"), ("demo", "protect sample faces end to end")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--profile",
            choices=profiles.PROFILES,
            default="mobile1024" if name == "demo" else "tiny",
            help="demo: mobile1024 (real weights; tiny if MobileFaceNet cannot be had); serve: tiny",
        )
        p.add_argument(
            "--weights",
            help="folder with the downloaded files: ffhq1024's official ones, mobile1024's mobilefacenet.pt",
        )
        p.add_argument(
            "--generator-ir",
            help="mobile1024: folder with the MobileStyleGAN IR files (default: the random-face wheel)",
        )
        p.add_argument("--gpu", action="store_true", help="run the models on GPU 0 (KIND_GPU instances)")
        p.add_argument(
            "--stages-via",
            choices=("bls", "torch"),
            default="bls",
            help="the gradient-free stages: BLS calls to the ONNX network models (default), or in-process in "
            "PyTorch (a GPU without onnxruntime-gpu)",
        )
    s = sub.choices["serve"]
    s.add_argument("--repository", help="serve this repository instead of building one")
    s.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--health-port", type=int, default=8003, help="the supervisor's /health/ready and /health/live")
    s.add_argument("--ready-timeout", type=float, default=600.0)
    s.add_argument("--log-file", default=None, help="Triton's log (default: tritonserver.log beside the repository)")
    s.add_argument("--tritonserver", default=None, help="an installed tritonserver (default: nvidia-pytriton's)")
    s.add_argument(
        "--triton-arg", action="append", default=[], help="one more tritonserver flag (--triton-arg=--log-verbose=1)"
    )
    s.add_argument("--tls-cert", help="PEM certificate of the server: gRPC with TLS")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--tls-ca", help="PEM CA: mutual TLS, only clients with a certificate it signed get in")
    s.add_argument("--api-key-file", help="a file holding the deployment's API key: inference needs header api-key")
    defaults = SupervisorSettings()
    s.add_argument("--probe-interval", type=float, default=defaults.probe_interval_s, help="seconds between probes")
    s.add_argument(
        "--probe-timeout",
        type=float,
        default=defaults.probe_timeout_s,
        help="a probe not answered within this marks the model wedged (it waits behind real work)",
    )
    s.add_argument("--max-restarts", type=int, default=defaults.max_restarts, help="per model within --restart-window")
    s.add_argument("--restart-window", type=float, default=defaults.restart_window_s)
    s.set_defaults(run=serve)
    d = sub.choices["demo"]
    d.add_argument("--faces", nargs="*", default=[], help="photos or folders whose largest face is protected")
    d.add_argument(
        "--pair", nargs="*", default=[], help="two photos of one person: shows that one key gives them one new identity"
    )
    d.add_argument("--scenes", nargs="*", default=[], help="whole photos for scene mode (default: the --faces photos)")
    d.add_argument("--limit", type=int, default=3, help="at most this many --faces files (default 3)")
    d.add_argument(
        "--keys",
        nargs="+",
        default=list(DEMO_KEYS),
        help="keys, one column each (demo only: command-line keys are visible to other users)",
    )
    d.add_argument("--steps", type=int, default=None, help="refinement steps (default: the server's)")
    d.add_argument("--out", default="out/demo")
    d.set_defaults(run=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""``anonymixer demo``: sample faces and whole photos protected end to end by the embedded server.

1. **Settings**: the profile's bundle and its Triton repository come from the build cache
   (:mod:`exporter.cache`), at the service's own settings (``--steps`` overrides the refinement's,
   printed).
2. **Faces**: the largest face of each sample photo, aligned to the bundle's framing.
3. **The service**: the embedded Triton server on free loopback ports, spoken to only through the
   client library, as any pipeline would: every face under every key in one ``protect`` call (so
   each face is inverted once for all its keys), then each scene photo under the first key.
4. **Reconstructions**: what the generator makes of each face before mixing, rendered in-process
   after the server stops (the service never returns a latent).
5. **Outputs** (:mod:`apps.demo_report`): ``before_after.png``, ``scenes/<photo>.png``,
   ``summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from anonymixer import bundle
from anonymixer.config import Overrides, Settings, resolve_settings
from anonymixer.face_detection import FaceDetector
from anonymixer.samples import aligned_face, builtin_photos, photos_from
from apps.demo_report import Served, write_outputs
from exporter.cache import cached_bundle, cached_repository
from optimizer_backend.serve import print_notice
from optimizer_backend.server import EmbeddedTritonServer

DEMO_KEYS = ("demo key A", "demo key B")
DEMO_TIMEOUT_S = 1800.0  # one request of every face under every key took 124 s on 2 cores (mobile1024)
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


def demo_overrides(steps: int | None) -> list[Overrides]:
    """The demo's named override of the service's settings: ``--steps``, when given."""
    return [] if steps is None else [Overrides("--steps", {"steps": steps})]


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


def protect_through_the_service(
    url: str, faces: list[np.ndarray], scene_photos: list[np.ndarray], keys: list[str], steps: int | None
) -> Served:
    """Every face under every key in one call, then each scene photo under the first key."""
    try:
        from anonymixer_client import AnonymixerClient
    except ImportError:
        raise SystemExit("the demo talks to the service through the client library: pip install ./client") from None

    # one request at a time, as a single user's pipeline sends them; the deadline covers a CPU's minutes
    with AnonymixerClient(url, timeout_s=DEMO_TIMEOUT_S, max_concurrency=1) as client:
        start = time.perf_counter()
        protected = client.protect(faces * len(keys), [key for key in keys for _ in faces], steps=steps)
        protect_seconds = time.perf_counter() - start
        print(f"scene mode: {len(scene_photos)} whole photo(s) with key 1 …", file=sys.stderr)
        scenes, scene_seconds = [], []
        for photo in scene_photos:
            start = time.perf_counter()
            scenes.append(client.protect_scene(photo, keys[0], steps=steps))
            scene_seconds.append(time.perf_counter() - start)
        stats = client.statistics()
    n = len(faces)
    return Served(
        faces=[protected[i * n : (i + 1) * n] for i in range(len(keys))],
        protect_seconds=protect_seconds,
        scenes=scenes,
        scene_seconds=scene_seconds,
        statistics={"inference_count": stats.inference_count, "execution_count": stats.execution_count},
    )


def reconstructions(bundle_dir: Path, settings: Settings, faces: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """What the generator makes of each face before mixing, with the server's inversion settings."""
    from anonymixer.protect import Protector

    start = time.perf_counter()
    protector = Protector(bundle.load(bundle_dir), settings.config)
    images = protector.render(protector.invert(faces))
    return images, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    profile, weights = demo_weights(args.profile, args.weights)
    bundle_dir = cached_bundle(profile, weights, generator_ir=args.generator_ir)
    config = bundle.read_config(bundle_dir)
    overrides = demo_overrides(args.steps)
    settings = resolve_settings(config, *overrides)
    print(f"settings: {settings.describe()}", file=sys.stderr)
    merged = {k: v for layer in overrides for k, v in layer.values.items()}
    repository = cached_repository(
        bundle_dir, gpu=args.gpu, algorithm=json.dumps(merged, sort_keys=True), stages_via=args.stages_via
    )
    print_notice(repository)
    faces = demo_faces(args, FaceDetector(), bundle.config_framing(config))
    scene_photos = photos_from(args.scenes, args.limit) if args.scenes else photos_from(args.faces, args.limit)
    scene_photos = scene_photos or builtin_photos()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if profile == "tiny":
        print(
            "Using the built-in tiny bundle: seeded random weights, so protected faces are structured noise. "
            "For real faces: --profile mobile1024 (MobileFaceNet from ../shared or a download).",
            file=sys.stderr,
        )
    originals = [face for _, face in faces]
    with EmbeddedTritonServer(repository, log_file=out / "tritonserver.log") as server:
        ready = time.perf_counter() - start
        print(
            f"server ready in {ready:.1f} s (gRPC {server.grpc_url}); protecting {len(faces)} face(s) "
            f"with {len(args.keys)} key(s) …",
            file=sys.stderr,
        )
        served = protect_through_the_service(
            server.grpc_url, originals, [photo for _, photo in scene_photos], args.keys, args.steps
        )
    print("reconstructions (the inversion the server ran, rendered here) …", file=sys.stderr)
    rebuilt, rebuilt_seconds = reconstructions(bundle_dir, settings, originals)
    context = {
        "profile": profile,
        "bundle": str(bundle_dir),
        "repository": str(repository),
        "settings": dataclasses.asdict(settings.config),
        "reconstruction_seconds": round(rebuilt_seconds, 1),
    }
    write_outputs(out, context, faces, rebuilt, scene_photos, served, args.pair, start)
    return 0

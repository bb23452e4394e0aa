"""Peak memory of scene mode on one large photo, in-process: shrink, detect, plan, compose (README, "Scene mode").

A synthetic photo of ``--pixels`` (default 40 M, the ``anonymixer_scene`` model's limit) is made by
upscaling ``--photo`` (a real photo with faces, e.g. ../shared's couple.jpg). A fresh interpreter
then loads it and runs the scene pipeline: shrink_for_detection → FaceDetector.detect on the small
photo → plan_faces → compose, the protected faces being the aligned faces themselves (real data at
the frame's size; no generator runs). Peak RSS is read per stage from the kernel's high-water mark
(VmHWM, reset before each stage through /proc/self/clear_refs), so the figures are the process's
real peaks, allocator and all; memory a stage frees but the allocator keeps shows in the next
stage's ``rss_before_mb``.

    python -m benchmarks.scene_memory --photo ../shared/data/faces/couple.jpg --label after

``--label`` names the run inside the record: the record keeps the other labels' figures, so a
``before`` run on the previous commit and an ``after`` run share one file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.machine import results_dir, save_record

MB = 2**20


def read_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))  # type: ignore[union-attr]


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def synthetic_photo(source: Path, pixels: int) -> np.ndarray:
    """``source`` upscaled (bicubic) to about ``pixels`` pixels, its aspect ratio kept."""
    image = Image.open(source).convert("RGB")
    scale = (pixels / (image.width * image.height)) ** 0.5
    size = (int(image.width * scale), int(image.height * scale))
    return np.asarray(image.resize(size, Image.BICUBIC))


def measure(photo_file: Path) -> dict[str, Any]:
    """The stages on the photo in ``photo_file`` (.npy), in this process: RSS in MB, seconds."""
    import torch

    from anonymixer.face_detection import FaceDetector, shrink_for_detection
    from anonymixer.keys import SecretKey
    from anonymixer.scene import SceneConfig, compose, plan_faces, to_protect

    torch.set_grad_enabled(False)
    detector, config = FaceDetector(), SceneConfig()
    photo = np.load(photo_file)
    baseline = read_kib("VmRSS") / 1024
    stages: dict[str, dict[str, float]] = {}

    def stage(name: str, run: Any) -> Any:
        reset_peak()
        before, start = read_kib("VmRSS") / 1024, time.perf_counter()
        out = run()
        peak = read_kib("VmHWM") / 1024
        stages[name] = {
            "rss_before_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1),
            "peak_increase_mb": round(peak - before, 1),
            "seconds": round(time.perf_counter() - start, 2),
        }
        return out

    # As the anonymixer_scene model does: it shrinks the photo, the face_detector model (another
    # process in Triton) sees only the small one.
    small, scale = stage("shrink", lambda: shrink_for_detection(photo, config.detect_max_side))
    detections = stage("detect", lambda: detector.detect(small))
    detections[:, :4] /= scale
    detections[:, 5:] /= scale
    faces = stage("plan", lambda: plan_faces(photo, detections, SecretKey(b"memory benchmark"), config))
    chosen = to_protect(faces)
    result = stage("compose", lambda: compose(photo, faces, [f.aligned for f in chosen], config))
    peak = max(s["peak_rss_mb"] for s in stages.values())
    return {
        "photo": list(photo.shape),
        "photo_mb": round(photo.nbytes / MB, 1),
        "faces_protected": len(chosen),
        "face_sides_px": [round(float(min(r[2] - r[0], r[3] - r[1]))) for r in detections],
        "baseline_rss_mb": round(baseline, 1),  # interpreter, torch, MTCNN and the photo
        "peak_rss_mb": peak,
        "peak_over_baseline_mb": round(peak - baseline, 1),
        "stages": stages,
        "changed_pixels": int((result != photo).any(axis=2).sum()),
    }


def code_version() -> str:
    """The commit of the ``anonymixer`` package measured (``+dirty`` with uncommitted changes)."""
    import anonymixer

    folder = Path(anonymixer.__file__).parent
    git = ["git", "-C", str(folder)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, help="a real photo with faces, upscaled to --pixels")
    parser.add_argument("--pixels", type=int, default=40_000_000)
    parser.add_argument("--label", default="run", help="the run's name in the record (e.g. before, after)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<date>-<machine>/")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child: a saved photo to measure
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return
    if args.photo is None:
        parser.error("--photo is required")
    with tempfile.TemporaryDirectory() as tmp:
        photo_file = Path(tmp) / "photo.npy"
        np.save(photo_file, synthetic_photo(args.photo, args.pixels))
        # A fresh interpreter: building the photo must not leave its peak or its freed heap behind.
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.scene_memory", "--measure", str(photo_file)],
            capture_output=True,
            text=True,
            check=True,
        )
    figures = {"code": code_version(), **json.loads(child.stdout.splitlines()[-1])}
    print(json.dumps(figures, indent=2))
    out = args.out or results_dir() / "scene_memory.json"
    results = json.loads(out.read_text())["results"] if out.exists() else {}
    results[args.label] = figures
    save_record(
        out,
        "scene_memory",
        results,
        source_photo=args.photo.name,
        pixels=args.pixels,
        pipeline="shrink_for_detection → FaceDetector.detect (small photo) → plan_faces → compose",
        protected_faces="the aligned faces themselves",
        scene_config="SceneConfig() defaults",
    )


if __name__ == "__main__":
    main()

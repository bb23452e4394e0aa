"""Sample faces for the demo: the built-in portrait and pictures from files or folders.

Until scene mode brings face detection and alignment, a photo is centre-cropped to a square and
resized: a stand-in for alignment, good enough to exercise the service.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from anonymixer.images import center_square, open_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The face of the public-domain NASA portrait that scikit-image ships as ``astronaut.png``.
ASTRONAUT_FACE_BOX = (150, 20, 330, 200)
ALIGNED = 256


def builtin_faces() -> list[tuple[str, Image.Image]]:
    """The astronaut portrait shipped inside the scikit-image wheel (empty if it is not installed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return []
    path = Path(spec.origin).parent / "data" / "astronaut.png"
    return [("astronaut", open_rgb(path).crop(ASTRONAUT_FACE_BOX))]


def faces_from(paths: list[str], limit: int) -> list[tuple[str, Image.Image]]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"--faces: {p} does not exist")
    return [(f.stem, center_square(open_rgb(f))) for f in files[:limit]]


def aligned(face: Image.Image) -> np.ndarray:
    return np.asarray(face.resize((ALIGNED, ALIGNED), Image.BICUBIC))

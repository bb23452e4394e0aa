"""Sample photos for the demo: the built-in portrait and pictures from files or folders, and their
faces aligned the way the service aligns them (MTCNN landmarks → the bundle's 256 px template); and faces
drawn by a bundle's generator from seeded z (what its weights can render)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anonymixer.bundle import Bundle
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import open_rgb
from anonymixer.networks.stylegan2 import truncate
from anonymixer.scene import align_face
from anonymixer.seeded_init import seeded_draw

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def builtin_photos() -> list[tuple[str, np.ndarray]]:
    """The NASA astronaut portrait (public domain) that ships inside the scikit-image wheel
    (empty if scikit-image is not installed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return []
    return [("astronaut", np.asarray(open_rgb(Path(spec.origin).parent / "data" / "astronaut.png")))]


def photos_from(paths: list[str], limit: int) -> list[tuple[str, np.ndarray]]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"{p} does not exist")
    return [(f.stem, np.asarray(open_rgb(f))) for f in files[:limit]]


def aligned_face(photo: np.ndarray, detector: FaceDetector, *, framing: str, size: int = 256) -> np.ndarray | None:
    """The largest face of ``photo`` aligned to ``framing``'s template (uint8 [size, size, 3]), or None."""
    rows = detector.detect(photo)
    if not len(rows):
        return None
    return align_face(photo, largest_face(rows), size, framing)[0]


@torch.no_grad()
def generated_faces(model: Bundle, count: int, *, psi: float, seed: int = 0) -> torch.Tensor:
    """``count`` faces [count, 3, R, R] in [-1, 1] from portable seeded z, truncated by ``psi`` toward w_avg."""
    z = torch.from_numpy(seeded_draw("generated_faces.z", seed, (count, model.style_dim))).float()
    w = truncate(model.generator.mapping(z.to(model.w_avg.device)), model.w_avg, psi)
    # One at a time: a 1024 px render holds hundreds of MB of activations.
    faces = [model.generator.synthesis(w[i : i + 1]).clamp(-1, 1) for i in tqdm(range(count), desc="faces")]
    return torch.cat(faces)

"""What the real-weight benchmarks measure on a face: the independent dlib matcher
(:class:`evaluation.matchers.DlibMatcher`: distance > 0.6 is a different person, dlib's own
threshold), MTCNN landmarks normalised by the inter-ocular distance, pixel error and the loss
network's cosine."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anonymixer.bundle import Bundle
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import open_rgb, to_uint8
from anonymixer.losses import fr_crop, resize
from anonymixer.samples import aligned_face
from evaluation.matchers import as_unit

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
MOBILEFACENET = FACES.parents[1] / "weights" / "mobilefacenet" / "mobilefacenet.pt"
MEASURE_SIZE = 256


@dataclass
class Photo:
    name: str
    person: str
    aligned: np.ndarray  # uint8 [256, 256, 3]


def labelled_photos(framing: str, detector: FaceDetector, per_person: int = 99) -> list[Photo]:
    """The single-person photos of ../shared/data/faces, aligned with ``framing``, at most
    ``per_person`` per identity, in the CSV's order."""
    photos, seen = [], {}
    for row in csv.DictReader((FACES / "identities.csv").open()):
        if seen.get(row["identity"], 0) >= per_person:
            continue
        face = aligned_face(np.asarray(open_rgb(FACES / row["file"])), detector, framing=framing, size=MEASURE_SIZE)
        if face is None:
            continue
        seen[row["identity"]] = seen.get(row["identity"], 0) + 1
        photos.append(Photo(Path(row["file"]).stem, row["identity"], face))
    return photos


def to_256(images: torch.Tensor) -> np.ndarray:
    """[B, 3, R, R] in [-1, 1] → uint8 [B, 256, 256, 3] (area downscale, as the losses see them)."""
    return to_uint8(resize(images.float(), MEASURE_SIZE))


def landmarks(detector: FaceDetector, image: np.ndarray) -> np.ndarray | None:
    rows = detector.detect(image)
    return None if not len(rows) else largest_face(rows)[5:].reshape(5, 2)


def landmark_shift(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Mean 5-point displacement over the inter-ocular distance of ``a`` (nan if a face is missing)."""
    if a is None or b is None:
        return float("nan")
    return float(np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(a[1] - a[0]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@torch.no_grad()
def embeddings(model: Bundle, images: np.ndarray) -> torch.Tensor:
    """The loss network's templates of uint8 aligned faces [B, 256, 256, 3] (the losses' crop)."""
    return model.face_embedder(fr_crop(as_unit(images))).float()


def outside_face_change(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute pixel change (0–255) where ``mask`` [256, 256] is False: hair, background."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    return float(diff[~mask].mean())


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")

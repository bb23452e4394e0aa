"""Scene mode: a whole photo in, every face protected (or blurred) in place (DESIGN §4, §5).

    detections = detector.detect(photo)                      # [N, 15]
    faces = plan_faces(photo, detections, key, config)       # aligned crops, transforms, actions
    protected = protect([f.aligned for f in to_protect(faces)], [f.key for f in to_protect(faces)])
    result = compose(photo, faces, protected, config)        # paste back, blur small faces

:func:`protect_photo` does all four for one photo. ``protect`` is any callable from aligned uint8
faces and keys to protected uint8 faces: the in-process :class:`~anonymixer.protect.Protector`,
or the Triton scene model's calls to the ``anonymixer`` model. This module knows nothing of Triton.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anonymixer.alignment import E4E_FRAMING, FRAMINGS, apply, framing_template, template_transform, warp_photo
from anonymixer.config import config_from_dict
from anonymixer.face_region import turn_of
from anonymixer.keys import SecretKey
from anonymixer.paste_back import BLENDS, FaceMask, PasteBack, blended_face, blur_face, paste_face

SMALL_FACE_ACTIONS = ("blur", "keep")
FACE_KEY_MODES = ("per_face", "shared")
FACE_KEY_INFO = b"anonymixer/v1/scene-face/"

Protect = Callable[[list[np.ndarray], list[SecretKey]], list[np.ndarray]]


@dataclass(frozen=True)
class SceneConfig:
    """Scene settings; the ``anonymixer_scene`` model's ``scene`` parameter (JSON) overrides them."""

    min_face: int = 40  # faces whose box is smaller (shorter side, px) are not protected …
    small_faces: str = "blur"  # … but blurred ("blur") or left as they are ("keep")
    max_faces: int = 16  # at most this many faces (the largest) are protected per photo; the rest as small ones
    # "per_face": face i (left to right) gets the key HMAC(key, "anonymixer/v1/scene-face/i"), so the
    # people of one photo get different synthetic identities; "shared": every face gets the key itself.
    face_keys: str = "per_face"
    aligned_size: int = 256  # the aligned frame's size (DESIGN §5)
    # the template faces are aligned to (alignment.FRAMINGS); the repository sets the bundle's
    framing: str = E4E_FRAMING
    detect_max_side: int = 1600  # photos go to the detector downscaled to this long side
    # the generated skin's colour made the photo's (L*a*b* over a ring of skin), its light and its grain
    colour_match: bool = True
    blend: str = "laplacian"  # paste_back.BLENDS; chosen by benchmarks/paste_back_quality.py (docs/scene-mode.md)
    # the outer bound of what is pasted, given in the e4e frame; moved to ``framing``
    mask: FaceMask = field(default_factory=FaceMask)

    def __post_init__(self) -> None:
        problems = []
        if self.small_faces not in SMALL_FACE_ACTIONS:
            problems.append(f"small_faces must be one of {SMALL_FACE_ACTIONS}")
        if self.face_keys not in FACE_KEY_MODES:
            problems.append(f"face_keys must be one of {FACE_KEY_MODES}")
        if self.blend not in BLENDS:
            problems.append(f"blend must be one of {BLENDS}")
        if self.framing not in FRAMINGS:
            problems.append(f"framing must be one of {sorted(FRAMINGS)}")
        if self.min_face < 1 or self.max_faces < 0 or self.aligned_size < 16:
            problems.append("min_face must be ≥ 1, max_faces ≥ 0, aligned_size ≥ 16")
        if problems:
            raise ValueError("invalid scene config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SceneConfig:
        return config_from_dict(cls, values)

    @property
    def face_mask(self) -> FaceMask:
        """The paste-back bound in this config's aligned frame."""
        return self.mask.reframed(self.framing)

    @property
    def paste_back(self) -> PasteBack:
        return PasteBack(self.face_mask, framing_template(self.framing), self.colour_match, self.blend)


@dataclass
class SceneFace:
    detection: np.ndarray  # float32 [15]: box, score, landmarks (photo pixels)
    action: str  # "protected" | "blurred" | "kept"
    matrix: np.ndarray | None = None  # photo → aligned frame, for faces to protect
    aligned: np.ndarray | None = None  # uint8 [S, S, 3], what is sent for protection
    key: SecretKey | None = field(default=None, repr=False)


@dataclass
class SceneResult:
    image: np.ndarray  # uint8 [H, W, 3]
    faces: list[SceneFace]


def face_key(key: SecretKey, index: int) -> SecretKey:
    return SecretKey(hmac.new(key.reveal(), FACE_KEY_INFO + str(index).encode(), hashlib.sha256).digest())


def align_face(photo: np.ndarray, detection: np.ndarray, size: int, framing: str) -> tuple[np.ndarray, np.ndarray]:
    """A detected face of ``photo`` (uint8 [H, W, 3]) aligned to ``framing``'s template: uint8
    [size, size, 3] and its photo → aligned transform."""
    matrix = template_transform(detection[5:].reshape(5, 2), framing_template(framing), size, 256)
    return np.clip(np.round(warp_photo(photo, matrix, size, size)), 0, 255).astype(np.uint8), matrix


def plan_faces(photo: np.ndarray, detections: np.ndarray, key: SecretKey, config: SceneConfig) -> list[SceneFace]:
    """Decide each detected face's fate; align the ones to protect (in detection order)."""
    sides = np.minimum(detections[:, 2] - detections[:, 0], detections[:, 3] - detections[:, 1])
    large = np.flatnonzero(sides >= config.min_face)
    chosen = set(large[np.argsort(-sides[large], kind="stable")][: config.max_faces].tolist())
    small_action = "blurred" if config.small_faces == "blur" else "kept"
    faces = []
    for i, row in enumerate(detections):
        if i not in chosen:
            faces.append(SceneFace(row, small_action))
            continue
        aligned, matrix = align_face(photo, row, config.aligned_size, config.framing)
        index = sum(1 for j in chosen if j < i)
        own = face_key(key, index) if config.face_keys == "per_face" else key
        faces.append(SceneFace(row, "protected", matrix, aligned, own))
    return faces


def to_protect(faces: Sequence[SceneFace]) -> list[SceneFace]:
    return [f for f in faces if f.action == "protected"]


def compose(
    photo: np.ndarray, faces: Sequence[SceneFace], protected: Sequence[np.ndarray], config: SceneConfig
) -> np.ndarray:
    """The photo with each protected face pasted back and each small face blurred (a new array)."""
    out = photo.copy()
    chosen, how = to_protect(faces), config.paste_back
    if len(chosen) != len(protected):
        raise ValueError(f"{len(chosen)} faces to protect but {len(protected)} protected faces")
    for face, image in zip(chosen, protected, strict=True):
        assert face.matrix is not None and face.aligned is not None
        # Each face reads the photo as it was: a neighbour's pasted face is not its background.
        turn = turn_of(apply(face.matrix, face.detection[5:].reshape(5, 2).astype(np.float64)))
        content, alpha, grain = blended_face(photo, face.aligned, image, face.matrix, config.aligned_size, how, turn)
        paste_face(out, content, alpha, face.matrix, config.aligned_size, grain)
    for face in faces:
        if face.action == "blurred":
            blur_face(out, face.detection)
    return out


def protect_photo(
    photo: np.ndarray,
    key: SecretKey | bytes | str,
    detect: Callable[[np.ndarray], np.ndarray],
    protect: Protect,
    config: SceneConfig | None = None,
) -> SceneResult:
    config = config or SceneConfig()
    faces = plan_faces(photo, detect(photo), SecretKey.of(key), config)
    chosen = to_protect(faces)
    protected = protect([f.aligned for f in chosen], [f.key for f in chosen]) if chosen else []  # type: ignore[misc]
    return SceneResult(compose(photo, faces, protected, config), faces)

"""Alignment, paste-back and scene planning in-process (no server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymixer.alignment import E4E_TEMPLATE_256, apply, invert, map_pixels, similarity_transform, warp
from anonymixer.face_detection import FaceDetector
from anonymixer.images import open_rgb
from anonymixer.keys import SecretKey
from anonymixer.paste_back import FaceMask, blur_face, colour_shift
from anonymixer.samples import builtin_photos
from anonymixer.scene import SceneConfig, face_key, plan_faces, protect_photo, to_protect
from tests.conftest import FACES

KEY = SecretKey(b"scene test key")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """couple.jpg (two faces) when ../shared is there, else the built-in portrait."""
    path = FACES / "couple.jpg"
    return np.asarray(open_rgb(path)) if path.exists() else builtin_photos()[0][1]


def mask_alpha(shape: tuple[int, ...], matrix: np.ndarray, mask: FaceMask, size: int = 256) -> np.ndarray:
    """The mask at every pixel of the photo (computed here over the whole photo, not its footprint)."""
    uv = map_pixels(matrix, 0, 0, shape[1], shape[0])
    return mask.alpha(uv[..., 0], uv[..., 1], size)


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([12.5, -4.0])
    truth = np.array([[scale * np.cos(angle), -scale * np.sin(angle)], [scale * np.sin(angle), scale * np.cos(angle)]])
    truth = np.hstack([truth, shift[:, None]])
    moved = apply(truth, E4E_TEMPLATE_256)
    found = similarity_transform(E4E_TEMPLATE_256, moved)
    assert np.allclose(found, truth, atol=1e-9)
    assert np.allclose(apply(invert(found), moved), E4E_TEMPLATE_256, atol=1e-9)
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(E4E_TEMPLATE_256, moved[:3])


def test_warp_follows_the_cv2_convention() -> None:
    image = torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(3, 20, 30)
    shift = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, -3.0]])  # input (x, y) → output (x − 5, y − 3)
    out = warp(image, shift, 10, 12)
    assert torch.allclose(out, image[:, 3:13, 5:17], atol=1e-3)  # float32 grid normalisation


def test_paste_back_leaves_everything_outside_the_masks_untouched(photo: np.ndarray, detector: FaceDetector) -> None:
    rng = np.random.default_rng(0)

    def noise(faces: list[np.ndarray], keys: list[SecretKey]) -> list[np.ndarray]:
        return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in faces]

    config = SceneConfig()
    result = protect_photo(photo, KEY, detector.detect, noise, config)
    assert [f.action for f in result.faces] == ["protected"] * len(result.faces) and result.faces
    outside = np.ones(photo.shape[:2], bool)
    for face in to_protect(result.faces):
        alpha = mask_alpha(photo.shape, face.matrix, config.mask)
        outside &= alpha == 0
        assert (np.abs(result.image.astype(int) - photo)[alpha > 0.99].mean()) > 20  # the face did change
    assert np.array_equal(result.image[outside], photo[outside])
    assert not np.array_equal(result.image, photo)


def test_identity_round_trip_reproduces_the_photo(photo: np.ndarray, detector: FaceDetector) -> None:
    def identity(faces: list[np.ndarray], keys: list[SecretKey]) -> list[np.ndarray]:
        return faces

    result = protect_photo(photo, KEY, detector.detect, identity, SceneConfig(colour_match=False))
    error = np.abs(result.image.astype(int) - photo).max(axis=2)
    inside = np.zeros(photo.shape[:2], bool)
    for face in to_protect(result.faces):
        inside |= mask_alpha(photo.shape, face.matrix, SceneConfig().mask) > 0
    print(f"round trip inside the masks: mean {error[inside].mean():.2f}, p99 {np.percentile(error[inside], 99)}")
    assert error[inside].mean() < 3 and np.percentile(error[inside], 99) <= 24  # two bilinear resamplings
    assert error[~inside].max() == 0


def test_colour_shift_measures_an_offset_on_the_rim() -> None:
    rng = np.random.default_rng(1)
    original = rng.integers(60, 190, (256, 256, 3), dtype=np.uint8)
    darker = np.clip(original.astype(int) - np.array([30, 10, 0]), 0, 255).astype(np.uint8)
    shift = colour_shift(darker[::4, ::4], original, FaceMask())  # a 64 px face, as the tiny bundle gives
    assert np.allclose(shift, [30, 10, 0], atol=3)


def test_small_faces_are_blurred_or_kept(photo: np.ndarray, detector: FaceDetector) -> None:
    detections = detector.detect(photo)
    side = float(np.minimum(detections[:, 2] - detections[:, 0], detections[:, 3] - detections[:, 1]).max())
    for small, action in (("blur", "blurred"), ("keep", "kept")):
        config = SceneConfig(min_face=int(side) + 1, small_faces=small)
        faces = plan_faces(photo, detections, KEY, config)
        assert [f.action for f in faces] == [action] * len(detections) and not to_protect(faces)
    blurred = photo.copy()
    blur_face(blurred, detections[0])
    x1, y1, x2, y2 = detections[0, :4].astype(int)
    changed = np.abs(blurred.astype(int) - photo).max(axis=2) > 0
    assert changed[y1:y2, x1:x2].mean() > 0.5
    changed[max(y1 - (y2 - y1), 0) : y2 + (y2 - y1), max(x1 - (x2 - x1), 0) : x2 + (x2 - x1)] = False
    assert not changed.any()  # nothing far from the face moved
    detail = np.abs(np.diff(blurred[y1:y2, x1:x2].astype(float), axis=1)).mean()
    assert detail < 0.5 * np.abs(np.diff(photo[y1:y2, x1:x2].astype(float), axis=1)).mean()


def test_face_keys_and_the_face_limit(photo: np.ndarray, detector: FaceDetector) -> None:
    detections = detector.detect(photo)
    per_face = to_protect(plan_faces(photo, detections, KEY, SceneConfig()))
    assert [f.key for f in per_face] == [face_key(KEY, i) for i in range(len(per_face))]
    assert len({f.key.reveal() for f in per_face}) == len(per_face) and KEY not in [f.key for f in per_face]
    shared = to_protect(plan_faces(photo, detections, KEY, SceneConfig(face_keys="shared")))
    assert all(f.key == KEY for f in shared)
    limited = plan_faces(photo, detections, KEY, SceneConfig(max_faces=1))
    assert sorted(f.action for f in limited) == ["blurred"] * (len(detections) - 1) + ["protected"]


def test_scene_config_from_json_objects() -> None:
    config = SceneConfig.from_dict({"min_face": 64, "mask": {"axes": [90, 110], "feather": 0.2}})
    assert config.min_face == 64 and config.mask == FaceMask(axes=(90.0, 110.0), feather=0.2)
    with pytest.raises(ValueError, match=r"unknown FaceMask key\(s\) \['mask\.radius'\]"):
        SceneConfig.from_dict({"mask": {"radius": 3}})
    with pytest.raises(ValueError, match="small_faces must be one of"):
        SceneConfig.from_dict({"small_faces": "pixelate"})


def test_the_ffhq_framing_and_its_mask(photo: np.ndarray, detector: FaceDetector) -> None:
    """Faces aligned with the FFHQ template land on it, and the paste-back mask moves with the
    framing: it covers the same part of the face as on e4e-framed faces."""
    from anonymixer.alignment import FFHQ_TEMPLATE_256, reframe

    planned = plan_faces(photo, detector.detect(photo), SecretKey(b"k"), SceneConfig(framing="ffhq"))
    for face in to_protect(planned):
        aligned = apply(face.matrix, face.detection[5:].reshape(5, 2).astype(np.float64))
        # least squares with a free shift puts the centroids together; a turned head moves the nose
        np.testing.assert_allclose(aligned.mean(0), FFHQ_TEMPLATE_256.mean(0), atol=1e-3)
        eyes = np.linalg.norm(aligned[1] - aligned[0])
        assert 0.85 < eyes / np.linalg.norm(FFHQ_TEMPLATE_256[1] - FFHQ_TEMPLATE_256[0]) < 1.15
    same = FaceMask().reframed("e4e")
    assert same.center == pytest.approx(FaceMask().center) and same.axes == pytest.approx(FaceMask().axes)
    np.testing.assert_allclose(
        apply(reframe("ffhq"), E4E_TEMPLATE_256), FFHQ_TEMPLATE_256, atol=6.0
    )  # shapes differ a little
    e4e, ffhq = FaceMask(), FaceMask().reframed("ffhq")
    for point_e4e, point_ffhq in zip(E4E_TEMPLATE_256, apply(reframe("ffhq"), E4E_TEMPLATE_256), strict=True):
        assert e4e.alpha(*point_e4e, 256) == pytest.approx(ffhq.alpha(*point_ffhq, 256), abs=1e-6)
    assert ffhq.axes[0] < 0.65 * e4e.axes[0]  # eyes 64.5 px apart instead of 109
    with pytest.raises(ValueError, match="framing must be one of"):
        SceneConfig(framing="square")

"""Alignment, paste-back and scene planning in-process (no server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from anonymixer import paste_back
from anonymixer.alignment import (
    E4E_TEMPLATE_256,
    align,
    apply,
    framing_template,
    invert,
    map_pixels,
    similarity_transform,
    warp,
)
from anonymixer.face_detection import FaceDetector, shrink_for_detection
from anonymixer.images import open_rgb
from anonymixer.keys import SecretKey
from anonymixer.paste_back import (
    FaceMask,
    blend,
    blended_face,
    blur_face,
    footprint,
    mask_box,
    paste_face,
    pixels_per_photo_pixel,
    soft_edge,
    strips,
)
from anonymixer.samples import builtin_photos
from anonymixer.scene import SceneConfig, align_face, compose, face_key, plan_faces, protect_photo, to_protect
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
        outside &= mask_alpha(photo.shape, face.matrix, config.mask) == 0
        # eyes, nose and mouth (the landmarks' hull, shrunk) are always replaced
        marks = face.detection[5:].reshape(5, 2)
        centre = marks.mean(0)
        for point in centre + 0.6 * (marks - centre):
            x, y = np.round(point).astype(int)
            patch = (slice(y - 2, y + 3), slice(x - 2, x + 3))
            assert np.abs(result.image[patch].astype(int) - photo[patch]).mean() > 8  # noise, toned as skin
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


def peak_increase_mb(run: Callable[[], Any]) -> float:
    """How far this process's peak RSS rises above its current RSS while ``run`` runs (Linux)."""

    def kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith(field + ":")))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) restarts from the current RSS
    before = kib("VmRSS")
    run()
    return (kib("VmHWM") - before) / 1024


def test_shrinking_for_detection_is_area_interpolation_without_a_float_photo(photo: np.ndarray) -> None:
    for side in (1000, 701):  # whole and fractional cells
        small, scale = shrink_for_detection(photo, side)
        image = torch.tensor(photo).permute(2, 0, 1)[None].float()
        reference = F.interpolate(image, size=small.shape[:2], mode="area")[0].round().permute(1, 2, 0).numpy()
        assert max(small.shape) == side and scale == side / max(photo.shape[:2])
        assert np.abs(small.astype(int) - reference).max() <= 1
    wide = np.zeros((16, 100_000, 3), np.uint8)  # the short side rounds below one pixel
    assert shrink_for_detection(wide, 1600)[0].shape == (1, 1600, 3) and len(FaceDetector().detect(wide)) == 0


def test_alignment_reads_the_uint8_photo_like_the_float_warp(photo: np.ndarray, detector: FaceDetector) -> None:
    detections = detector.detect(photo)
    cut = np.ascontiguousarray(photo[:, int(detections[0, 0] + 0.4 * (detections[0, 2] - detections[0, 0])) :])
    outside = 0
    for image in (photo, cut):
        reference_image = torch.tensor(image).permute(2, 0, 1).float()
        for row in detector.detect(image):
            for framing in ("e4e", "ffhq"):
                aligned, matrix = align_face(image, row, 256, framing)
                expected = align(reference_image, row[5:].reshape(5, 2), framing_template(framing), 256, 256)[0]
                expected = expected.round().clamp(0, 255).permute(1, 2, 0).numpy()
                assert np.abs(aligned.astype(int) - expected).max() <= 1
                corners = apply(invert(matrix), np.array([[0, 0], [255, 255]]))
                outside += bool(corners.min() < 0 or (corners.max(0) > np.array(image.shape[1::-1]) - 1).any())
    assert outside  # the cut face's frame reaches past the photo's edge: the reflection was compared too


def blur_in_one_pass(photo: np.ndarray, box: np.ndarray, feather: float = 0.2, margin: float = 0.15) -> None:
    x1, y1, x2, y2 = box[:4]
    w, h = (x2 - x1) * (1 + 2 * margin), (y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0, y0, x1_, y1_ = footprint(np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy + h / 2]]), photo.shape)
    radius = float(max(2.0, max(w, h) / 4))
    pad = int(np.ceil(radius))
    wx0, wy0 = max(x0 - pad, 0), max(y0 - pad, 0)
    window = Image.fromarray(photo[wy0 : min(y1_ + pad, photo.shape[0]), wx0 : min(x1_ + pad, photo.shape[1])])
    blurred = np.asarray(window.filter(ImageFilter.GaussianBlur(radius)), np.float32)[y0 - wy0 :, x0 - wx0 :]
    ys, xs = np.mgrid[y0:y1_, x0:x1_]
    alpha = soft_edge(np.hypot((xs - cx) / (w / 2), (ys - cy) / (h / 2)), feather)
    blend(photo[y0:y1_, x0:x1_], blurred[: y1_ - y0, : x1_ - x0], alpha)


def test_compose_in_bands_equals_one_pass_over_each_face(
    photo: np.ndarray, detector: FaceDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SceneConfig(max_faces=1)  # one face pasted back, the others blurred
    faces = plan_faces(photo, detector.detect(photo), KEY, config)
    chosen = to_protect(faces)
    assert len(chosen) == 1 and len(faces) > 1
    box = mask_box(chosen[0].matrix, config.face_mask, config.aligned_size, photo.shape)
    assert len(strips(box[1], box[3], box[2] - box[0])) > 1  # this face is pasted in several bands
    generated = [np.ascontiguousarray(f.aligned[::-1]) for f in chosen]  # another face: upside down
    result = compose(photo, faces, generated, config)
    assert not np.array_equal(result, photo)
    # The banding, on one blended face (blending it twice may differ in a float's last bit).
    face = chosen[0]
    content, alpha, grain = blended_face(
        photo, face.aligned, generated[0], face.matrix, config.aligned_size, config.paste_back
    )
    assert grain.std > 0  # the upside-down face is pasted with grain, which must not depend on the bands
    banded, one_pass = photo.copy(), photo.copy()
    paste_face(banded, content, alpha, face.matrix, config.aligned_size, grain)
    monkeypatch.setattr(paste_back, "STRIP_PIXELS", photo.shape[0] * photo.shape[1])
    paste_face(one_pass, content, alpha, face.matrix, config.aligned_size, grain)
    assert np.array_equal(banded, one_pass) and not np.array_equal(banded, photo)
    expected_blur = photo.copy()
    for other in faces:
        if other.action == "blurred":
            blur_in_one_pass(expected_blur, other.detection)
    away = mask_alpha(photo.shape, face.matrix, config.face_mask) == 0  # from the pasted face
    assert np.array_equal(result[away], expected_blur[away])


def test_grain_only_for_a_face_pasted_at_about_its_own_size(photo: np.ndarray, detector: FaceDetector) -> None:
    config = SceneConfig(max_faces=1)
    face = to_protect(plan_faces(photo, detector.detect(photo), KEY, config))[0]
    upside_down = np.ascontiguousarray(face.aligned[::-1])
    large = upside_down.repeat(8, 0).repeat(8, 1)  # the same face drawn at 8×: 2048 px
    args = (face.matrix, config.aligned_size, config.paste_back)
    assert pixels_per_photo_pixel(face.matrix, large.shape[0], config.aligned_size) >= 2
    assert blended_face(photo, face.aligned, upside_down, *args)[2].std > 0
    assert blended_face(photo, face.aligned, large, *args)[2].std == 0  # shrunk: it keeps its own detail


def test_a_large_photo_is_never_turned_into_floats(photo: np.ndarray, detector: FaceDetector) -> None:
    """Scene mode works on the uint8 photo and on face-sized pieces: 9× the photo (33 M pixels for
    couple.jpg, faces of ~2000 px) adds far less than its float32 copy (4× its size) to the peak."""
    big = np.repeat(np.repeat(photo, 3, axis=0), 3, axis=1)
    detections = detector.detect(photo)
    detections[:, :4], detections[:, 5:] = 3 * detections[:, :4] + 1, 3 * detections[:, 5:] + 1  # pixel centres
    size = big.nbytes / 2**20
    assert peak_increase_mb(lambda: shrink_for_detection(big, 1600)) < size / 4
    config, faces = SceneConfig(), []
    assert peak_increase_mb(lambda: faces.extend(plan_faces(big, detections, KEY, config))) < size / 10
    protected = [f.aligned for f in to_protect(faces)]
    assert protected
    # compose returns a copy of the photo; the faces are pasted in bands of rows beside it
    assert peak_increase_mb(lambda: compose(big, faces, protected, config)) < 1.25 * size

"""The shared-face mask and the colour and seam matching of scene mode's paste-back, on synthetic faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymixer.alignment import FFHQ_TEMPLATE_256
from anonymixer.blending import (
    DETAIL_LIMIT,
    DETAIL_SIGMA,
    fine_energy,
    grain_strength,
    laplacian_blend,
    match_colour,
    matched_detail,
    noise_level,
    pixel_noise,
    push_pull,
    seam_correction,
    shading_plane,
)
from anonymixer.face_region import (
    MASK_SIZE,
    TURN,
    FaceGeometry,
    dilate,
    ellipse,
    lab_to_rgb,
    resized,
    rgb_to_lab,
    shared_face,
    turn_of,
)
from anonymixer.paste_back import FaceMask, paste_face

SKIN, LAVENDER, HAIR = (200, 150, 125), (150, 140, 200), (60, 40, 30)


def synthetic_face(width: float, size: int = 256, skin: tuple[int, ...] = SKIN, seed: int = 0) -> np.ndarray:
    """An aligned 'face' (ffhq framing): a skin oval ``width`` × the eye distance wide on a lavender
    background, dark hair above it, dark eyes and a red mouth on the template's landmarks, mild noise."""
    scale = size / 256
    v, u = np.mgrid[0:size, 0:size] / scale
    image = np.empty((size, size, 3), np.float64)
    image[:] = LAVENDER
    eyes = 64.5
    oval = ((u - 128.5) / (width * eyes / 2)) ** 2 + ((v - 145) / 85) ** 2 <= 1
    image[oval] = skin
    image[(v < 75) & (np.abs(u - 128.5) < 80)] = HAIR
    for x, y in FFHQ_TEMPLATE_256[:2]:
        image[np.hypot(u - x, v - y) < 7] = (40, 30, 30)
    image[(np.abs(v - 187) < 5) & (np.abs(u - 128.5) < 28)] = (170, 40, 50)
    image += np.random.default_rng(seed).normal(0, 3, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def bound_mask() -> torch.Tensor:
    coords = (np.arange(MASK_SIZE) + 0.5) * (256 / MASK_SIZE) - 0.5
    return torch.from_numpy(FaceMask().reframed("ffhq").alpha(coords[None, :], coords[:, None], 256) > 0)


def test_lab_round_trip_and_white() -> None:
    rgb = torch.rand(3, 50) * 255
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=0.05)
    white = rgb_to_lab(torch.full((3, 1), 255.0))[:, 0]
    assert torch.allclose(white, torch.tensor([100.0, 0.0, 0.0]), atol=0.05)


def test_the_shared_face_stays_inside_both_faces_and_covers_the_inner_face() -> None:
    original, generated = synthetic_face(2.0), synthetic_face(2.6, size=512, seed=1)  # the generated face is wider
    region = shared_face(resized(original, MASK_SIZE), resized(generated, MASK_SIZE), FFHQ_TEMPLATE_256, bound_mask())
    small = resized(original, MASK_SIZE).permute(1, 2, 0).numpy()
    generated_small = resized(generated, MASK_SIZE).permute(1, 2, 0).numpy()
    background = np.abs(small - LAVENDER).sum(2) < 30
    assert region.alpha[torch.from_numpy(background)].max() == 0  # the photo's background is never covered
    hair = np.abs(generated_small - HAIR).sum(2) < 40
    hair[MASK_SIZE // 3 :] = False  # the dark eyes are not hair
    assert region.alpha[torch.from_numpy(hair)].max() == 0  # nor is the generated hair pasted
    for x, y in (FFHQ_TEMPLATE_256 + 0.5) * MASK_SIZE / 256 - 0.5:
        assert region.alpha[round(y), round(x)] > 0.99  # eyes, nose, mouth replaced
    assert region.ring.any() and (region.alpha[region.ring] > 0.4).all()


def test_a_generated_face_narrower_than_the_photos_leaves_its_background_out() -> None:
    original, generated = synthetic_face(2.6), synthetic_face(2.0)  # still wider than the inner face
    region = shared_face(resized(original, MASK_SIZE), resized(generated, MASK_SIZE), FFHQ_TEMPLATE_256, bound_mask())
    generated_small = resized(generated, MASK_SIZE).permute(1, 2, 0).numpy()
    lavender = torch.from_numpy(np.abs(generated_small - LAVENDER).sum(2) < 30)
    assert region.alpha[lavender].max() == 0


def test_the_inner_face_never_reaches_past_the_photos_contour() -> None:
    # A narrow face in the photo (narrower than the inner face), a wide one generated: on a
    # three-quarter view the generated cheek would otherwise lie over the photo's background.
    original, generated = synthetic_face(1.6), synthetic_face(2.6, seed=1)
    region = shared_face(resized(original, MASK_SIZE), resized(generated, MASK_SIZE), FFHQ_TEMPLATE_256, bound_mask())
    small = resized(original, MASK_SIZE).permute(1, 2, 0).numpy()
    geometry = FaceGeometry.of(FFHQ_TEMPLATE_256)
    # the photo's background, away from the discs about the landmarks that always count as face
    background = torch.from_numpy(np.abs(small - LAVENDER).sum(2) < 30) & ~dilate(geometry.features(), 1)
    assert (geometry.inner_face() & background).any()  # the inner face does reach there
    assert region.alpha[background].max() == 0 and not region.contour[background].any()
    for x, y in (FFHQ_TEMPLATE_256 + 0.5) * MASK_SIZE / 256 - 0.5:
        assert region.alpha[round(y), round(x)] > 0.95  # eyes, nose, mouth still replaced (near this edge: soft)


def test_a_turned_faces_far_side_stops_at_its_far_eye_and_mouth_corner() -> None:
    geometry = FaceGeometry.of(FFHQ_TEMPLATE_256)
    assert abs(turn_of(FFHQ_TEMPLATE_256)) < 0.05  # the template looks straight ahead
    turned = FFHQ_TEMPLATE_256.copy()
    turned[2, 0] += 0.2 * (turned[1, 0] - turned[0, 0])  # the nose moved towards +x: the far side is +x
    assert turn_of(turned) == pytest.approx(0.2 + turn_of(FFHQ_TEMPLATE_256), abs=1e-6)
    straight, far = geometry.features(0.0), geometry.features(turn_of(turned))
    assert torch.equal(geometry.features(TURN / 2), straight)  # a slight turn changes nothing
    u = torch.arange(MASK_SIZE)[None, :].expand(MASK_SIZE, MASK_SIZE)
    right_eye, right_mouth = geometry.landmarks[1], geometry.landmarks[4]
    beyond_eye = (u > right_eye[0] + 0.26 * geometry.eye_distance) & (u > right_mouth[0] + 0.01)
    assert straight[beyond_eye].any() and not far[beyond_eye].any()
    assert torch.equal(far[:, : MASK_SIZE // 2], straight[:, : MASK_SIZE // 2])  # the near side is whole


def test_grain_depends_on_the_pixel_alone_and_brings_the_photos_noise() -> None:
    rows, cols = np.mgrid[100:228, 300:428]
    noise = pixel_noise(7, rows, cols)
    assert abs(float(noise.mean())) < 0.05 and float(noise.std()) == pytest.approx(1, abs=0.03)
    assert np.array_equal(noise[40:90, 10:70], pixel_noise(7, rows[40:90, 10:70], cols[40:90, 10:70]))  # any band
    assert not np.array_equal(noise, pixel_noise(8, rows, cols))  # another face, another pattern
    neighbours = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert abs(neighbours) < 0.05  # white: one value per photo pixel
    rng = np.random.default_rng(5)
    photo = torch.from_numpy(rng.normal(128, 6, (3, 128, 128))).float()  # a grainy photo: luminance noise 6/√3
    photo[:, 60:68, 30:98] = 20  # and a dark feature, whose edges are not noise
    smooth = torch.full((3, 128, 128), 140.0) + torch.linspace(0, 20, 128)  # a generated face: no grain
    where = torch.ones(128, 128, dtype=torch.bool)
    std = grain_strength(smooth, photo, where)
    assert std == pytest.approx(6 / np.sqrt(3), rel=0.1)
    grained = smooth + std * torch.from_numpy(pixel_noise(3, rows, cols))
    assert noise_level(grained, where) == pytest.approx(noise_level(photo, where), rel=0.05)
    assert grain_strength(photo, smooth, where) == 0  # a face noisier than its photo gets none


def test_colour_and_seam_bring_the_generated_skin_to_the_photos() -> None:
    original = synthetic_face(2.0)
    generated = synthetic_face(2.0, skin=(170, 135, 120), seed=2)  # paler, greyer skin
    original_small, generated_small = resized(original, MASK_SIZE), resized(generated, MASK_SIZE)
    region = shared_face(original_small, generated_small, FFHQ_TEMPLATE_256, bound_mask())
    face = torch.from_numpy(generated).permute(2, 0, 1).float()
    matched = match_colour(face, generated_small, original_small, region.ring)
    matched_small = resized(matched.permute(1, 2, 0), MASK_SIZE)
    before = (generated_small - original_small)[:, region.ring].mean(1).abs().max()
    after = (matched_small - original_small)[:, region.ring].mean(1).abs().max()
    assert before > 15 and after < 2
    # a shading the ring shows on one side only: the seam correction takes it there, smoothly
    shaded = original_small.clone()
    shaded[:, :, : MASK_SIZE // 2] -= 20
    field = seam_correction(matched_small, shaded, region.ring, 256)
    left, right = region.ring.clone(), region.ring.clone()
    left[:, MASK_SIZE // 2 :], right[:, : MASK_SIZE // 2] = False, False
    small_field = resized(field.permute(1, 2, 0), MASK_SIZE)
    assert small_field[:, left].mean() < -12 and small_field[:, right].mean().abs() < 6
    assert field.diff(dim=2).abs().max() < 5  # the step spread over 8 px and more


def test_push_pull_keeps_what_is_known_and_fills_between() -> None:
    values = torch.zeros(1, 64, 64)
    values[0, :, :32], values[0, :, 32:] = 10.0, 30.0
    known = torch.zeros(64, 64, dtype=torch.bool)
    known[:, 0], known[:, -1] = True, True
    filled = push_pull(values, known)
    assert torch.allclose(filled[0, :, 0], torch.tensor(10.0)) and torch.allclose(filled[0, :, -1], torch.tensor(30.0))
    middle = filled[0, 32]
    assert middle.min() >= 10 and middle.max() <= 30 and (middle.diff() >= -1e-4).all()  # monotone between


def test_laplacian_blend_is_each_image_where_the_mask_is_all_or_nothing() -> None:
    a, b = torch.full((3, 64, 64), 200.0), torch.rand(3, 64, 64) * 100
    assert torch.allclose(laplacian_blend(a, b, torch.ones(64, 64), 4), a, atol=1e-3)
    assert torch.allclose(laplacian_blend(a, b, torch.zeros(64, 64), 4), b, atol=1e-3)


def test_paste_face_writes_only_where_its_alpha_is_positive() -> None:
    photo = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    before = photo.copy()
    matrix = np.array([[0.8, 0.0, -60.0], [0.0, 0.8, -20.0]])  # photo → a 256 px aligned frame
    alpha = ellipse(MASK_SIZE, (64, 64), (30, 40)).float()
    face = torch.full((3, 1024, 1024), 255.0)
    paste_face(photo, face, alpha, matrix, 256)
    ys, xs = np.mgrid[0:300, 0:400]
    u, v = 0.8 * xs - 60, 0.8 * ys - 20  # the aligned frame's pixel, then the mask's
    inside = ((u + 0.5) / 2 - 0.5 - 64) ** 2 / 30**2 + ((v + 0.5) / 2 - 0.5 - 64) ** 2 / 40**2
    changed = (photo != before).any(2)
    assert changed[inside < 0.8].all() and not changed[inside > 1.2].any()
    assert (photo[inside < 0.8] == 255).all()


def test_a_smooth_generated_face_gets_its_own_detail_raised_to_the_photos() -> None:
    rng = np.random.default_rng(4)
    behind = torch.from_numpy(rng.normal(128, 12, (3, 256, 256))).float()  # a grainy photo
    pattern = torch.from_numpy(rng.normal(0, 3, (3, 256, 256))).float()
    face = 150 + pattern  # the same kind of texture, a quarter as strong
    where = torch.ones(256, 256, dtype=torch.bool)
    raised = matched_detail(face, behind, where, scale=1.0)
    before = float(fine_energy(face, where, DETAIL_SIGMA))
    after = float(fine_energy(raised, where, DETAIL_SIGMA))
    assert after == pytest.approx(DETAIL_LIMIT * before, rel=0.05)  # capped: 4× was asked for
    # its own detail, not the photo's: what was added is the face's own high frequencies
    added = raised - face
    assert torch.corrcoef(torch.stack([added.flatten(), (behind - 128).flatten()]))[0, 1].abs() < 0.05
    assert torch.equal(matched_detail(behind, face, where, scale=1.0), behind)  # never made smoother


def test_the_shading_plane_recovers_light_from_one_side_and_nothing_finer() -> None:
    ring = torch.zeros(MASK_SIZE, MASK_SIZE, dtype=torch.bool)
    ring[10:118:3, 10:118:3] = True
    u = ((torch.arange(MASK_SIZE) + 0.5) / MASK_SIZE * 2 - 1)[None, :].expand(MASK_SIZE, MASK_SIZE)
    face = torch.full((3, MASK_SIZE, MASK_SIZE), 150.0)
    lit = face + torch.stack([10 * u, 5 * u, 0 * u]) + 8 * torch.rand(3, MASK_SIZE, MASK_SIZE)  # a slope and grain
    plane = shading_plane(face, lit, ring, 256)
    assert plane.shape == (3, 256, 256)
    assert plane[0, :, -1].mean() - plane[0, :, 0].mean() == pytest.approx(20, abs=1)  # the slope, across
    assert plane[2].std() < 0.5 and plane[:, :, 128].std(1).max() < 0.5  # flat where the light is, no grain

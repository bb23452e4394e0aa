"""benchmarks.paste_back_quality's measures on a synthetic photo: a disc of another colour and a
smoother texture pasted into a textured gradient is seen; an unchanged photo measures nothing."""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab

from benchmarks.paste_back_quality import edge_steps, generated_outside, measure_face, texture_ratio

SIZE, CENTRE, RADIUS = 240, 120, 40
BOX = np.array([80.0, 80.0, 160.0, 160.0])  # the "detection" box about the disc


def disc(radius: float) -> np.ndarray:
    ys, xs = np.mgrid[:SIZE, :SIZE]
    return np.hypot(ys - CENTRE, xs - CENTRE) <= radius


def photos() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(90, 170, SIZE)
    base = np.stack(np.broadcast_arrays(ramp[None, :], 120 + 0.2 * ramp[:, None], np.full((1, 1), 100.0)), axis=2)
    photo = np.clip(base + rng.normal(0, 10, (SIZE, SIZE, 1)), 0, 255).astype(np.uint8)
    pasted = np.clip(base + np.array([30, -10, -10]) + rng.normal(0, 2, (SIZE, SIZE, 1)), 0, 255).astype(np.uint8)
    composite = np.where(disc(RADIUS)[..., None], pasted, photo)
    return photo, composite


def test_a_pasted_disc_is_seen() -> None:
    photo, composite = photos()
    row = measure_face(photo, composite, BOX, disc(RADIUS + 10))
    assert row["status"] == "measured"
    assert abs(row["pasted_px"] - disc(RADIUS).sum()) < 0.05 * disc(RADIUS).sum()
    assert row["edge_step_p90"] > 10 and row["edge_step_mean"] > 10  # a ~30 ΔE step all round
    assert sum(s is not None for s in row["edge_steps"]) == 36
    assert row["texture_ratio"] < 0.5  # noise σ 2 where the photo has σ 10
    assert row["generated_outside_px"] == 0 and row["pasted_outside_share"] == 0
    assert row["face_covered"] > 0.6  # the disc in a face region 10 px wider
    small_face = measure_face(photo, composite, BOX, disc(RADIUS / 2))
    assert small_face["generated_outside_px"] > 0.5 * (
        disc(RADIUS).sum() - disc(RADIUS / 2 + small_face["ring_px"]).sum()
    )
    assert small_face["pasted_outside_share"] > 0.5


def test_identical_images_measure_nothing() -> None:
    photo, _ = photos()
    assert measure_face(photo, photo.copy(), BOX, disc(RADIUS + 10))["status"] == "unchanged"
    lab, region = rgb2lab(photo), disc(RADIUS)
    assert all(abs(s) < 1e-9 for s in edge_steps(lab, lab, region, 3) if s is not None)
    assert texture_ratio(lab, lab, region, 3) == 1.0
    assert generated_outside(np.zeros(region.shape), disc(RADIUS / 2), region, 3)[0] == 0

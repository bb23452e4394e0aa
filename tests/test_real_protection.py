"""Real weights, a real photo: mobile1024 inverts by optimisation and protects (issue 16).

A few steps only (2 CPU cores: ~2.3 s per 1024 px step and face), so the assertions are about
direction and clear margins, not the profile's full-length figures (benchmarks/results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymixer import bundle
from anonymixer.config import Overrides, resolve_settings
from anonymixer.face_detection import FaceDetector
from anonymixer.images import open_rgb
from anonymixer.losses import fr_crop
from anonymixer.protect import Protector
from anonymixer.samples import aligned_face
from tests.conftest import FACES, REPO, need

FEW = {"inversion_steps": 15, "steps": 4, "views": 0}
KEYS = (b"test key one", b"test key two")
RUN_IN_SUBPROCESS = """
import sys, numpy as np
from anonymixer import bundle
from anonymixer.config import Overrides, resolve_settings
from anonymixer.protect import Protector
model = bundle.load(sys.argv[1])
face = np.load(sys.argv[2])
config = resolve_settings(model.config, Overrides("the test", %r)).config
out = Protector(model, config).protect([face], %r)[0]
np.save(sys.argv[3], out.image)
"""


@pytest.fixture(scope="module")
def face(mobile_bundle_dir: Path) -> np.ndarray:
    model = bundle.read_config(mobile_bundle_dir)
    aligned = aligned_face(np.asarray(open_rgb(need(FACES / "img1.jpg"))), FaceDetector(), framing=model["framing"])
    assert aligned is not None
    return aligned


@pytest.fixture(scope="module")
def protector(mobile_bundle_dir: Path) -> Protector:
    model = bundle.load(mobile_bundle_dir)
    return Protector(model, resolve_settings(model.config, Overrides("the test", FEW)).config)


def cosine_to(protector: Protector, original: np.ndarray, images: np.ndarray) -> np.ndarray:
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    with torch.no_grad():
        e_x = protector.model.face_embedder(fr_crop(as_tensor(original[None])))
        e_y = protector.model.face_embedder(fr_crop(as_tensor(images)))
    return (e_y @ e_x.T)[:, 0].numpy()


def l1_at_256(original: np.ndarray, images: np.ndarray) -> np.ndarray:
    small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(images).permute(0, 3, 1, 2).float(), 256)
    return (small - torch.from_numpy(original).permute(2, 0, 1).float()).abs().mean(dim=(1, 2, 3)).numpy() / 255


def test_inversion_then_protection_on_a_real_photo(protector: Protector, face: np.ndarray) -> None:
    w = protector.invert([face])
    assert w.shape == (1, 23, 512) and protector.inverted_items == 1
    mean_face = protector.render(protector.model.latent_avg[None])
    reconstruction = protector.render(w)
    l1_avg, l1_rec = l1_at_256(face, np.concatenate([mean_face, reconstruction]))
    cos_avg, cos_rec = cosine_to(protector, face, np.concatenate([mean_face, reconstruction]))
    assert l1_rec < 0.8 * l1_avg, (l1_rec, l1_avg)  # closer in pixels than the mean face …
    assert cos_rec > cos_avg + 0.1, (cos_rec, cos_avg)  # … and in identity

    # one call, two keys, one photo: the photo is inverted once, its latent reused
    faces = protector.protect([face, face], list(KEYS))
    assert protector.inverted_items == 1 and protector.refined_items == 2
    protected = np.stack([f.image for f in faces])
    cos_protected = cosine_to(protector, face, protected)
    assert np.allclose(cos_protected, [f.original_similarity for f in faces], atol=1e-4)
    assert (cos_protected < cos_rec - 0.2).all(), (cos_protected, cos_rec)  # identity moved
    between_keys = float(faces[0].template @ faces[1].template)
    assert between_keys < 0.6, between_keys  # two keys, two new identities


def test_reproducible_across_processes(mobile_bundle_dir: Path, face: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "face.npy", face)
    few = {"inversion_steps": 2, "steps": 1, "views": 0}
    script = RUN_IN_SUBPROCESS % (few, KEYS[0])
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.npy"
        subprocess.run(
            [sys.executable, "-c", script, str(mobile_bundle_dir), str(tmp_path / "face.npy"), str(out)],
            cwd=REPO,
            check=True,
            timeout=600,
        )
        outputs.append(np.load(out))
    assert outputs[0].shape == (1024, 1024, 3) and np.array_equal(outputs[0], outputs[1])

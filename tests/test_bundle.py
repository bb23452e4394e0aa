"""The model bundle: tiny round trip, determinism, clear errors, and ffhq1024 from official layouts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymixer import bundle, profiles
from anonymixer.bundle import BundleError
from anonymixer.networks import build_encoder, build_face_embedder, build_generator
from anonymixer.seeded_init import seeded_init_
from tests.conftest import FIXTURES, MOBILEFACENET, REPO, need
from tests.test_fixture_parity import TOL, official_file, rel_err


@torch.no_grad()
def test_tiny_round_trip_gives_identical_outputs(tiny_bundle_dir: Path) -> None:
    """The loaded bundle computes exactly what the freshly initialised networks compute."""
    arch = profiles.ARCHITECTURES["tiny"]
    gen = seeded_init_(build_generator(arch["generator"]), 0, "generator.").eval()
    enc = seeded_init_(build_encoder(arch["encoder"]), 0, "encoder.").eval()
    fr = seeded_init_(build_face_embedder(arch["face_embedder"]), 0, "face_embedder.").eval()
    model = bundle.load(tiny_bundle_dir)
    assert (model.resolution, model.n_latent, model.style_dim, model.embedding_size) == (64, 10, 64, 128)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    w = model.encoder(x)
    assert torch.equal(w, enc(x) + model.encoder.latent_avg)
    assert torch.equal(model.generator.synthesis(w), gen.synthesis(w))
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.equal(model.face_embedder(faces), fr(faces))
    z = torch.randn(3, 64)
    assert torch.equal(model.generator.mapping(z), gen.mapping(z))
    assert all(not p.requires_grad for p in model.generator.parameters())
    assert not model.generator.training
    assert not model.encoder.training


def test_tiny_is_deterministic_and_seeded(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    again = profiles.build_tiny(tmp_path / "again")
    other = profiles.build_tiny(tmp_path / "other", seed=1)
    files = bundle.read_config(tiny_bundle_dir)["files"]
    assert bundle.read_config(again)["files"] == files
    other_files = bundle.read_config(other)["files"]
    assert all(other_files[name] != files[name] for name in files)


def test_bundle_json_describes_the_bundle(tiny_bundle_dir: Path) -> None:
    config = json.loads((tiny_bundle_dir / "bundle.json").read_text())
    assert config["format_version"] == bundle.FORMAT_VERSION
    assert config["profile"] == "tiny"
    assert config["sources"] == {"seed": 0}
    assert config["face_embedder"]["network"] == "ir_se"
    assert config["face_embedder"]["embedding_size"] == 128
    assert sorted(config["files"]) == sorted(f"{n}.safetensors" for n in bundle.WEIGHT_FILES)


@pytest.fixture
def bundle_copy(tmp_path: Path, tiny_bundle_dir: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle_dir, tmp_path / "copy"))


def test_missing_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "encoder.safetensors").unlink()
    with pytest.raises(BundleError, match=r"missing encoder\.safetensors"):
        bundle.load(bundle_copy)


def test_corrupted_file_fails_its_checksum(bundle_copy: Path) -> None:
    path = bundle_copy / "generator.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"generator.safetensors: SHA-256 .* does not match"):
        bundle.load(bundle_copy)


def test_newer_format_is_refused(bundle_copy: Path) -> None:
    config = json.loads((bundle_copy / "bundle.json").read_text())
    config["format_version"] = bundle.FORMAT_VERSION + 1
    (bundle_copy / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="newer than this anonymixer supports"):
        bundle.load(bundle_copy)


def test_not_a_bundle_and_no_silent_overwrite(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        bundle.load(tmp_path)
    with pytest.raises(BundleError, match="already holds a bundle"):
        profiles.build_tiny(tiny_bundle_dir)


def test_cli_builds_tiny_and_reports_errors(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "exporter", "bundle"]
    done = subprocess.run(
        [*run, "--profile", "tiny", "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert bundle.load(tmp_path / "b").config["profile"] == "tiny"
    again = subprocess.run(
        [*run, "--profile", "tiny", "--out", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert again.returncode == 1
    assert "already holds a bundle" in again.stderr
    missing = subprocess.run(
        [*run, "--profile", "ffhq1024", "--out", str(tmp_path / "f")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
    assert "--e4e PATH" in missing.stderr


@torch.no_grad()
def test_tiny_with_the_real_mobilefacenet(tmp_path: Path) -> None:
    out = profiles.build_tiny(tmp_path / "t", fr=need(MOBILEFACENET))
    model = bundle.load(out)
    assert model.config["face_embedder"] == {"network": "mobilefacenet", "embedding_size": 128}
    assert model.config["sources"]["fr"]["kind"] == "mobilefacenet"
    assert model.face_embedder(torch.zeros(1, 3, 112, 112)).shape == (1, 128)


@torch.no_grad()
def test_ffhq1024_bundle_from_official_layouts(tmp_path: Path) -> None:
    """e4e + IR-SE50 files in the official layouts → bundle → the official outputs, end to end."""
    need(FIXTURES)
    e4e_path, e4e_in, e4e_out = official_file("e4e_ffhq_encode", tmp_path)
    fr_path, fr_in, fr_out = official_file("irse50", tmp_path)
    out = profiles.build_ffhq1024(tmp_path / "ffhq1024", e4e=e4e_path, fr=fr_path)
    e4e_path.unlink()  # the bundle must stand on its own
    model = bundle.load(out)
    config = model.config
    assert (config["resolution"], config["n_latent"], config["style_dim"]) == (1024, 18, 512)
    assert config["sources"]["e4e"]["file"] == "e4e_ffhq_encode.pt"
    assert len(config["sources"]["fr"]["sha256"]) == 64
    assert rel_err(model.encoder(torch.from_numpy(e4e_in["image"])), e4e_out["w_plus"]) <= TOL
    assert rel_err(model.face_embedder(torch.from_numpy(fr_in["face"])), fr_out["embedding"]) <= TOL
    latent_avg = torch.from_numpy(e4e_out["latent_avg"])
    torch.testing.assert_close(model.w_avg, latent_avg.mean(0))
    assert np.isfinite(model.generator.synthesis(latent_avg[None], resolution=64).numpy()).all()

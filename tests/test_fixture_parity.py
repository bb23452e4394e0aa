"""Parity with the official code: rebuild each reference checkpoint in its official file layout
from ../shared/fixtures, load it through our loader, and match the official outputs.

Pass criterion from the fixtures' README: max|got − ref| ≤ 1e-4 · max|ref| per array (float32 CPU).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymixer.checkpoints import load_checkpoint
from anonymixer.networks.stylegan2 import truncate
from tests.conftest import FIXTURES, need

TOL = 1e-4


def rel_err(got: torch.Tensor, ref: np.ndarray) -> float:
    got64 = got.detach().double().numpy()
    assert got64.shape == ref.shape
    return float(np.abs(got64 - ref).max() / np.abs(ref).max())


def official_file(name: str, tmp_path: Path) -> tuple[Path, dict, dict]:
    """Write the fixture checkpoint ``name`` like the official file; return it, inputs, expected."""
    folder = need(FIXTURES / name)
    spec = importlib.util.spec_from_file_location("fixture_fill", FIXTURES / "fill.py")
    assert spec is not None
    assert spec.loader is not None
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    manifest = json.loads((folder / "manifest.json").read_text())
    path = tmp_path / manifest["file_format"]["official_file_name"]
    torch.save(fill.build_checkpoint(manifest, manifest["seed_offset"]), path)
    return path, dict(np.load(folder / "inputs.npz")), dict(np.load(folder / "expected.npz"))


@torch.no_grad()
def test_irse50_matches_official(tmp_path: Path) -> None:
    path, inputs, expected = official_file("irse50", tmp_path)
    ckpt = load_checkpoint(path, expect="ir_se")
    net = ckpt.face_embedder
    assert ckpt.face_embedder_arch == {
        "network": "ir_se",
        "units": [3, 4, 14, 3],
        "widths": [64, 128, 256, 512],
        "embedding_size": 512,
    }
    face = torch.from_numpy(inputs["face"])
    assert rel_err(net.body(net.input_layer(face)), expected["body_out"]) <= TOL
    assert rel_err(net.embed_unnormalised(face), expected["embedding_prenorm"]) <= TOL
    assert rel_err(net(face), expected["embedding"]) <= TOL


@torch.no_grad()
def test_e4e_matches_official(tmp_path: Path) -> None:
    path, inputs, expected = official_file("e4e_ffhq_encode", tmp_path)
    ckpt = load_checkpoint(path, expect="e4e")
    assert ckpt.encoder_arch is not None
    assert ckpt.encoder_arch["n_styles"] == 18
    assert ckpt.encoder_arch["input_size"] == 256
    assert ckpt.generator is not None
    assert ckpt.generator.size == 1024
    image = torch.from_numpy(inputs["image"])
    assert rel_err(ckpt.encoder.features(image)[2], expected["c3"]) <= TOL
    codes = ckpt.encoder(image)
    assert rel_err(codes, expected["codes"]) <= TOL
    assert rel_err(ckpt.latent_avg, expected["latent_avg"].astype(np.float64)) == 0.0
    assert rel_err(codes + ckpt.latent_avg, expected["w_plus"]) <= TOL


@torch.no_grad()
def test_stylegan2_matches_official(tmp_path: Path) -> None:
    path, inputs, expected = official_file("stylegan2_rosinality_1024", tmp_path)
    ckpt = load_checkpoint(path, expect="stylegan2")
    g = ckpt.generator
    assert g is not None
    assert g.n_latent == 18
    assert g.num_layers == 17
    assert rel_err(g.mapping(torch.from_numpy(inputs["z"])), expected["w"]) <= TOL
    w = g.mapping(torch.from_numpy(inputs["z_trunc"]))
    trunc = truncate(w, ckpt.latent_avg, 0.7)[:, None].expand(-1, g.n_latent, -1)
    assert rel_err(trunc, expected["trunc_latent"]) <= TOL
    w_plus = torch.from_numpy(inputs["w_plus"])
    for res in (4, 8, 16, 32, 64, 128, 256):
        assert rel_err(g.synthesis(w_plus, resolution=res), expected[f"rgb_skip_{res}"]) <= TOL, res
    assert rel_err(g.synthesis(w_plus), expected["image"]) <= TOL
    batch = g.synthesis(torch.from_numpy(inputs["w_plus_batch2"]))
    assert rel_err(batch[:1], expected["image"]) <= TOL
    assert rel_err(batch[1:], expected["image_batch2_item1"]) <= TOL


@pytest.mark.parametrize("name", ["irse50", "stylegan2_rosinality_1024"])
def test_fill_rule_reproduces_manifest_hashes(name: str) -> None:
    """Our numpy reproduces the fixture generator's bytes (else every parity result is moot)."""
    need(FIXTURES / name)
    spec = importlib.util.spec_from_file_location("fixture_fill", FIXTURES / "fill.py")
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    manifest = json.loads((FIXTURES / name / "manifest.json").read_text())
    assert fill.verify(manifest) == []

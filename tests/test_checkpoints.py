"""Loading official layouts: detection, strictness, refusal of code-carrying pickles."""

from __future__ import annotations

import argparse
import pathlib
from pathlib import Path

import pytest
import torch

from anonymixer import bundle
from anonymixer.checkpoints import CheckpointError, load_checkpoint
from anonymixer.networks import build_generator
from anonymixer.profiles import ARCHITECTURES
from anonymixer.seeded_init import seeded_init_
from tests.conftest import MOBILEFACENET, need


class _Payload:
    """Unpickling this would create a file: the loader must refuse before it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def tiny_generator_state() -> dict[str, torch.Tensor]:
    return seeded_init_(build_generator(ARCHITECTURES["tiny"]["generator"]), seed=5).state_dict()


def test_code_carrying_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": tiny_generator_state(), "latent_avg": torch.zeros(64), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)
    assert not marker.exists()


def test_strict_mismatch_lists_every_offending_key(tmp_path: Path) -> None:
    state = tiny_generator_state()
    del state["conv1.noise.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["to_rgb1.bias"] = torch.zeros(1, 4, 1, 1)
    path = tmp_path / "g.pt"
    torch.save({"g_ema": state, "latent_avg": torch.zeros(64)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "missing (1): conv1.noise.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "to_rgb1.bias: file [1, 4, 1, 1] vs model [1, 3, 1, 1]" in message


@torch.no_grad()
def test_rosinality_training_checkpoint_with_args_namespace(tmp_path: Path) -> None:
    state = tiny_generator_state()
    latent_avg = torch.randn(64)
    path = tmp_path / "train.pt"
    torch.save({"g": state, "g_ema": state, "latent_avg": latent_avg, "args": argparse.Namespace(size=64)}, path)
    ckpt = load_checkpoint(path, expect="stylegan2")
    assert ckpt.generator_arch is not None
    assert ckpt.generator_arch["size"] == 64
    assert ckpt.generator_arch["n_mlp"] == 4
    assert torch.equal(ckpt.latent_avg, latent_avg)
    for key, value in state.items():
        assert torch.equal(ckpt.generator.state_dict()[key], value), key


@torch.no_grad()
def test_e4e_layout_round_trip(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    """A file in the official e4e layout built from the tiny nets loads back to the same function."""
    model = bundle.load(tiny_bundle_dir)
    enc_state = model.encoder.encoder.state_dict()
    state = {f"encoder.{k}": v for k, v in enc_state.items()}
    state |= {f"decoder.{k}": v for k, v in model.generator.state_dict().items()}
    latent_avg = torch.randn(model.n_latent, model.style_dim)
    path = tmp_path / "e4e_ffhq_encode.pt"
    opts = {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, "stylegan_size": 64}
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": opts}, path)
    ckpt = load_checkpoint(path, expect="e4e")
    assert ckpt.encoder_arch == model.config["encoder"]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(ckpt.encoder(x), model.encoder.encoder(x), rtol=0, atol=0)
    assert torch.equal(ckpt.latent_avg, latent_avg)
    w = torch.randn(2, model.n_latent, model.style_dim)
    torch.testing.assert_close(ckpt.generator.synthesis(w), model.generator.synthesis(w), rtol=0, atol=0)


def test_unknown_layout_and_wrong_kind(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_checkpoint(path)
    gpath = tmp_path / "g.pt"
    torch.save({"g_ema": tiny_generator_state(), "latent_avg": torch.zeros(64)}, gpath)
    with pytest.raises(CheckpointError, match="expected a e4e checkpoint, found a stylegan2"):
        load_checkpoint(gpath, expect="e4e")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")


@torch.no_grad()
def test_real_mobilefacenet_loads_strictly() -> None:
    ckpt = load_checkpoint(need(MOBILEFACENET), expect="mobilefacenet")
    assert ckpt.face_embedder_arch == {"network": "mobilefacenet", "embedding_size": 128}
    file_state = torch.load(MOBILEFACENET, map_location="cpu", weights_only=True)
    model_state = ckpt.face_embedder.state_dict()
    assert set(model_state) == set(file_state)
    assert len(file_state) == 307
    assert all(torch.equal(model_state[k], file_state[k]) for k in file_state)
    faces = torch.rand(3, 3, 112, 112) * 2 - 1
    emb = ckpt.face_embedder(faces)
    assert emb.shape == (3, 128)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    # The input contract is [-1, 1]; the ImageNet normalisation happens inside the module.
    raw = ckpt.face_embedder.embed_unnormalised(faces)
    assert raw.norm(dim=1).min() > 1.0

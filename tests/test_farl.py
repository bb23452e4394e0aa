"""The FaRL attribute loss: CLIP-layout loading and the token-feature L1, with seeded weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anonymixer import bundle
from anonymixer.checkpoints import CheckpointError
from anonymixer.config import ProtectConfig
from anonymixer.farl import FaRLTokenLoss, load_farl_visual
from anonymixer.networks.clip_vit import VisionTransformer
from anonymixer.protect import Protector
from anonymixer.seeded_init import seeded_init_
from tests.test_protect import faces


def small_vit() -> VisionTransformer:
    return seeded_init_(VisionTransformer(224, 16, 64, 2, 1, 32), seed=3).eval()


def farl_file(tmp_path: Path, vit: VisionTransformer, extra: dict | None = None) -> Path:
    state = {f"visual.{k}": v for k, v in vit.state_dict().items()}
    state |= {"transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 3), "logit_scale": torch.ones(())}
    state |= extra or {}
    path = tmp_path / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"
    torch.save({"state_dict": state}, path)
    return path


def split_heads(z: torch.Tensor, heads: int) -> torch.Tensor:
    return z.reshape(z.shape[0], z.shape[1], heads, -1).transpose(1, 2)


def reference_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The CLIP forward written out by hand (multi-head attention included)."""
    t = vit.conv1(x).flatten(2).transpose(1, 2)
    t = torch.cat([vit.class_embedding.expand(x.shape[0], 1, -1), t], 1) + vit.positional_embedding
    t = vit.ln_pre(t)
    for block in vit.transformer.resblocks:
        h = block.ln_1(t)
        q, k, v = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (split_heads(z, block.attn.num_heads) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(h.shape)
        t = t + block.attn.out_proj(o)
        u = block.mlp.c_fc(block.ln_2(t))
        t = t + block.mlp.c_proj(u * torch.sigmoid(1.702 * u))
    return t


@torch.no_grad()
def test_loads_the_visual_tower_and_matches_the_clip_forward(tmp_path: Path) -> None:
    vit = small_vit()
    loaded = load_farl_visual(farl_file(tmp_path, vit, {"visual.lm_head.weight": torch.zeros(2, 2)}))
    x = torch.randn(2, 3, 224, 224)
    assert loaded.input_resolution == 224
    torch.testing.assert_close(loaded.tokens(x), reference_tokens(vit, x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded(x), vit(x))


def test_strict_about_the_tower(tmp_path: Path) -> None:
    vit = small_vit()
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): stray\.weight"):
        load_farl_visual(farl_file(tmp_path, vit, {"visual.stray.weight": torch.zeros(1)}))
    torch.save({"model": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a FaRL/CLIP checkpoint"):
        load_farl_visual(tmp_path / "x.pth")


@torch.no_grad()
def test_token_l1_is_zero_for_the_same_image_and_per_item(tmp_path: Path) -> None:
    loss = FaRLTokenLoss.from_checkpoint(farl_file(tmp_path, small_vit()))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    targets = loss.targets(x)
    assert loss(x, targets).abs().max() < 1e-5
    y = x.clone()
    y[1] = -y[1]
    per_item = loss(y, targets)
    assert per_item[0] < 1e-5 and per_item[1] > 1e-2


def test_protector_runs_with_farl(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    config = ProtectConfig(views=0, attribute_loss="farl", farl_checkpoint=str(farl_file(tmp_path, small_vit())))
    out = Protector(bundle.load(tiny_bundle_dir), config).protect(faces(1), b"k", steps=2)
    assert out[0].steps == 2 and len(out[0].loss_trace) == 2
    with pytest.raises(ValueError, match="needs farl_checkpoint"):
        ProtectConfig(attribute_loss="farl")

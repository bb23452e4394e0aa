"""Mixing rows, the FR crop and the losses against direct formulations."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from anonymixer.losses import anonymity_loss, fr_crop, group_consistency_loss, resize
from anonymixer.mixing import mix_latents


def test_paper_mode_rows() -> None:
    w_real, w_key = torch.randn(2, 10, 4), torch.randn(2, 4)
    mix = mix_latents(w_real, w_key, "paper", (3, 8))
    w = mix.assemble()
    assert torch.equal(w[:, :3], w_real[:, :3]) and torch.equal(w[:, 8:], w_real[:, 8:])
    assert torch.equal(w[:, 3:8], w_key[:, None].expand(-1, 5, -1))
    new = torch.randn(2, 5, 4)
    w2 = mix.assemble(new)
    assert torch.equal(w2[:, 3:8], new) and torch.equal(w2[:, :3], w_real[:, :3])


def test_reference_mode_rows() -> None:
    w_real, w_key = torch.randn(2, 10, 4), torch.randn(2, 4)
    mix = mix_latents(w_real, w_key, "reference", (3, 8))
    w = mix.assemble()
    assert torch.equal(w[:, :3], w_key[:, None].expand(-1, 3, -1))
    assert torch.equal(w[:, 3:], w_real[:, 3:])
    assert torch.equal(mix.trainable, w_real[:, 3:8])


def test_layer_range_is_configurable_and_checked() -> None:
    w_real, w_key = torch.randn(1, 10, 4), torch.randn(1, 4)
    w = mix_latents(w_real, w_key, "paper", (2, 4)).assemble()
    assert torch.equal(w[:, 2:4], w_key[:, None].expand(-1, 2, -1)) and torch.equal(w[:, 4:], w_real[:, 4:])
    with pytest.raises(ValueError, match="0 < start < stop"):
        mix_latents(w_real, w_key, "paper", (0, 4))
    with pytest.raises(ValueError, match="mix_mode"):
        mix_latents(w_real, w_key, "other", (3, 8))


def test_fr_crop_follows_the_psp_convention() -> None:
    img256 = torch.randn(2, 3, 256, 256)
    expected = F.adaptive_avg_pool2d(img256[:, :, 35:223, 32:220], 112)
    torch.testing.assert_close(fr_crop(img256), expected, rtol=0, atol=0)
    img1024 = torch.randn(1, 3, 1024, 1024)
    pooled = F.avg_pool2d(img1024, 4)
    torch.testing.assert_close(fr_crop(img1024), F.adaptive_avg_pool2d(pooled[:, :, 35:223, 32:220], 112))


def test_resize_is_the_area_average() -> None:
    images = torch.randn(2, 3, 1024, 1024, requires_grad=True)
    for size in (512, 256, 64, 112):  # integer factors as reshape-means; 1024/112 by adaptive pooling
        torch.testing.assert_close(resize(images, size), F.adaptive_avg_pool2d(images, size), rtol=0, atol=1e-6)
    # and so is its gradient: each pixel gets 1/factor² of its block's
    resize(images, 256).sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 1 / 16))
    assert resize(images[:, :, :64, :64], 128).shape == (2, 3, 128, 128)  # growing: bilinear


def test_anonymity_loss_is_abs_cosine_minus_margin() -> None:
    a, b = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    torch.testing.assert_close(anonymity_loss(a, b, 0.1), (F.cosine_similarity(a, b) - 0.1).abs())


def test_group_consistency_equals_per_group_mean_of_pairs() -> None:
    e = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=1)
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    expected = 0.0
    for g in groups.unique():
        idx = (groups == g).nonzero().flatten().tolist()
        pairs = list(itertools.combinations(idx, 2))
        if pairs:
            expected += sum((e[i] - e[j]).norm() for i, j in pairs) / len(pairs)
    torch.testing.assert_close(group_consistency_loss(e, groups), torch.as_tensor(expected, dtype=torch.float64))
    assert group_consistency_loss(e, torch.arange(7)).item() == 0.0


def test_group_consistency_gradient_is_finite_for_identical_embeddings() -> None:
    e = F.normalize(torch.randn(1, 8), dim=1).repeat(3, 1).requires_grad_(True)
    group_consistency_loss(e, torch.zeros(3, dtype=torch.long)).backward()
    assert torch.isfinite(e.grad).all()

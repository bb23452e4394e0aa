"""The generator's building blocks against independent formulations of the same maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anonymixer.networks.stylegan2 import Generator, ModulatedConv2d, make_fir_kernel, upfirdn2d
from anonymixer.seeded_init import seeded_init_


def upfirdn2d_loops(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Textbook definition with explicit loops: zero-insert, pad, true convolution, decimate."""
    c, h, w = x.shape
    xu = np.zeros((c, h * up, w * up))
    xu[:, ::up, ::up] = x
    p0, p1 = pad
    xp = np.zeros((c, h * up + p0 + p1, w * up + p0 + p1))
    xp[:, p0 : p0 + h * up, p0 : p0 + w * up] = xu
    kh, kw = k.shape
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = np.zeros((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            # true convolution: the kernel is flipped relative to the window
            out[:, i, j] = (xp[:, i : i + kh, j : j + kw] * k[::-1, ::-1]).sum(axis=(1, 2))
    return out[:, ::down, ::down]


@pytest.mark.parametrize(("up", "down", "pad"), [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1)), (2, 2, (0, 0))])
def test_upfirdn2d_matches_definition(up: int, down: int, pad: tuple[int, int]) -> None:
    rng = np.random.RandomState(0)
    x = rng.standard_normal((3, 5, 5))
    k = rng.standard_normal((4, 4))  # asymmetric, so a missing flip shows
    got = upfirdn2d(torch.from_numpy(x)[None], torch.from_numpy(k), up=up, down=down, pad=pad)[0].numpy()
    np.testing.assert_allclose(got, upfirdn2d_loops(x, k, up, down, pad), rtol=1e-10, atol=1e-12)


def test_fir_kernel_is_the_official_constant() -> None:
    k = make_fir_kernel([1, 3, 3, 1]) * 4
    assert k.sum().item() == pytest.approx(4.0)
    assert k[0, 0].item() == pytest.approx(0.0625)
    assert k[1, 1].item() == pytest.approx(0.5625)


@pytest.mark.parametrize(("upsample", "demodulate", "k"), [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_activation_modulation_equals_weight_modulation(upsample: bool, demodulate: bool, k: int) -> None:
    """Our conv (style on activations, demod on outputs) equals the reference's fused per-item weights."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, k, 8, demodulate=demodulate, upsample=upsample).double()
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    w = torch.randn(3, 8, dtype=torch.float64)
    got = conv(x, w)

    style = conv.modulation(w)  # [B, Cin]
    weight = conv.scale * conv.weight * style[:, None, :, None, None]  # [B, Cout, Cin, k, k]
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
    outs = []
    for b in range(3):
        if upsample:
            y = F.conv_transpose2d(x[b : b + 1], weight[b].transpose(0, 1), stride=2)
            outs.append(conv.blur(y))
        else:
            outs.append(F.conv2d(x[b : b + 1], weight[b], padding=k // 2))
    torch.testing.assert_close(got, torch.cat(outs), rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_synthesis_batch_items_are_independent_and_noise_is_fixed() -> None:
    g = seeded_init_(Generator(32, 16, 2, channels={4: 16, 8: 16, 16: 8, 32: 8}), seed=1).eval()
    w = torch.randn(3, g.n_latent, 16)
    batch = g.synthesis(w)
    assert batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(g.synthesis(w[1:2]), batch[1:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.synthesis(w), batch, rtol=0, atol=0)  # no random noise


@torch.no_grad()
def test_early_stop_is_the_rgb_skip_of_the_full_network() -> None:
    g = seeded_init_(Generator(32, 16, 2, channels={4: 16, 8: 16, 16: 8, 32: 8}), seed=2).eval()
    w = torch.randn(2, g.n_latent, 16)
    skips = {}
    handles = [
        m.register_forward_hook(lambda m, i, o, r=r: skips.__setitem__(r, o))
        for r, m in zip((8, 16, 32), g.to_rgbs, strict=True)
    ]
    g.synthesis(w)
    for h in handles:
        h.remove()
    for res in (8, 16):
        torch.testing.assert_close(g.synthesis(w, resolution=res), skips[res], rtol=0, atol=0)


def test_synthesis_rejects_wrong_shapes() -> None:
    g = Generator(32, 16, 2, channels={4: 16, 8: 16, 16: 8, 32: 8})
    with pytest.raises(ValueError, match=r"w_plus must be \[B, 8, 16\]"):
        g.synthesis(torch.zeros(1, 7, 16))
    with pytest.raises(ValueError, match="resolution"):
        g.synthesis(torch.zeros(1, 8, 16), resolution=24)


def test_latent_gradient_needs_no_weight_gradients() -> None:
    """Refinement differentiates w.r.t. the latent only: frozen weights get no .grad."""
    g = seeded_init_(Generator(32, 16, 2, channels={4: 16, 8: 16, 16: 8, 32: 8}), seed=3).requires_grad_(False)
    w = torch.randn(2, g.n_latent, 16, requires_grad=True)
    g.synthesis(w).square().mean().backward()
    assert w.grad is not None
    assert torch.isfinite(w.grad).all()
    assert w.grad.abs().sum() > 0
    assert all(p.grad is None for p in g.parameters())

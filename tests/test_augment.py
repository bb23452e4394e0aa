"""Augmented views: keyed, reproducible, and the transforms they claim to be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymixer.augment import ViewParams, apply_view, augmented_views, view_params
from anonymixer.keys import SecretKey

IDENTITY = ViewParams(False, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def image(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (32, 32, 3), dtype=np.uint8)


def test_params_are_keyed_and_reproducible() -> None:
    a = view_params(SecretKey(b"k"), image(), 5)
    assert a == view_params(SecretKey(b"k"), image(), 5) and len(a) == 5
    assert a != view_params(SecretKey(b"other"), image(), 5)
    assert a != view_params(SecretKey(b"k"), image(1), 5)
    assert view_params(SecretKey(b"k"), image(), 3) == a[:3]
    for p in a:
        assert abs(p.angle_deg) <= 10 and 0.85 <= p.crop_scale <= 1 and abs(p.hue) <= 0.03
        assert abs(p.crop_x) <= 1 - p.crop_scale and 0.85 <= p.brightness <= 1.15
    with pytest.raises(ValueError, match=r"views must be in \[0, 8\]"):
        view_params(SecretKey(b"k"), image(), 9)


def test_identity_and_flip() -> None:
    x = torch.rand(3, 16, 16) * 2 - 1
    torch.testing.assert_close(apply_view(x, IDENTITY), x, rtol=0, atol=1e-5)
    flipped = ViewParams(True, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    torch.testing.assert_close(apply_view(x, flipped), torch.flip(x, [-1]), rtol=0, atol=1e-5)


def test_colour_jitter_moves_colours_and_keeps_range() -> None:
    x = torch.rand(3, 16, 16) * 1.6 - 0.8
    brighter = apply_view(x, ViewParams(False, 0.0, 1.15, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0))
    assert brighter.mean() > x.mean()
    grey = apply_view(x, ViewParams(False, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0))
    assert (grey.max(0).values - grey.min(0).values).abs().max() < 1e-5  # saturation 0 → grey
    views = augmented_views(x, view_params(SecretKey(b"k"), image(), 4))
    assert views.shape == (4, 3, 16, 16) and views.min() >= -1 and views.max() <= 1
    assert augmented_views(x, []).shape == (0, 3, 16, 16)

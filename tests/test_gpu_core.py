"""The core's CUDA path (issue 19): refinement on CUDA equals the CPU's, the tf32/bf16 guards, CUDA
graphs over 50 steps, bucketed compilation without recompiles after the warm-up, and the
memory-budget batch limit. Every test is marked ``gpu``: collected everywhere, skipped without
CUDA (tests/conftest.py). The CPU halves of these mechanics are in test_refine_buckets.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anonymixer import bundle, protect, scheduler
from anonymixer.bundle import Bundle
from anonymixer.config import ProtectConfig, resolve_settings
from anonymixer.losses import E4EFeatureLoss
from anonymixer.protect import Protector
from anonymixer.refine import TF32, refine_latents
from tests.test_protect import faces
from tests.test_refine_buckets import inputs

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def mean_pixel_change(a: list[protect.ProtectedFace], b: list[protect.ProtectedFace]) -> np.ndarray:
    return np.array([np.abs(x.image.astype(int) - y.image.astype(int)).mean() for x, y in zip(a, b, strict=True)])


def cosines(a: list[protect.ProtectedFace], b: list[protect.ProtectedFace]) -> np.ndarray:
    return np.array([float(x.template @ y.template) for x, y in zip(a, b, strict=True)])


@pytest.fixture(scope="module")
def tiny_cuda(tiny_bundle_dir: Path) -> Bundle:
    return bundle.load(tiny_bundle_dir, CUDA)


@pytest.mark.parametrize("which", ["tiny", "mobile1024"])
def test_refinement_on_cuda_equals_the_cpu(which: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue("tiny_bundle_dir" if which == "tiny" else "mobile_bundle_dir")
    cpu_model = bundle.load(folder)
    # the bundle's own settings, shortened; fp32 (IEEE on CUDA too: both TF32 flags off)
    config = replace(resolve_settings(cpu_model.config).config, views=2, inversion_steps=3, precision="fp32")
    steps = 10 if which == "tiny" else 3
    images, groups = faces(3, seed=31), [0, 0, 1]  # a group of two; the third alone, with its 2 views
    keys = [b"k0", b"k0", b"k1"]
    on_cpu = Protector(cpu_model, config).protect(images, keys, groups=groups, steps=steps)
    on_cuda = Protector(bundle.load(folder, CUDA), config).protect(images, keys, groups=groups, steps=steps)
    similarity = cosines(on_cpu, on_cuda)
    pixels = mean_pixel_change(on_cpu, on_cuda)
    print(f"{which}: CUDA vs CPU template cosine ≥ {similarity.min():.5f}, mean |Δpixel| ≤ {pixels.max():.3f}")
    assert similarity.min() >= 0.999 and pixels.max() < 1.0
    for a, b in zip(on_cpu, on_cuda, strict=True):
        np.testing.assert_allclose(b.loss_trace, a.loss_trace, rtol=1e-3, atol=1e-4)


def test_tf32_and_bf16_keep_the_template_and_set_their_flags(tiny_cuda: Bundle) -> None:
    images = faces(4, seed=32)
    results, flags = {}, {}
    for precision in ("fp32", "tf32", "bf16"):
        seen: set[tuple[bool, bool]] = set()

        def record(step: int, cos: torch.Tensor, seen: set[tuple[bool, bool]] = seen) -> None:
            seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

        protector = Protector(tiny_cuda, ProtectConfig(views=0, precision=precision))
        results[precision] = protector.protect(images, b"k", steps=10, on_step=record)
        flags[precision] = seen
    for precision in ("tf32", "bf16"):
        similarity = cosines(results["fp32"], results[precision])
        print(f"{precision} vs fp32: template cosine ≥ {similarity.min():.5f}")
        assert similarity.min() >= 0.99
    assert flags == {p: {(TF32[p], TF32[p])} for p in ("fp32", "tf32", "bf16")}


def refine_tiny(model: Bundle, compile: str, steps: int) -> Any:
    mix, x = inputs(model, 3)
    return refine_latents(
        mix,
        x,
        torch.tensor([0, 0, 1], device=CUDA),
        generator=model.generator,
        face_embedder=model.face_embedder,
        attribute_loss=E4EFeatureLoss(model.encoder.encoder),
        config=ProtectConfig(views=0, compile=compile),
        steps=steps,
    )


def test_cuda_graphs_keep_every_step_of_a_50_step_trace(tiny_cuda: Bundle) -> None:
    """reduce-overhead replays one CUDA graph per step and overwrites its outputs each time: the
    kept traces must still be each step's own values, as eager's are."""
    eager = refine_tiny(tiny_cuda, "off", 50)
    graphs = refine_tiny(tiny_cuda, "reduce-overhead", 50)
    assert graphs.loss_trace.shape == (50, 3)
    assert not torch.equal(graphs.loss_trace[0], graphs.loss_trace[-1])  # not one overwritten buffer
    for name in ("loss_trace", "cosine_trace", "group_trace"):
        torch.testing.assert_close(getattr(graphs, name), getattr(eager, name), rtol=2e-3, atol=2e-4, msg=name)
    torch.testing.assert_close(graphs.trainable, eager.trainable, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_no_recompile_after_the_warm_up(tiny_cuda: Bundle, mode: str) -> None:
    torch._dynamo.reset()
    config = ProtectConfig(views=0, compile=mode, batch_buckets=(2, 4, 8))
    protector = Protector(tiny_cuda, config)
    assert protector.scheduler.warm_up(max_items=7) == [2, 4, 8]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n, seed in ((1, 33), (3, 34), (4, 35), (6, 36)):
            assert len(protector.protect(faces(n, seed=seed), b"k", steps=3)) == n
        # one group of 9, past the last bucket: the shape-generic graph compiled at the second bucket
        assert len(protector.protect(faces(9, seed=38), b"k", groups=[0] * 9, steps=1)) == 9
        # the check is live: a render at another resolution is a new graph
        half = Protector(tiny_cuda, replace(config, loss_resolution=tiny_cuda.generator.size // 2))
        with pytest.raises(torch._dynamo.exc.RecompileError):
            half.protect(faces(1, seed=39), b"k", steps=1)
    # and padding changed nothing: a padded compiled batch equals the eager one
    eager = Protector(tiny_cuda, ProtectConfig(views=0)).protect(faces(3, seed=34), b"k", steps=3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = protector.protect(faces(3, seed=34), b"k", steps=3)
    assert cosines(eager, compiled).min() >= 0.999


def test_a_batch_larger_than_the_memory_budget_is_chunked_and_completes(
    tiny_cuda: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = Protector(tiny_cuda, ProtectConfig(views=0))
    per_item, fixed = measured.scheduler.step_memory()
    print(f"tiny on CUDA: {per_item / 2**20:.1f} MiB per item, {fixed / 2**20:.1f} MiB fixed per refinement step")
    assert per_item > 0 and measured.scheduler.limit() >= 1
    # a device whose free memory holds ~4.5 items at memory_fraction 0.8
    total = torch.cuda.mem_get_info(CUDA)[1]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int((fixed + 4.5 * per_item) / 0.8), total))
    protector = Protector(tiny_cuda, ProtectConfig(views=0))
    limit = protector.scheduler.limit()
    assert 2 <= limit <= 6, limit
    sizes: list[int] = []
    real = scheduler.refine_latents

    def spy(mix: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        sizes.append(x.shape[0])
        return real(mix, x, *args, **kwargs)

    monkeypatch.setattr(scheduler, "refine_latents", spy)
    images = faces(12, seed=37)
    chunked = protector.protect(images, b"k", steps=3)
    assert len(chunked) == 12 and sum(sizes) == 12 and len(sizes) >= 2 and max(sizes) <= limit
    assert protector.splits == []
    whole = Protector(tiny_cuda, ProtectConfig(views=0, refine_batch=64)).protect(images, b"k", steps=3)
    assert cosines(whole, chunked).min() >= 0.999

"""The refinement's CUDA-path mechanics, tested on the CPU: TF32 flags per precision, batch buckets
(padding changes no result; the warm-up compiles every bucket), outputs kept across steps are
copies, and the memory-budget batch limit. The CUDA runs themselves are in test_gpu_core.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anonymixer import bundle, refine, synthesis
from anonymixer.bundle import Bundle
from anonymixer.config import ProtectConfig
from anonymixer.keys import SecretKey, key_latents
from anonymixer.losses import E4EFeatureLoss, resize
from anonymixer.mixing import Mix, mix_latents
from anonymixer.protect import Protector, image_tensor
from anonymixer.refine import TF32, padded_size, refine_latents
from anonymixer.scheduler import memory_chunk_limit
from tests.test_protect import faces

GiB = 2**30


@pytest.fixture(scope="module")
def model(tiny_bundle_dir: Path) -> Bundle:
    return bundle.load(tiny_bundle_dir)


def inputs(model: Bundle, n: int, seed: int = 21) -> tuple[Mix, torch.Tensor]:
    """A refinement batch of ``n`` seeded faces, each under its own key, on the model's device."""
    x = torch.stack([image_tensor(im, model.w_avg.device) for im in faces(n, seed=seed)])
    with torch.no_grad():
        w_real = model.encoder(resize(x, model.encoder.encoder.input_size))
        w_key = key_latents([SecretKey(f"k{i}".encode()) for i in range(n)], model.generator, model.w_avg)
    return mix_latents(w_real, w_key, "paper", (3, 8)), x


def run_refine(model: Bundle, mix: Mix, x: torch.Tensor, groups: list[int], config: ProtectConfig, **kwargs: Any):
    return refine_latents(
        mix,
        x,
        torch.tensor(groups, device=x.device),
        generator=model.generator,
        face_embedder=model.face_embedder,
        attribute_loss=E4EFeatureLoss(model.encoder.encoder),
        config=config,
        **kwargs,
    )


def spy_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the compiled synthesis to the eager one (the compiled path, without compiling on a
    busy CPU) and record the batch size of every step it runs."""
    sizes: list[int] = []

    def render(generator: Any, w_plus: torch.Tensor, resolution: int | None) -> torch.Tensor:
        sizes.append(w_plus.shape[0])
        return generator.synthesis(w_plus, resolution=resolution)

    monkeypatch.setattr(synthesis, "compiled_synthesis", lambda mode: render)
    return sizes


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("before", [(False, True), (True, False)])  # PyTorch's defaults, and their opposite
def test_precision_sets_both_tf32_flags_and_restores_them(precision: str, before: tuple[bool, bool]) -> None:
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = tuple(f.allow_tf32 for f in flags)
    try:
        flags[0].allow_tf32, flags[1].allow_tf32 = before
        with refine.precision_context(precision):
            assert tuple(f.allow_tf32 for f in flags) == (TF32[precision],) * 2
        assert tuple(f.allow_tf32 for f in flags) == before
        with pytest.raises(KeyError), refine.precision_context(precision):
            raise KeyError("restored on errors too")
        assert tuple(f.allow_tf32 for f in flags) == before
    finally:
        flags[0].allow_tf32, flags[1].allow_tf32 = saved
    assert TF32 == {"fp32": False, "tf32": True, "bf16": True}


def test_tf32_flags_hold_through_the_backward_pass(model: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool, bool]] = []
    eager = refine.step_losses

    def flags(where: str) -> None:
        seen.append((where, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    def step(*args: Any) -> Any:
        per_item, cos, group = eager(*args)
        flags("forward")
        per_item.register_hook(lambda grad: flags("backward"))  # runs inside backward()
        return per_item, cos, group

    monkeypatch.setattr(refine, "step_losses", step)
    mix, x = inputs(model, 1)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default: fp32 must turn it off for backward too
    try:
        run_refine(model, mix, x, [0], ProtectConfig(views=0), steps=2)
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert seen == [("forward", False, False), ("backward", False, False)] * 2


def test_padded_sizes() -> None:
    buckets = ProtectConfig().batch_buckets
    assert buckets == (1, 2, 4, 8, 16, 24, 32, 48)
    # 49: past the last bucket, unpadded
    expected = {1: 1, 2: 2, 3: 4, 5: 8, 9: 16, 17: 24, 24: 24, 25: 32, 33: 48, 48: 48, 49: 49}
    assert {n: padded_size(n, buckets) for n in expected} == expected
    assert padded_size(7, ()) == 7
    for bad in [(4, 2), (0, 1), (2, 2)]:
        with pytest.raises(ValueError, match="batch_buckets must be increasing sizes ≥ 1"):
            ProtectConfig(batch_buckets=bad)
    assert ProtectConfig.from_dict({"batch_buckets": [1, 3]}).batch_buckets == (1, 3)


def test_padding_changes_no_result_and_leaves_the_inert_rows_alone(
    model: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    mix, x = inputs(model, 3)
    groups = [0, 0, 1]  # a real group of two (the consistency term) and one alone
    config = ProtectConfig(views=0)
    plain = run_refine(model, mix, x, groups, config, steps=4)
    params: list[torch.Tensor] = []
    eager = refine.step_losses

    def step(param: torch.Tensor, *args: Any) -> Any:
        params.append(param)
        return eager(param, *args)

    monkeypatch.setattr(refine, "step_losses", step)
    padded = run_refine(model, mix, x, groups, config, steps=4, pad_to=5)
    assert params[0].shape[0] == 5 and padded.trainable.shape == plain.trainable.shape
    # the two inert copies of item 0 never moved: zero gradients all along
    assert torch.equal(params[0].detach()[3:], mix.trainable[[0, 0]])
    for name in ("loss_trace", "cosine_trace", "group_trace"):
        torch.testing.assert_close(getattr(padded, name), getattr(plain, name), rtol=1e-5, atol=1e-6, msg=name)
    # The CPU's float32 kernels block a batch of 5 differently from one of 3, and Adam's first steps
    # move by ~lr whatever a gradient's size: on an AVX-512 CPU the rows (|w| up to 5) differ by up to
    # 1.6e-4 after 4 steps of lr 0.01, while the losses above agree to 1e-5.
    torch.testing.assert_close(padded.trainable, plain.trainable, rtol=1e-4, atol=5e-4, msg="trainable")
    assert padded.loss_trace.shape == (4, 3) and padded.steps_run == 4


def test_compiled_protect_pads_to_its_bucket_and_returns_what_eager_does(
    model: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, groups = faces(3, seed=22), [0, 0, 1]
    eager = Protector(model, ProtectConfig(views=0)).protect(images, b"k", groups=groups, steps=3)
    sizes = spy_steps(monkeypatch)
    padded = Protector(model, ProtectConfig(views=0, compile="default")).protect(images, b"k", groups=groups, steps=3)
    assert sizes == [4] * 3
    for a, b in zip(eager, padded, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        np.testing.assert_allclose(b.template, a.template, atol=1e-4)
        np.testing.assert_allclose(b.loss_trace, a.loss_trace, rtol=1e-5, atol=1e-6)


def test_kept_outputs_survive_a_step_that_overwrites_its_last_outputs(
    model: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA-graph replay writes its outputs where the last replay's were: here the step fills
    its previous outputs with NaN first, and the traces still hold every step's values."""
    mix, x = inputs(model, 2)
    config = ProtectConfig(views=0)
    clean = run_refine(model, mix, x, [0, 1], config, steps=4)
    eager, last = refine.step_losses, []

    def overwriting_step(*args: Any) -> Any:
        with torch.no_grad():
            for tensor in last:
                tensor.fill_(float("nan"))
        last[:] = eager(*args)
        return tuple(last)

    monkeypatch.setattr(refine, "step_losses", overwriting_step)
    cosines: list[torch.Tensor] = []
    kept = run_refine(model, mix, x, [0, 1], config, steps=4, on_step=lambda step, cos: cosines.append(cos))
    for name in ("loss_trace", "cosine_trace", "group_trace"):
        torch.testing.assert_close(getattr(kept, name), getattr(clean, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(torch.stack(cosines), clean.cosine_trace, rtol=0, atol=0)


def test_warm_up_runs_every_bucket_a_batch_can_be_padded_to(model: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = spy_steps(monkeypatch)
    assert (
        Protector(model, ProtectConfig(views=0)).scheduler.warm_up() == [] and sizes == []
    )  # eager: nothing to compile
    protector = Protector(model, ProtectConfig(views=0, compile="default"))
    assert protector.scheduler.warm_up(max_items=3) == [1, 2, 4]  # a batch of 3 is padded to 4
    assert sizes == [1] * 3 + [2] * 3 + [4] * 3
    sizes.clear()
    protector.protect(faces(3, seed=23), b"k", steps=2)
    assert sizes == [4, 4]  # a bucket the warm-up ran
    sizes.clear()
    # no max_items: every bucket up to the refinement batch limit (5, rounded down to the bucket 4)
    assert Protector(model, ProtectConfig(views=0, compile="default", refine_batch=5)).scheduler.warm_up(steps=1) == [
        1,
        2,
        4,
    ]
    assert sizes == [1, 2, 4]


def test_memory_chunk_limit() -> None:
    assert memory_chunk_limit(10 * GiB, GiB, GiB // 2, 0.8) == 7  # (8 − 0.5) / 1
    assert memory_chunk_limit(100, 10, 20, 1.0) == 8
    assert memory_chunk_limit(100, 10, 20, 0.5) == 3
    assert memory_chunk_limit(100, 10, 0, 0.5) == 5  # exactly full
    assert memory_chunk_limit(10 * GiB, 12 * GiB, 0, 0.8) == 1  # not even one fits: one group at a time
    assert memory_chunk_limit(GiB, GiB, 2 * GiB, 0.9) == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"memory_fraction must be in \(0, 1\]"):
            ProtectConfig(memory_fraction=bad)


def test_refine_limit_on_cuda_comes_from_free_memory_and_the_step_memory(
    model: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA branch of the scheduler's limit with the device's answers stubbed: free memory plus what
    torch's allocator holds unused, × memory_fraction, over the measured step memory."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GiB)

    def limit(**config: Any) -> int:
        protector = Protector(model, ProtectConfig(views=0, **config))
        protector.scheduler.device = torch.device("cuda")  # only limit() reads it here
        monkeypatch.setattr(protector.scheduler, "step_memory", lambda: (GiB, GiB // 2))
        return protector.scheduler.limit()

    assert limit() == 8  # (11 · 0.8 − 0.5) / 1 = 8.3
    assert limit(memory_fraction=0.5) == 5  # (5.5 − 0.5) / 1
    assert limit(compile="default") == 8  # a bucket already
    assert limit(compile="default", memory_fraction=0.5) == 4  # rounded down to a bucket
    assert limit(refine_batch=6) == 6  # an explicit limit wins
    assert limit(refine_batch=6, compile="default") == 4


def test_refine_limit_on_the_cpu(model: Bundle) -> None:
    assert Protector(model, ProtectConfig(views=0)).scheduler.limit() == 24
    assert Protector(model, ProtectConfig(views=0, refine_batch=20)).scheduler.limit() == 20
    assert Protector(model, ProtectConfig(views=0, refine_batch=20, compile="default")).scheduler.limit() == 16
    # a limit past the last bucket is not rounded: larger batches run unpadded (mobile1024's buckets)
    assert Protector(model, ProtectConfig(views=0, compile="default", batch_buckets=(1, 2))).scheduler.limit() == 24


def test_the_inversion_renders_through_the_compiled_synthesis(model: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = spy_steps(monkeypatch)
    config = ProtectConfig(views=0, compile="default", inversion="optimize", inversion_steps=2)
    Protector(model, config).protect(faces(3, seed=24), b"k", steps=1)
    assert sizes == [3, 3, 4]  # two inversion steps of the three faces, unpadded; one refinement step padded


@pytest.mark.slow
def test_compiled_for_real_no_recompile_after_the_warm_up(model: Bundle) -> None:
    """torch.compile on the CPU (inductor, minutes on 2 cores): after warm_up, batches of every size
    up to the largest bucket run compiled graphs without a recompile: the warm-up's inert batches
    are guarded as the requests' batches are. test_gpu_core.py repeats this on CUDA."""
    torch._dynamo.reset()
    protector = Protector(model, ProtectConfig(views=0, compile="default", batch_buckets=(2, 4)))
    assert protector.scheduler.warm_up(max_items=4, steps=1) == [2, 4]
    with torch._dynamo.config.patch(error_on_recompile=True):
        outcomes = [protector.protect(faces(n, seed=40 + n), b"k", steps=2) for n in (1, 3, 4)]
        # one group of 5, past the last bucket: the shape-generic graph compiled at the second bucket
        outcomes.append(protector.protect(faces(5, seed=45), b"k", groups=[0] * 5, steps=1))
        # the check is live: a render at another resolution is a new graph
        half = Protector(model, replace(protector.config, loss_resolution=model.generator.size // 2))
        with pytest.raises(torch._dynamo.exc.RecompileError):
            half.protect(faces(1, seed=46), b"k", steps=1)
    assert [len(o) for o in outcomes] == [1, 3, 4, 5]

"""Issue 28, "wrong answers", on the tiny bundle (CPU): what the core returns is what it did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anonymixer import bundle, protect
from anonymixer.config import ProtectConfig
from anonymixer.losses import E4EFeatureLoss
from anonymixer.protect import OutOfMemory, ProtectedFace, Protector, RefinementStopped, Stopped, image_tensor
from tests.test_protect import assert_same_faces, faces


def stop_at(call: int):
    """An ``on_step`` that returns False at its ``call``-th call (0-based), counted over every batch."""
    calls = []

    def on_step(step, cos) -> bool:
        calls.append(step)
        return len(calls) <= call

    return on_step


def test_a_stopped_refinement_returns_no_face_for_the_batches_that_never_ran(tiny_bundle_dir: Path) -> None:
    """One item per batch, 4 steps asked; on_step says stop at the second step of the second batch:
    the first face had its 4 steps, the second its 2, and the third never ran, so it is no face."""
    protector = Protector(bundle.load(tiny_bundle_dir), ProtectConfig(views=0, refine_batch=1))
    images, keys = faces(3, seed=41), [b"k0", b"k1", b"k2"]
    outcomes = protector.protect_each(images, keys, steps=4, on_step=stop_at(5))
    assert [type(o) for o in outcomes] == [ProtectedFace, ProtectedFace, Stopped]
    assert [o.steps for o in outcomes[:2]] == [4, 2] and [len(o.loss_trace) for o in outcomes[:2]] == [4, 2]
    assert protector.refined_items == 2
    with pytest.raises(RefinementStopped, match="with 2 of 3 faces refined"):
        protector.protect(images, keys, steps=4, on_step=stop_at(5))
    # stopped in the last batch, every face was refined: protect() returns them, each with its own steps
    assert [f.steps for f in protector.protect(images, keys, steps=4, on_step=stop_at(9))] == [4, 4, 2]


INVERT = {"views": 0, "inversion": "optimize", "inversion_steps": 2, "attribute_loss": "fr_features"}


def test_an_inversion_batch_out_of_memory_is_split_and_retried(tiny_bundle_dir: Path) -> None:
    """A tiny inversion step saves ~1.2 MiB + ~15 MiB per face for backward: 40 MiB holds two faces, not four."""
    model = bundle.load(tiny_bundle_dir)
    images = faces(4, seed=43)
    free = Protector(model, ProtectConfig(**INVERT)).invert(images)
    tight = Protector(model, ProtectConfig(**INVERT, memory_budget_mib=40))
    torch.testing.assert_close(tight.invert(images), free, atol=1e-5, rtol=1e-4)
    assert tight.splits == [
        "an inversion batch of 4 items ran out of memory; retrying it as 2 + 2 items: "
        "inversion of 4 items needs more than 40 MiB of activations (memory_budget_mib)"
    ]
    nothing_fits = Protector(model, ProtectConfig(**INVERT, memory_budget_mib=10))
    with pytest.raises(MemoryError, match=r"^inversion of 1 items needs more than 10 MiB"):
        nothing_fits.invert(images)
    outcomes = nothing_fits.protect_each(images, b"k", steps=1)
    assert all(isinstance(o, OutOfMemory) and o.message.startswith("inversion of 1 items") for o in outcomes)
    assert nothing_fits.inverted_items == nothing_fits.refined_items == 0 and "refine" not in nothing_fits.timings


def test_a_face_whose_inversion_does_not_fit_alone_fails_only_its_items(
    tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory injected for every inversion batch that holds face b (a real one cannot be had
    at will on the CPU): b's two items are OutOfMemory, the others are the faces they would be."""
    a, b, c = faces(3, seed=44)
    images, keys = [a, b, c, b], [b"ka", b"kb", b"kc", b"kb2"]
    model = bundle.load(tiny_bundle_dir)
    free = Protector(model, ProtectConfig(**INVERT)).protect_each([a, c], [b"ka", b"kc"], steps=2)
    real, face_b = protect.invert_as_configured, image_tensor(b, torch.device("cpu"))

    def out_of_memory_with_b(x: torch.Tensor, *args, **kwargs):
        if any(torch.equal(face, face_b) for face in x):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory with {len(x)} faces")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(protect, "invert_as_configured", out_of_memory_with_b)
    protector = Protector(model, ProtectConfig(**INVERT))
    outcomes = protector.protect_each(images, keys, steps=2)
    assert [type(o) for o in outcomes] == [ProtectedFace, OutOfMemory, ProtectedFace, OutOfMemory]
    assert outcomes[1] == outcomes[3] == OutOfMemory("CUDA out of memory with 1 faces")
    # faces a, b, c → {a, b} + {c}; then {a} + {b}, and b alone is out of memory
    assert [s.split(":")[0] for s in protector.splits] == [
        "an inversion batch of 3 items ran out of memory; retrying it as 2 + 1 items",
        "an inversion batch of 2 items ran out of memory; retrying it as 1 + 1 items",
    ]
    assert protector.inverted_items == 2 and protector.refined_items == 2
    for got, expected in zip((outcomes[0], outcomes[2]), free, strict=True):
        assert_same_faces(got, expected)
    with pytest.raises(MemoryError, match="CUDA out of memory with 1 faces"):
        protector.protect(images, keys, steps=2)


class Recording(E4EFeatureLoss):
    """The default attribute loss, keeping the range of every picture the refinement's losses are given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[float] = []

    def forward(self, y: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        self.seen.append(float(y.detach().abs().amax()))
        return super().forward(y, targets)


def test_the_losses_see_the_returned_picture_clamped_as_it_is(tiny_bundle_dir: Path) -> None:
    """The returned picture is clamped to [-1, 1] (quantize); the tiny generator renders a quarter of
    its pixels past it. Its losses saw the unclamped render: out-of-range pixels bought a cos the
    returned face did not have."""
    model = bundle.load(tiny_bundle_dir)
    recording = Recording(model.require_encoder("the test").encoder)
    protector = Protector(model, ProtectConfig(views=0), attribute_loss=recording)
    embedded: list[float] = []

    def keep(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        embedded.append(float(args[0].detach().abs().amax()))

    hook = model.face_embedder.register_forward_pre_hook(keep)
    try:
        face = protector.protect(faces(1, seed=45), b"k", steps=3)[0]
    finally:
        hook.remove()
    assert face.steps == 3 and len(recording.seen) == 3
    assert max(recording.seen) <= 1 + 1e-6 and max(embedded) <= 1 + 1e-6


@pytest.mark.parametrize("inversion", ["encoder", "optimize"])
def test_protect_under_no_grad_refines_as_it_does_outside_it(tiny_bundle_dir: Path, inversion: str) -> None:
    """A caller's torch.no_grad() once made protect() raise; the refinement and the inversion by
    optimisation enable grad themselves (2b1117f). Under it, the face is refined, and the same."""
    protector = Protector(bundle.load(tiny_bundle_dir), ProtectConfig(**{**INVERT, "inversion": inversion}))
    image = faces(1, seed=46)
    unrefined = protector.protect(image, b"k", steps=0)[0]
    expected = protector.protect(image, b"k", steps=3)[0]
    with torch.no_grad():
        face = protector.protect(image, b"k", steps=3)[0]
    assert face.steps == 3 and len(face.loss_trace) == 3
    assert np.array_equal(face.image, expected.image) and not np.array_equal(face.image, unrefined.image)


def test_the_inversion_by_optimisation_reports_every_step(tiny_bundle_dir: Path) -> None:
    """A server's heartbeat hears the inversion's steps as it hears the refinement's: minutes of
    inversion on a CPU must not look like a stub that stopped making progress."""
    config = ProtectConfig(views=0, inversion="optimize", inversion_steps=4, attribute_loss="fr_features")
    heard: list[int] = []
    p = Protector(bundle.load(tiny_bundle_dir), config, on_inversion_step=lambda step, *_: heard.append(step))
    p.protect(faces(2, seed=61), b"inversion beats", steps=1)
    assert heard == [0, 1, 2, 3]  # both faces invert in one batch: one call per step

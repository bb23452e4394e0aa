"""Issue 28, "wrong answers", on the tiny bundle (CPU): what the core returns is what it did."""

from __future__ import annotations

from pathlib import Path

import pytest

from anonymixer import bundle
from anonymixer.config import ProtectConfig
from anonymixer.protect import ProtectedFace, Protector, RefinementStopped, Stopped
from tests.test_protect import faces


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

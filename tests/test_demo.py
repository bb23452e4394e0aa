"""The README's main job: sample faces protected under two keys, a before/after grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymixer.demo import main as demo_main
from tests.conftest import FACES, need

TILE = 260  # 256 px tile + 4 px gap


def test_demo_builds_the_bundle_and_writes_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skimage", reason="the built-in sample portrait ships with scikit-image")
    assert demo_main(["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "out"), "--steps", "3"]) == 0
    assert (tmp_path / "bundle" / "bundle.json").exists()
    grid = np.asarray(Image.open(tmp_path / "out" / "before_after.png"))
    assert grid.shape == (4 + TILE, 4 + 3 * TILE, 3)
    before, key_a, key_b = (grid[4:TILE, 4 + TILE * c : TILE * (c + 1)] for c in range(3))
    assert before.std() > 10 and key_a.std() > 1
    assert not np.array_equal(before, key_a) and not np.array_equal(key_a, key_b)
    out = capsys.readouterr().out
    assert "key 1: 1 face(s), 3 steps, 5 views each" in out and "key 2:" in out


def test_demo_on_real_photos(tmp_path: Path) -> None:
    faces = need(FACES)
    argv = [
        "--bundle",
        str(tmp_path / "b"),
        "--faces",
        str(faces),
        "--limit",
        "3",
        "--steps",
        "2",
        "--keys",
        "only one",
        "--out",
        str(tmp_path / "out"),
    ]
    assert demo_main(argv) == 0
    # the built-in sample, then the three photos
    assert Image.open(tmp_path / "out" / "before_after.png").size == (4 + 2 * TILE, 4 + 4 * TILE)


def test_demo_names_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        demo_main(["--bundle", str(tmp_path / "b"), "--faces", str(tmp_path / "nope.jpg")])

"""The README's main job at this stage: sample faces through the tiny bundle, a before/after grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymixer.demo import main as demo_main
from tests.conftest import FACES, need


def test_demo_builds_the_bundle_and_writes_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skimage", reason="the built-in sample portrait ships with scikit-image")
    assert demo_main(["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "bundle" / "bundle.json").exists()
    grid = np.asarray(Image.open(tmp_path / "out" / "before_after.png"))
    assert grid.shape == (4 + 260, 4 + 2 * 260, 3)
    before, after = grid[4:260, 4:260], grid[4:260, 264:520]
    assert before.std() > 10
    assert after.std() > 1
    assert not np.array_equal(before, after)
    assert "1 face(s) through the tiny bundle" in capsys.readouterr().out


def test_demo_on_real_photos(tmp_path: Path) -> None:
    faces = need(FACES)
    assert (
        demo_main(
            ["--bundle", str(tmp_path / "b"), "--faces", str(faces), "--limit", "3", "--out", str(tmp_path / "out")]
        )
        == 0
    )
    assert Image.open(tmp_path / "out" / "before_after.png").size == (4 + 2 * 260, 4 + 3 * 260)


def test_demo_names_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        demo_main(["--bundle", str(tmp_path / "b"), "--faces", str(tmp_path / "nope.jpg")])

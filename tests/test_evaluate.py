"""The privacy evaluation end to end with the tiny bundle on real photos (a random-weight run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from anonymixer.evaluate import main
from tests.conftest import FACES, MOBILEFACENET, need


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_the_report_runs_end_to_end(where: str, tmp_path: Path, tiny_bundle_dir: Path, request) -> None:
    out = tmp_path / "report"
    args = ["--data", str(need(FACES)), "--identities", str(FACES / "identities.csv"), "--bundle", str(tiny_bundle_dir)]
    args += ["--matchers", f"mobilefacenet={need(MOBILEFACENET)}", "--limit-people", "2", "--steps", "1"]
    if where == "server":  # protected by the live service (its bundle is the same tiny one)
        args += ["--server", request.getfixturevalue("triton_server").grpc_url]
    else:
        args += ["--views", "0"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["random_weights"] and report["people"] == 2 and report["key_sets"] == 2
    assert set(report["matchers"]) == {"loss", "mobilefacenet"}
    real = report["matchers"]["mobilefacenet"]
    # The real matcher on the originals: these two people are told apart perfectly.
    assert real["originals"]["auc"] == 1.0 and real["originals"]["eer"] == 0.0
    assert real["originals"]["thresholds"]["1e-05"] is None  # far too few impostor pairs to measure it
    for m in report["matchers"].values():
        assert 0 <= m["unlinkability_d_sys"] <= 1
        assert set(m["irreversibility_match_rate"]) == {"reinvert", "unmix_with_key_knowledge"}
        thresholds = m["originals"]["thresholds"]
        for fmr, psr in m["psr"].items():  # measured exactly where the originals give a threshold
            assert (psr is None) == (thresholds[fmr] is None) and (psr is None or 0 <= psr <= 1)
    text = (out / "report.md").read_text()
    assert "Random-weight bundle" in text and "## Matcher `mobilefacenet`" in text
    grid = Image.open(out / "grid.png")
    assert grid.size == (4 + 5 * 132, 4 + 2 * 132)  # original, 2 key sets, 2 attacks; one row per person
    for plot in ("unlinkability", "det"):
        assert Image.open(out / f"{plot}_mobilefacenet.png").size[0] > 300

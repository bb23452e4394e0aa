"""The privacy evaluation end to end on real photos — in-process with the real mobile1024 weights
(tiny where they are absent) and through the live service — and the independent dlib matcher on
the labelled photos."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from anonymixer.face_detection import FaceDetector
from evaluation.cli import main
from evaluation.matchers import DlibMatcher
from evaluation.metrics import ByPerson, roc_auc
from evaluation.protocol import TARGETS
from evaluation.run import load_faces
from tests.conftest import FACES, MOBILEFACENET, need

pytest.importorskip("dlib", reason="the dlib matcher needs the eval extra (scripts/install.sh installs it)")


@pytest.fixture(scope="module")
def real_or_tiny_bundle(request: pytest.FixtureRequest) -> Path:
    """mobile1024 where its weights can be had (the random-face wheel + ../shared), else tiny."""
    try:
        return Path(request.getfixturevalue("mobile_bundle_dir"))
    except pytest.skip.Exception:
        return Path(request.getfixturevalue("tiny_bundle_dir"))


# three photos of each person: a probe and an enroll group of two, protected together
PHOTOS = 3


def evaluate(out: Path, *options: str) -> dict[str, Any]:
    """The command on two people (the default --stolen-keys 0: both are targets)."""
    args = ["--data", str(need(FACES)), "--identities", str(FACES / "identities.csv"), "--limit-people", "2"]
    args += ["--matchers", f"mobilefacenet={need(MOBILEFACENET)}", "dlib", "--steps", "1"]
    args += ["--photos-per-person", str(PHOTOS), "--bootstrap", "50", *options, "--out", str(out)]
    assert main(args) == 0
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def check_report(report: dict[str, Any], out: Path, *, matchers: set[str]) -> None:
    protected = 2 * PHOTOS
    assert report["people"] == 2 and report["protected_photos"] == protected and report["settings"]["keys"] == 2
    assert report["stolen_key_targets"] == 2 and report["settings"]["stolen_keys"] == 0
    assert report["enrolled_people"] == 2 and report["enrolled_photos"] == protected - 2
    assert set(report["matchers"]) == matchers
    for name, m in report["matchers"].items():
        originals = m["originals"]
        if name != "loss":  # real networks tell these two people apart on their own photos
            assert originals["auc"]["value"] == 1.0 and originals["eer"]["value"] == 0.0, name
        assert originals["thresholds"]["1e-05"] is None  # far too few impostor pairs to measure it
        for fmr, psr in m["psr"].items():  # measured exactly where the originals give a threshold
            assert (psr["value"] is None) == (originals["thresholds"][fmr] is None)
            assert psr["value"] is None or 0 <= psr["value"] <= 1
        sk = m["stolen_key"]
        assert sk["targets"] == 2 and sk["candidates"] == 2 and sk["chance"] == 0.5
        assert sk["rank_one"]["value"] in (0.0, 0.5, 1.0)
        for fmr, threshold in originals["thresholds"].items():  # nothing is read where no threshold is
            rates = (m["psr_detected"], sk["impostor_fmr"], sk["ordinary_impostor_fmr"])
            assert threshold is not None or all(rate[fmr]["value"] is None for rate in rates)
        assert m["detection"]["protected"] == protected and 0 <= m["detection"]["found"] <= protected
        enroll = m["enroll_flow"]  # each person's probe against both enrolled templates
        assert enroll["people"] == 2 and enroll["pairs"] == {"genuine": 2, "impostor": 2}
        same_key = m["same_key_across_photos"]
        assert same_key["pairs"] == 2 * comb(PHOTOS, 2)
        assert (same_key["rule"] == "distance < 0.6") == (name == "dlib")
        revocability = m["revocability"]
        assert revocability["same_photo"]["pairs"]["genuine"] == protected
        assert revocability["other_photo"]["pairs"]["genuine"] == protected * (PHOTOS - 1)
        assert [row["measure"] for row in m["targets"]] == [t.label for t in TARGETS]
        assert all((row["pass"] is None) == (row["value"] is None) for row in m["targets"])
        assert set(m["attacks"]) == {"re-inversion", "prior-mean", "key-aware", "reconstruction"}
        link = m["unlinkability_d_sys"]["value"]
        assert link is None or 0 <= link <= 1
    assert not report["matchers"]["dlib"]["white_box"]
    quality = report["image_quality"]
    assert set(quality) == {"protected (key set 0)", "reconstructions (no key: the inversion's own loss)"}
    assert all(q["images"] == protected and q["fid"] > 0 and q["kid_std"] >= 0 for q in quality.values())
    text = (out / "report.md").read_text()
    assert "## Side by side with the paper" in text and "0.8873" in text and "## Matcher `dlib`" in text
    assert text.count("| measure | value [95 % interval] | target | |") == len(matchers)
    # per person: original, reconstruction, two key sets, three attacks
    assert Image.open(out / "grid.png").size == (4 + 7 * 132, 4 + 2 * 132)
    for plot in ("det", "unlinkability"):
        assert Image.open(out / f"{plot}_mobilefacenet.png").size[0] > 300


def test_in_process_with_real_weights_where_present(tmp_path: Path, real_or_tiny_bundle: Path) -> None:
    out = tmp_path / "report"
    report = evaluate(out, "--bundle", str(real_or_tiny_bundle), "--inversion-steps", "1", "--views", "0")
    tiny = report["random_weights"]
    check_report(report, out, matchers={"loss", "mobilefacenet", "dlib"} if tiny else {"mobilefacenet", "dlib"})
    # mobile1024's FR network is this MobileFaceNet (same file): it is the white-box matcher
    assert report["matchers"]["mobilefacenet"]["white_box"] != tiny
    assert ("Random-weight bundle" in (out / "report.md").read_text()) == tiny
    # the faces again from outcome.npz, enroll groups included: the same figures
    again = evaluate(
        tmp_path / "again", "--bundle", str(real_or_tiny_bundle), "--rescore", str(out), "--no-image-quality"
    )
    for name, m in report["matchers"].items():
        for figures in ("enroll_flow", "same_key_across_photos", "revocability", "stolen_key", "targets"):
            assert again["matchers"][name][figures] == m[figures], (name, figures)


def test_through_the_service(tmp_path: Path, tiny_bundle_dir: Path, triton_server: Any) -> None:
    out = tmp_path / "report"
    report = evaluate(out, "--server", triton_server.grpc_url, "--bundle", str(tiny_bundle_dir))
    assert report["where"].startswith("through the service") and report["random_weights"]
    assert report["settings"]["inversion_steps"] == "the server's"
    check_report(report, out, matchers={"loss", "mobilefacenet", "dlib"})


def test_dlib_tells_the_labelled_people_apart() -> None:
    """dlib's own alignment on the aligned originals: AUC > 0.99 over every pair of labelled photos."""
    faces, _ = load_faces(need(FACES), FACES / "identities.csv", "ffhq", None)
    matcher = DlibMatcher(FaceDetector())
    templates = matcher.embed(np.stack([f.aligned for f in faces]))
    assert not np.isnan(templates).any()  # dlib finds a face in every aligned photo
    people = [f.person for f in faces]
    genuine, impostor = ByPerson.pairs(matcher.compare(templates, templates), people, people, one_set=True).all()
    assert len(genuine) > 100 and len(impostor) > 1000
    assert roc_auc(genuine, impostor) > 0.99
    # dlib's documented rule (distance < 0.6: one person) holds on these photos too
    assert np.mean(-genuine < 0.6) > 0.9 and np.mean(-impostor >= 0.6) > 0.95

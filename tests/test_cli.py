"""``anonymixer serve`` and ``anonymixer demo``: the one-command paths of the README."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from optimizer_backend.server import free_port
from tests.conftest import FACES

TILE = 260  # 256 px grid tile + 4 px gap


def processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


@pytest.mark.parametrize(
    "command",
    [["optimizer_backend.cli", "serve"], ["optimizer_backend.server"]],
    ids=["anonymixer serve", "python -m optimizer_backend.server"],
)
def test_serve_serves_and_stops_cleanly(tmp_path: Path, triton_repository: Path, command: list[str]) -> None:
    repository = Path(shutil.copytree(triton_repository, tmp_path / "repository"))  # its own processes
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            *command,
            "--repository",
            str(repository),
            "--grpc-port",
            str(ports[0]),
            "--http-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        assert "anonymixer ready" in lines[0] and f"127.0.0.1:{ports[0]}" in lines[1]
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as client:
            assert client.is_model_ready("anonymixer")
        stubs = [p for p in processes_mentioning(str(repository)) if p != process.pid]
        assert stubs  # the server and its backend stubs
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert processes_mentioning(str(repository)) == []  # no orphaned tritonserver or stub processes
    finally:
        if process.poll() is None:
            process.kill()


def test_demo_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("skimage", reason="the built-in sample portrait ships with scikit-image")
    extra = ["--faces", str(FACES / "img1.jpg")] if (FACES / "img1.jpg").exists() else []
    done = subprocess.run(
        [sys.executable, "-m", "optimizer_backend.cli", "demo", "--steps", "2", "--out", "demo", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny bundle: seeded random weights" in done.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    rows = 1 + len(extra) // 2
    assert summary["profile"] == "tiny" and summary["keys"] == 2 and len(summary["faces"]) == rows
    assert len(summary["template_cosine_between_keys"]) == rows
    # items, not requests: 2 keys × the aligned faces, plus the faces of the scene-mode pass
    assert [scene["faces"] for scene in summary["scenes"]] == [["protected"]] * rows
    assert summary["server"]["inference_count"] == 3 * rows
    side_by_side = np.asarray(Image.open(tmp_path / "demo" / "scenes" / "astronaut.png"))
    assert side_by_side.shape == (512, 1024, 3) and not np.array_equal(side_by_side[:, :512], side_by_side[:, 512:])
    grid = np.asarray(Image.open(tmp_path / "demo" / "before_after.png"))
    assert grid.shape == (4 + rows * TILE, 4 + 3 * TILE, 3)
    key_a, key_b = grid[4:TILE, 4 + TILE : 2 * TILE], grid[4:TILE, 4 + 2 * TILE : 3 * TILE]
    assert not np.array_equal(key_a, key_b)
    assert (tmp_path / "build" / "cache" / "repositories").is_dir()


def test_a_killed_launcher_leaves_no_server_behind(tmp_path: Path, triton_repository: Path) -> None:
    """SIGKILL of the launching process: the kernel tells Triton (PR_SET_PDEATHSIG), which unloads and exits."""
    import time

    repository = Path(shutil.copytree(triton_repository, tmp_path / "repository"))
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom optimizer_backend.server import EmbeddedTritonServer\n"
            "EmbeddedTritonServer(sys.argv[1]).start().wait_ready(120)\nprint('ready', flush=True)\ntime.sleep(600)\n",
            str(repository),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdout.readline().strip() == "ready"
        assert len(processes_mentioning(str(repository))) >= 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 60
        while processes_mentioning(str(repository)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_mentioning(str(repository)) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_mobile1024_commands_say_what_they_need(tmp_path: Path) -> None:
    """serve without the FR weights names the download command; demo (no encoder yet) explains itself
    before it builds a repository or starts a server."""
    from tests.conftest import MOBILEFACENET, need

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "optimizer_backend.cli", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)  # its build/cache is tmp's

    missing = run("serve", "--profile", "mobile1024")
    assert missing.returncode != 0
    assert "needs --weights DIR holding mobilefacenet.pt" in missing.stderr
    assert "python -m exporter download --dest DIR mobilefacenet" in missing.stderr
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "mobilefacenet.pt").symlink_to(need(MOBILEFACENET))
    demo = run("demo", "--profile", "mobile1024", "--weights", str(weights))
    assert demo.returncode != 0
    assert "this bundle has no encoder" in demo.stderr and "python -m exporter faces --bundle" in demo.stderr
    assert not list(tmp_path.glob("build/cache/repositories/*"))

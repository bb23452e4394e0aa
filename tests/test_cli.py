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

from optimizer_backend.server import free_ports
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


def test_serve_serves_and_stops_cleanly(tmp_path: Path, triton_repository: Path) -> None:
    repository = Path(shutil.copytree(triton_repository, tmp_path / "repository"))  # its own processes
    ports = free_ports(4)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apps",
            "serve",
            "--repository",
            str(repository),
            "--grpc-port",
            str(ports[0]),
            "--http-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
            "--health-port",
            str(ports[3]),
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
    """The README's demo (tiny here: the real-weight run takes minutes) with the Makefile's photos."""
    pair, scene = [FACES / "img1.jpg", FACES / "img2.jpg"], FACES / "couple.jpg"
    if all(p.exists() for p in (*pair, scene)):
        extra, rows, scene_name, scene_faces = ["--pair", *map(str, pair), "--scenes", str(scene)], 2, "couple", 2
    else:
        pytest.importorskip("skimage", reason="the built-in sample portrait ships with scikit-image")
        extra, rows, scene_name, scene_faces = [], 1, "astronaut", 1
    done = subprocess.run(
        [sys.executable, "-m", "apps", "demo", "--profile", "tiny", "--steps", "2", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny bundle: seeded random weights" in done.stderr
    summary = json.loads((tmp_path / "out" / "demo" / "summary.json").read_text())
    assert summary["profile"] == "tiny" and summary["keys"] == 2 and len(summary["faces"]) == rows
    assert len(summary["template_cosine_between_keys"]) == rows
    assert [scene["faces"] for scene in summary["scenes"]] == [["protected"] * scene_faces]
    # items, not requests: 2 keys × the aligned faces, plus the faces of the scene-mode pass
    assert summary["server"]["inference_count"] == 2 * rows + scene_faces
    if rows == 2:
        assert summary["same_person_pair"]["photos"] == ["img1", "img2"]
        assert len(summary["same_person_pair"]["template_cosine_per_key"]) == 2
    photo = np.asarray(Image.open(tmp_path / "out" / "demo" / "scenes" / f"{scene_name}.png"))
    half = photo.shape[1] // 2
    assert not np.array_equal(photo[:, :half], photo[:, half:])
    grid = np.asarray(Image.open(tmp_path / "out" / "demo" / "before_after.png"))
    assert grid.shape == (4 + rows * TILE, 4 + 4 * TILE, 3)  # original | reconstruction | key 1 | key 2
    key_a, key_b = grid[4:TILE, 4 + 2 * TILE : 3 * TILE], grid[4:TILE, 4 + 3 * TILE : 4 * TILE]
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
    """serve without the FR weights names the download command before it builds anything; the demo
    finds ../shared's MobileFaceNet by itself (its pinned hash checked)."""
    from tests.conftest import MOBILEFACENET, need

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "apps", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)  # its build/cache is tmp's

    missing = run("serve", "--profile", "mobile1024")
    assert missing.returncode != 0
    assert "needs --weights DIR holding mobilefacenet.pt" in missing.stderr
    assert "python -m exporter download --dest DIR mobilefacenet" in missing.stderr
    assert not list(tmp_path.glob("build/cache/*"))
    need(MOBILEFACENET)
    from apps.demo import demo_weights

    assert demo_weights("mobile1024", None) == ("mobile1024", str(MOBILEFACENET.parent))
    assert demo_weights("tiny", None) == ("tiny", None)

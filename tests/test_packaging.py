"""A non-editable install: the wheel ``pip install .`` builds runs ``anonymixer --help`` and
``python -m evaluation --help`` on its own (no checkout on the path, no benchmarks/), and the
server's dependencies carry no plotting library."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel installed, without its dependencies, into a folder of its own. Built from
    a clean copy of the checkout: setuptools would leave build/ in the checkout, and a stale module
    there would go into the next wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    skipped = (".git", ".venv", "build", "out", "__pycache__", "*.egg-info", ".*_cache")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skipped))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("anonymixer-*.whl")
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    return target


def run_installed(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python with only the installed wheel and the environment's dependencies on its path: ``-S``
    skips site.py, so the checkout's editable-install hook is never loaded."""
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    env.pop("PYTHONSAFEPATH", None)
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=site.parent, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_holds_the_commands_and_not_the_benchmarks(installed: Path) -> None:
    packages = {p.name for p in installed.iterdir() if (p / "__init__.py").exists()}
    assert packages == {"anonymixer", "apps", "evaluation", "exporter", "optimizer_backend", "webui"}
    (entry_points,) = installed.glob("anonymixer-*.dist-info/entry_points.txt")
    assert "anonymixer = apps.cli:main" in entry_points.read_text()


def test_its_commands_run_from_the_wheel_alone(installed: Path) -> None:
    for args, expected in (
        (["-c", "from apps.cli import main; main(['--help'])"], "{serve,demo,ui}"),
        (["-c", "from apps.cli import main; main(['serve', '--help'])"], "--probe-timeout"),
        (["-m", "evaluation", "--help"], "--matchers"),
    ):
        done = run_installed(installed, *args)
        assert done.returncode == 0, done.stderr[-2000:]
        assert expected in done.stdout
        assert str(installed) in run_installed(installed, "-c", "import apps; print(apps.__file__)").stdout


def test_the_gpu_image_copies_what_the_launcher_imports(installed: Path) -> None:
    """docker/gpu.Dockerfile installs the project from the folders it copies: every project package
    `anonymixer serve` imports must be among them (the image cannot be built here)."""
    project = {"anonymixer", "apps", "evaluation", "exporter", "optimizer_backend", "anonymixer_client"}
    probe = f"import sys, apps.cli; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {project})))"
    done = run_installed(installed, "-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = (REPO / "docker" / "gpu.Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) /src/\1$", dockerfile, re.M))
    assert set(done.stdout.split()) <= copied


def test_the_server_carries_no_plotting_library_nor_the_page(installed: Path) -> None:
    """Plots and the browser front end (gradio, the ui extra) are never server dependencies."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in dependencies if d.startswith(("matplotlib", "seaborn", "plotly", "gradio"))]
    server = "apps.cli, optimizer_backend.serve, optimizer_backend.anonymixer_model, optimizer_backend.scene_model"
    loaded = "[m for m in ('matplotlib', 'gradio') if m in sys.modules]"
    done = run_installed(installed, "-c", f"import sys, {server}; print({loaded})")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"

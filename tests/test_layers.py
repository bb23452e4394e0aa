"""The project's layers, enforced: which package may import which (every import statement, those
inside functions too), where torch, the wire (tritonclient's gRPC/HTTP client) and plotting may
appear, and that the README's layout table names exactly the folders there are."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PROJECT = {
    "anonymixer",
    "exporter",
    "optimizer_backend",
    "evaluation",
    "apps",
    "benchmarks",
    "anonymixer_client",
    "webui",
}
# package → the project packages it may import (itself included); nothing may import benchmarks
ALLOWED = {
    "anonymixer": {"anonymixer"},  # the core imports nothing of the project above it
    "exporter": {"anonymixer", "exporter"},
    "optimizer_backend": {"anonymixer", "exporter", "optimizer_backend"},  # the Triton adapter and the launcher
    "anonymixer_client": {"anonymixer_client"},
    "evaluation": {"anonymixer", "exporter", "anonymixer_client", "evaluation"},
    "webui": {"anonymixer_client", "webui"},  # the browser front end: a client like any other
    "apps": {"anonymixer", "exporter", "optimizer_backend", "anonymixer_client", "webui", "apps"},
    "benchmarks": PROJECT,
}
# folder → the package it holds
FOLDERS = {p: p for p in ALLOWED if p != "anonymixer_client"} | {"client/anonymixer_client": "anonymixer_client"}
# third-party modules only these packages may import
ONLY_IN = {
    "torch": set(ALLOWED) - {"anonymixer_client", "webui"},  # the client and the page never import torch
    "gradio": {"webui"},  # the page's toolkit: never a server dependency
    "matplotlib": {"evaluation", "benchmarks"},  # plots: not a server dependency
    # the wire format: the service is spoken to through anonymixer_client only (the repository
    # schema, tritonclient.grpc.model_config_pb2, is not the wire and is allowed to the server side)
    "tritonclient.grpc": {"anonymixer_client"},
    "tritonclient.http": {"anonymixer_client"},
}
SCHEMA = "tritonclient.grpc.model_config_pb2"


def imported_modules(source: str) -> list[str]:
    """What each import statement of ``source`` brings in, by full name (``from a.b import c``
    gives ``a.b.c``, a module or a name of ``a.b``)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def violations(package: str, source: str) -> list[str]:
    problems = []
    for name in imported_modules(source):
        top = name.split(".")[0]
        if top in PROJECT and top not in ALLOWED[package]:
            problems.append(f"imports {name} (a {package} module may import {sorted(ALLOWED[package])})")
        for module, packages in ONLY_IN.items():
            if (name == module or name.startswith(module + ".")) and name != SCHEMA and package not in packages:
                problems.append(f"imports {name} (only {sorted(packages)} may)")
    return sorted(set(problems))


def package_files() -> dict[Path, str]:
    return {path: package for folder, package in FOLDERS.items() for path in (REPO / folder).rglob("*.py")}


def test_the_checker_catches_a_wrong_import() -> None:
    assert violations("evaluation", "from benchmarks.machine import describe\n")  # upward
    assert violations("anonymixer", "def f():\n    from optimizer_backend import serve\n")  # even inside a function
    assert violations("anonymixer_client", "import torch\n")
    assert violations("webui", "from anonymixer.keys import key_latent\n")  # the page is a client only
    assert violations("webui", "import torch\n")
    assert violations("apps", "import gradio as gr\n")  # gradio stays inside webui/
    assert violations("apps", "import tritonclient.grpc as grpcclient\n")  # the wire, not through the client
    assert violations("exporter", "from matplotlib import pyplot\n")
    assert not violations("exporter", "from tritonclient.grpc import model_config_pb2 as mc\n")  # the schema
    assert not violations("benchmarks", "from evaluation.plots import pyplot\nfrom apps import demo\n")


def test_every_package_has_a_rule() -> None:
    """A new top-level package must be given a place in the layers before it can be used."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} | {"anonymixer_client"}
    assert packages - {"tests"} == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers(package: str) -> None:
    problems = [
        f"{path.relative_to(REPO)}: {problem}"
        for path, owner in package_files().items()
        if owner == package
        for problem in violations(package, path.read_text())
    ]
    assert problems == []


def test_nothing_imports_benchmarks() -> None:
    importers = [
        path.relative_to(REPO).as_posix()
        for path, package in package_files().items()
        if package != "benchmarks" and any(n.split(".")[0] == "benchmarks" for n in imported_modules(path.read_text()))
    ]
    assert importers == []


def test_the_readme_layout_table_names_every_folder() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n\n")[1]
    named = {
        name.rstrip("/") for row in table.splitlines()[2:] for name in re.findall(r"`([^`]+/)`", row.split("|")[1])
    }
    folders = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")}
    ignored = {p for p in folders if (REPO / p).is_dir() and _ignored(p)}
    assert named == folders - ignored


def _ignored(folder: str) -> bool:
    """Build outputs and caches (.gitignore's folders), not part of the layout."""
    patterns = [line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()]
    return folder in patterns or folder.endswith(".egg-info") or folder == "__pycache__"

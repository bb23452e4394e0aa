"""The build cache: bundles and Triton repositories built on first use, found again by content.

    bundle_dir = cached_bundle("mobile1024", weights="weights/")       # build/cache/bundles/mobile1024-<hash>
    repository = cached_repository(bundle_dir, gpu=False)               # build/cache/repositories/<hash>/models

A folder's name is a hash of what it is built from: a bundle's source files (their SHA-256s)
and the settings baked into it; a repository's ``bundle.json``, its :class:`RepositoryOptions`
and this package's version. A second start with the same inputs reuses the folder; different
inputs never overwrite each other. A folder counts as built once its last file is written
(``bundle.json``, ``repository.json``), so an interrupted build is redone.
``anonymixer serve``, the demo, the evaluation and the benchmarks all build through here.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import anonymixer
from anonymixer import bundle, profiles
from anonymixer.checkpoints import file_sha256

CACHE = Path("build/cache")


class MissingInputError(ValueError):
    """A profile's weights are not where the caller said (the message names the file and the fix)."""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def cached_bundle(profile: str, weights: str | None, cache: Path = CACHE, *, generator_ir: str | None = None) -> Path:
    """The bundle of ``profile`` built from the files in ``weights`` (tiny: none; mobile1024:
    mobilefacenet.pt and the generator IR; ffhq1024: the official e4e and IR-SE50 files)."""
    if profile == "tiny":
        out = cache / "bundles" / "tiny-seed0"
        if not (out / bundle.MANIFEST).exists():
            profiles.build_tiny(out, overwrite=True)
        return out
    if profile == "mobile1024":
        return _mobile1024_bundle(weights, generator_ir, cache)
    if not weights:
        raise MissingInputError(
            "--profile ffhq1024 needs --weights DIR holding e4e_ffhq_encode.pt and model_ir_se50.pth "
            "(python -m exporter download --dest DIR)"
        )
    e4e, fr = Path(weights) / "e4e_ffhq_encode.pt", Path(weights) / "model_ir_se50.pth"
    for path in (e4e, fr):
        if not path.is_file():
            raise MissingInputError(f"{path}: missing (python -m exporter download --dest {weights})")
    out = cache / "bundles" / f"ffhq1024-{_digest(file_sha256(e4e), file_sha256(fr))}"
    if not (out / bundle.MANIFEST).exists():
        print(f"building the ffhq1024 bundle in {out} …", file=sys.stderr)
        profiles.build_ffhq1024(out, e4e=e4e, fr=fr, overwrite=True)
    return out


def _mobile1024_bundle(weights: str | None, generator_ir: str | None, cache: Path) -> Path:
    from anonymixer.mobilestylegan_ir import locate_ir, verify_ir
    from anonymixer.openvino_ir import IRError

    if not weights:
        raise MissingInputError(
            "--profile mobile1024 needs --weights DIR holding mobilefacenet.pt "
            "(python -m exporter download --dest DIR mobilefacenet)"
        )
    fr = Path(weights) / "mobilefacenet.pt"
    if not fr.is_file():
        raise MissingInputError(f"{fr}: missing (python -m exporter download --dest {weights} mobilefacenet)")
    try:
        ir_hashes = verify_ir(locate_ir(generator_ir))
    except IRError as exc:  # the random-face wheel missing, or files that are not its pinned ones
        raise MissingInputError(str(exc)) from None
    settings = json.dumps([profiles.MOBILE1024_ALGORITHM, profiles.MOBILE1024_FRAMING], sort_keys=True)
    out = cache / "bundles" / f"mobile1024-{_digest(file_sha256(fr), *ir_hashes.values(), settings)}"
    if not (out / bundle.MANIFEST).exists():
        print(f"building the mobile1024 bundle in {out} …", file=sys.stderr)
        profiles.build_mobile1024(out, fr=fr, generator_ir=generator_ir, overwrite=True)
    return out


def cached_random_bundle(profile: str, cache: Path = CACHE) -> Path:
    """Seeded random weights (seed 0) in ``profile``'s shapes: what the benchmarks time where the
    real weights are not needed (speed does not depend on them)."""
    if profile == "tiny":
        return cached_bundle("tiny", None, cache)
    out = cache / "bundles" / f"{profile}-random-seed0"
    if not (out / bundle.MANIFEST).exists():
        bundle.save(profiles.random_bundle(profile), out, overwrite=True)
    return out


def cached_repository(
    bundle_dir: Path, *, gpu: bool, algorithm: str = "{}", stages_via: str = "bls", cache: Path = CACHE
) -> Path:
    """The embedded Triton repository of ``bundle_dir`` (its ``models`` folder); ``algorithm`` is
    the repository's JSON object of ProtectConfig overrides (anonymixer.config, the
    "repository" layer)."""
    from exporter.onnx_export import export_all
    from exporter.repository import RepositoryOptions, build_repository

    options = RepositoryOptions(target="embedded", gpus=(0,) if gpu else (), algorithm=algorithm, stages_via=stages_via)
    config = (bundle_dir / bundle.MANIFEST).read_text()
    root = cache / "repositories" / _digest(config, repr(options), anonymixer.__version__)
    if not (root / "models" / "repository.json").exists():
        print(f"building the Triton repository in {root} …", file=sys.stderr)
        export_all(bundle.load(bundle_dir), root / "onnx")
        build_repository(root / "onnx", root / "models", options, bundle_dir=bundle_dir)
    return root / "models"

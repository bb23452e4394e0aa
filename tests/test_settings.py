"""The one reader of settings: library defaults < bundle < repository (and named overrides) <
request, each value's source named, and every served setting read through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anonymixer.config import Overrides, ProtectConfig, resolve_settings
from exporter.repository import read_config

BUNDLE = {"profile": "test", "algorithm": {"steps": 20, "lr": 0.005, "views": 0}}


def test_each_layer_overrides_the_ones_below_key_by_key() -> None:
    defaults = ProtectConfig()
    settings = resolve_settings(BUNDLE, Overrides("repository", {"steps": 10}), Overrides("the demo", {"views": 2}))
    config = settings.config
    assert (config.steps, config.lr, config.views) == (10, 0.005, 2)
    assert config.inversion_steps == defaults.inversion_steps  # nobody set it: the library's
    assert settings.sources == {"steps": "repository", "lr": "bundle", "views": "the demo"}
    assert settings.describe() == "bundle: lr=0.005; repository: steps=10; the demo: views=2"
    assert resolve_settings({}).describe() == "library defaults" and resolve_settings({}).config == defaults


def test_an_unknown_key_is_refused_naming_its_layer() -> None:
    with pytest.raises(ValueError, match=r"^the demo: unknown ProtectConfig key\(s\) \['step'\]"):
        resolve_settings(BUNDLE, Overrides("the demo", {"step": 3}))
    with pytest.raises(ValueError, match="steps must be in"):  # the merged config is checked as a whole
        resolve_settings(BUNDLE, Overrides("repository", {"max_steps": 5}))


def test_the_request_layer() -> None:
    config = resolve_settings(BUNDLE).config
    assert config.steps_for(None) == 20 and config.steps_for(0) == 0 and config.steps_for(500) == 500
    for bad in (501, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"steps must be an integer in \[0, 500\]"):
            config.steps_for(bad)


def test_the_scene_model_takes_the_anonymixer_models_max_steps(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """The repository writes the scene model's STEPS limit from the same reader as the anonymixer
    model's settings (bundle < repository), not from a second default."""
    from tests.conftest import build_test_repository

    out = build_test_repository(
        tiny_bundle_dir, tmp_path / "r", "--algorithm", json.dumps({"steps": 5, "max_steps": 40})
    )
    scene = read_config(out / "anonymixer_scene" / "config.pbtxt")
    anonymixer = read_config(out / "anonymixer" / "config.pbtxt")
    assert scene.parameters["max_steps"].string_value == "40"
    assert json.loads(anonymixer.parameters["algorithm"].string_value) == {"steps": 5, "max_steps": 40}
    # every parameter the served models read is written: none of them has a second default
    assert {"network_max_batch", "max_image_pixels", "bundle", "render_via"} <= set(anonymixer.parameters)

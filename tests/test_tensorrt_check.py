"""The TensorRT plan check without TensorRT: its comparison is a pure function of two runners, so
onnxruntime stands in for the plan. The same graph passes; a perturbed copy is flagged at every
precision; weights rounded to fp16 pass the reduced-precision rules; a profile short of
max_batch_size is refused; and the repository refuses plans without a passing verdict, before it
writes anything. Real plans on a GPU: tests/test_gpu_serving.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from anonymixer import bundle
from exporter.__main__ import main as exporter_main
from exporter.onnx_export import export_all
from exporter.repository import RepositoryOptions, build_repository
from exporter.tensorrt_build import (
    MIN_IMAGE_PSNR_DB,
    MIN_TEMPLATE_COSINE,
    PlanCheckError,
    Profile,
    check_plan,
    check_plans,
    onnxruntime_runner,
)

MAX_BATCH = 8


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_all(bundle.load(tiny_bundle_dir), out)
    return out


def manifest(onnx_dir: Path) -> dict[str, dict]:
    return json.loads((onnx_dir / "onnx_manifest.json").read_text())["models"]


def profile_of(facts: dict, max_batch: int = MAX_BATCH, min_batch: int = 1) -> Profile:
    return Profile(min_batch, max(1, max_batch // 2), max_batch, tuple(facts["input"]["dims"]))


def changed_copy(source: Path, out: Path, *, noise: float = 0.0, fp16_weights: bool = False) -> Path:
    """The graph with gaussian noise of ``noise`` × its std on its largest weight, or with every
    weight rounded to fp16 (what a reduced-precision plan does to them, at least)."""
    model = onnx.load(str(source))
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    rng = np.random.default_rng(0)
    for tensor in weights if fp16_weights else [max(weights, key=lambda t: int(np.prod(t.dims)))]:
        w = numpy_helper.to_array(tensor)
        changed = w.astype(np.float16) if fp16_weights else w + noise * w.std() * rng.standard_normal(w.shape)
        tensor.CopyFrom(numpy_helper.from_array(changed.astype(np.float32), tensor.name))
    onnx.save(model, str(out))
    return out


def check(onnx_dir: Path, name: str, plan_graph: Path, precision: str, profile: Profile | None = None):
    facts = manifest(onnx_dir)[name]
    return check_plan(
        name,
        facts,
        onnxruntime_runner(plan_graph),
        onnxruntime_runner(onnx_dir / facts["file"]),
        precision=precision,
        profile=profile or profile_of(facts),
        max_batch_size=MAX_BATCH,
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_the_same_graph_passes(onnx_dir: Path, precision: str) -> None:
    for name, facts in manifest(onnx_dir).items():
        result = check(onnx_dir, name, onnx_dir / facts["file"], precision)
        assert result.passed, (name, result.problems)
        assert result.batches == (1, MAX_BATCH)  # run at both ends of the profile
        assert result.record()["passed"] is True


def test_a_perturbed_graph_is_flagged_at_every_precision(onnx_dir: Path, tmp_path: Path) -> None:
    metrics = {
        "e4e_encoder": "max per-item relative error",
        "stylegan2_mapping": "max per-item relative error",
        "stylegan2_synthesis": "min PSNR (dB)",
        "face_embedder": "min template cosine",
    }
    for name, facts in manifest(onnx_dir).items():
        perturbed = changed_copy(onnx_dir / facts["file"], tmp_path / f"{name}.onnx", noise=0.2)
        for precision in ("fp32", "fp16"):
            result = check(onnx_dir, name, perturbed, precision)
            expected = "max relative error" if precision == "fp32" else metrics[name]
            assert not result.passed and result.metric == expected, (name, precision)
            assert f"{expected} " in result.problems[0] and "vs onnxruntime" in result.problems[0]


def test_fp16_weights_pass_the_reduced_precision_rules_but_not_fp32(onnx_dir: Path, tmp_path: Path) -> None:
    """The fp16/bf16 limits leave room for what fp16 does to the weights; fp32's 1e-3 does not."""
    facts = manifest(onnx_dir)
    rounded = {
        name: changed_copy(onnx_dir / f["file"], tmp_path / f"{name}.onnx", fp16_weights=True)
        for name, f in facts.items()
    }
    embed = check(onnx_dir, "face_embedder", rounded["face_embedder"], "fp16")
    image = check(onnx_dir, "stylegan2_synthesis", rounded["stylegan2_synthesis"], "bf16")
    assert embed.passed and MIN_TEMPLATE_COSINE <= embed.worst < 1
    assert image.passed and MIN_IMAGE_PSNR_DB < image.worst < float("inf")
    assert all(check(onnx_dir, name, path, "fp16").passed for name, path in rounded.items())
    assert not check(onnx_dir, "stylegan2_synthesis", rounded["stylegan2_synthesis"], "fp32").passed


def test_a_profile_short_of_max_batch_size_is_refused(onnx_dir: Path) -> None:
    facts = manifest(onnx_dir)["face_embedder"]
    short = check(onnx_dir, "face_embedder", onnx_dir / facts["file"], "fp32", profile_of(facts, max_batch=4))
    assert not short.passed and short.batches == (1,)  # still compared where it can run
    assert short.problems == ("its optimisation profile takes batches 1–4, the repository's max_batch_size needs 1–8",)
    no_single = check(onnx_dir, "face_embedder", onnx_dir / facts["file"], "fp32", profile_of(facts, min_batch=2))
    assert "takes batches 2–8" in no_single.problems[0] and no_single.batches == (MAX_BATCH,)
    wrong_dims = Profile(1, 4, MAX_BATCH, (3, 64, 64))
    assert (
        "item shape [3, 64, 64] is not the model's [3, 112, 112]"
        in check(onnx_dir, "face_embedder", onnx_dir / facts["file"], "fp32", wrong_dims).problems[0]
    )


def test_wrong_shapes_and_non_finite_outputs_are_flagged(onnx_dir: Path) -> None:
    facts = manifest(onnx_dir)["face_embedder"]
    reference = onnxruntime_runner(onnx_dir / facts["file"])
    common = {"precision": "fp16", "profile": profile_of(facts), "max_batch_size": MAX_BATCH}
    nan = check_plan("face_embedder", facts, lambda x: reference(x) * np.nan, reference, **common)
    short = check_plan("face_embedder", facts, lambda x: reference(x)[:, :64], reference, **common)
    assert nan.problems == ("batch 1: non-finite outputs", "batch 8: non-finite outputs") and nan.worst is None
    assert "batch 1: output shape [1, 64], expected [1, 128]" in short.problems


def fake_plans(onnx_dir: Path, plans: Path, precision: str = "fp16", profile_max: int = MAX_BATCH) -> None:
    """Plan files and the records ``build_engines`` writes beside them (no TensorRT here)."""
    plans.mkdir(exist_ok=True)
    for name in manifest(onnx_dir):
        (plans / f"{name}.plan").write_bytes(b"not a real plan")
        record = {"precision": precision, "profile": {"min": 1, "opt": profile_max // 2, "max": profile_max}}
        (plans / f"{name}.plan.json").write_text(json.dumps(record))


def test_check_plans_records_verdicts_and_the_repository_refuses_a_failed_plan(onnx_dir: Path, tmp_path: Path) -> None:
    plans, out = tmp_path / "plans", tmp_path / "repository"
    fake_plans(onnx_dir, plans)
    graphs = {name: onnx_dir / facts["file"] for name, facts in manifest(onnx_dir).items()}
    graphs["stylegan2_synthesis"] = changed_copy(graphs["stylegan2_synthesis"], tmp_path / "bad.onnx", noise=0.2)

    def open_plan(path: Path) -> tuple:  # the "plan" is the (possibly perturbed) ONNX graph
        return onnxruntime_runner(graphs[path.stem]), profile_of(manifest(onnx_dir)[path.stem])

    options = RepositoryOptions("tensorrt", gpus=(0,), max_batch_size=MAX_BATCH)
    with pytest.raises(PlanCheckError, match="never compared with onnxruntime"):
        build_repository(onnx_dir, out, options, engines_dir=plans)
    with pytest.raises(PlanCheckError, match=r"stylegan2_synthesis\.plan: min PSNR \(dB\) [0-9.]+ vs onnxruntime"):
        check_plans(onnx_dir, plans, max_batch_size=MAX_BATCH, open_plan=open_plan)
    verdict = json.loads((plans / "stylegan2_synthesis.plan.json").read_text())["check"]
    assert verdict["passed"] is False and verdict["metric"] == "min PSNR (dB)" and verdict["batches"] == [1, 8]
    assert json.loads((plans / "face_embedder.plan.json").read_text())["check"]["passed"] is True
    with pytest.raises(PlanCheckError, match=r"stylegan2_synthesis\.plan: min PSNR") as refused:
        build_repository(onnx_dir, out, options, engines_dir=plans)
    assert "face_embedder" not in str(refused.value)  # only the plans that fail are named
    assert not out.exists()  # refused before anything is written
    with pytest.raises(PlanCheckError, match="the repository needs 16"):  # checked for 8, served at 16
        build_repository(onnx_dir, out, RepositoryOptions("tensorrt", gpus=(0,), max_batch_size=16), engines_dir=plans)

    graphs["stylegan2_synthesis"] = onnx_dir / "stylegan2_synthesis.onnx"
    check_plans(onnx_dir, plans, max_batch_size=MAX_BATCH, open_plan=open_plan)
    models = build_repository(onnx_dir, out, options, engines_dir=plans)
    assert (models["stylegan2_synthesis"] / "1" / "model.plan").read_bytes() == b"not a real plan"


def test_the_cli_check_needs_tensorrt_and_says_so(
    onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tests/test_gpu_serving.py builds and checks real plans")
    assert exporter_main(["tensorrt", "--onnx", str(onnx_dir), "--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err or "no CUDA device" in err

"""Triton model repositories: every config.pbtxt parses with Triton's schema and matches the graphs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from anonymixer import bundle
from exporter.__main__ import main as exporter_main
from exporter.onnx_export import MODELS, export_all
from exporter.repository import RepositoryOptions, build_repository, read_config
from tests.test_onnx_export import graph_dims


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_all(bundle.load(tiny_bundle_dir), out)
    return out


@pytest.mark.parametrize(
    ("options", "platform", "backend", "kind"),
    [
        (RepositoryOptions("embedded"), "", "python", mc.ModelInstanceGroup.KIND_CPU),
        (RepositoryOptions("embedded", gpus=(0,)), "", "python", mc.ModelInstanceGroup.KIND_GPU),
        (RepositoryOptions("onnxruntime", gpus=(0, 1)), "onnxruntime_onnx", "", mc.ModelInstanceGroup.KIND_GPU),
        (RepositoryOptions("onnxruntime"), "onnxruntime_onnx", "", mc.ModelInstanceGroup.KIND_CPU),
    ],
)
def test_configs_parse_and_match_the_graphs(onnx_dir: Path, tmp_path: Path, options, platform, backend, kind) -> None:
    models = build_repository(onnx_dir, tmp_path / "repo", options)
    assert sorted(models) == sorted(MODELS)
    for name, folder in models.items():
        config = read_config(folder / "config.pbtxt")
        assert config.name == name and config.platform == platform and config.backend == backend
        assert config.max_batch_size == options.max_batch_size
        assert config.dynamic_batching.max_queue_delay_microseconds == options.max_queue_delay_us
        assert [g.kind for g in config.instance_group] == [kind]
        assert list(config.instance_group[0].gpus) == list(options.gpus)
        onnx_file = folder / "1" / "model.onnx"
        iname, idims, oname, odims = graph_dims(onnx_file)
        assert (config.input[0].name, list(config.input[0].dims)) == (iname, idims[1:])
        assert (config.output[0].name, list(config.output[0].dims)) == (oname, odims[1:])
        assert config.input[0].data_type == config.output[0].data_type == mc.TYPE_FP32
        assert config.model_warmup[0].inputs[iname].dims == idims[1:]
        shim = folder / "1" / "model.py"
        assert shim.exists() == (options.target == "embedded")
        has_trt = bool(config.optimization.execution_accelerators.gpu_execution_accelerator)
        assert has_trt == (options.target == "onnxruntime" and bool(options.gpus))
    assert json.loads((tmp_path / "repo" / "repository.json").read_text())["target"] == options.target


def test_a_typo_in_a_config_fails_to_parse(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_sise: 4\n')
    with pytest.raises(Exception, match="max_batch_sise"):
        read_config(path)


def test_tensorrt_target_needs_gpus_and_plans(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs GPUs"):
        RepositoryOptions("tensorrt")
    with pytest.raises(ValueError, match="needs --engines"):
        build_repository(onnx_dir, tmp_path / "r", RepositoryOptions("tensorrt", gpus=(0,)))
    with pytest.raises(FileNotFoundError, match="no TensorRT plan"):
        build_repository(onnx_dir, tmp_path / "r", RepositoryOptions("tensorrt", gpus=(0,)), engines_dir=tmp_path)


def test_tensorrt_plans_refuse_clearly_without_a_gpu(
    onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert exporter_main(["tensorrt", "--onnx", str(onnx_dir), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err or "no CUDA device" in err

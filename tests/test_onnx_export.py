"""ONNX export: the contract's names and shapes, a valid graph, and parity with PyTorch."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from anonymixer import bundle, profiles
from exporter.onnx_export import MODELS, OPSET, export_all, sample_input, signatures, torch_modules
from tests.conftest import MOBILEFACENET, need

TOL = 1e-4


def graph_dims(path: Path) -> tuple[str, list, str, list]:
    model = onnx.load(str(path))
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return inp.name, dims(inp), out.name, dims(out)


def check_parity(model: bundle.Bundle, onnx_dir: Path, batches: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    sigs, modules = signatures(model), torch_modules(model)
    worst = {}
    for name in MODELS:
        session = ort.InferenceSession(str(onnx_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        errors = []
        for batch in batches:
            x = sample_input(sigs[name], batch, seed=batch)
            (got,) = session.run(None, {sigs[name].input_name: x})
            with torch.no_grad():
                ref = modules[name](torch.from_numpy(x)).numpy()
            assert got.shape == ref.shape == (batch, *sigs[name].output_shape)
            errors.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
        worst[name] = max(errors)
    return worst


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> tuple[bundle.Bundle, Path]:
    model = bundle.load(tiny_bundle_dir)
    out = tmp_path_factory.mktemp("onnx")
    export_all(model, out)
    return model, out


def test_contract_names_shapes_and_a_valid_graph(tiny_onnx) -> None:
    _, out = tiny_onnx
    manifest = json.loads((out / "onnx_manifest.json").read_text())
    assert manifest["opset"] == OPSET >= 17 and sorted(manifest["models"]) == sorted(MODELS)
    expected = {
        "e4e_encoder": ("image", [3, 256, 256], "w_plus", [10, 64]),
        "stylegan2_mapping": ("z", [64], "w", [64]),
        "stylegan2_synthesis": ("w_plus", [10, 64], "image", [3, 64, 64]),
        "face_embedder": ("face", [3, 112, 112], "embedding", [128]),
    }
    for name, (iname, idims, oname, odims) in expected.items():
        path = out / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        gi, gidims, go, godims = graph_dims(path)
        assert (gi, go) == (iname, oname)
        assert isinstance(gidims[0], str) and isinstance(godims[0], str)  # dynamic batch axis
        assert (gidims[1:], godims[1:]) == (idims, odims), name
        assert manifest["models"][name]["input"] == {"name": iname, "dims": idims}


def test_tiny_parity_with_pytorch(tiny_onnx) -> None:
    model, out = tiny_onnx
    errors = check_parity(model, out)
    print("tiny ONNX vs PyTorch, max relative error:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOL


def test_real_mobilefacenet_exports(tmp_path: Path) -> None:
    model = profiles.random_bundle("tiny", fr=need(MOBILEFACENET))
    export_all(model, tmp_path, only=("face_embedder",))
    session = ort.InferenceSession(str(tmp_path / "face_embedder.onnx"), providers=["CPUExecutionProvider"])
    x = sample_input(signatures(model)["face_embedder"], 3)
    (got,) = session.run(None, {"face": x})
    with torch.no_grad():
        ref = model.face_embedder(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 128) and np.abs(got - ref).max() <= TOL * np.abs(ref).max()


@pytest.mark.slow
def test_full_size_ffhq1024_parity(tmp_path: Path) -> None:
    """The official full-size shapes with seeded random weights (minutes and GBs on a CPU)."""
    start = time.perf_counter()
    model = profiles.random_bundle("ffhq1024")
    built = time.perf_counter()
    facts = export_all(model, tmp_path)
    exported = time.perf_counter()
    errors = check_parity(model, tmp_path)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    sizes = {k: f"{v['bytes'] / 2**20:.0f} MiB" for k, v in facts.items()}
    print(
        f"ffhq1024: weights {built - start:.0f} s, export {exported - built:.0f} s, parity "
        f"{time.perf_counter() - exported:.0f} s, peak RSS {peak_gib:.1f} GiB; sizes {sizes}; "
        f"errors { ({k: f'{v:.1e}' for k, v in errors.items()}) }"
    )
    assert max(errors.values()) <= TOL


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (RuntimeError("No Op registered for Foo"), "RuntimeError: No Op registered for Foo"),
        (False, "its check of the simplified graph against the original on random inputs failed"),
    ],
)
def test_an_onnxsim_failure_is_a_warning_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, outcome, reason: str
) -> None:
    import onnxsim

    from exporter import onnx_export

    def simplify(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        if isinstance(outcome, Exception):
            raise outcome
        return onnx.ModelProto(), outcome

    monkeypatch.setattr(onnxsim, "simplify", simplify)
    graph = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    with caplog.at_level("WARNING", logger="exporter.onnx_export"):
        assert onnx_export.simplify_graph(graph, "g.onnx") is graph  # the export goes on, unsimplified
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.getMessage() == (
        f"g.onnx: onnxsim failed ({reason}); keeping the unsimplified graph"
    )

"""MobileStyleGAN from the random-face wheel's OpenVINO IR: exact loading, parity with OpenVINO itself,
W+, refusal of damaged files, the mobile1024 bundle and its ONNX export."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anonymixer import bundle
from anonymixer.bundle import BundleError
from anonymixer.mobilestylegan_ir import IR_SHA256, load_mobilestylegan, locate_ir
from anonymixer.networks.mobilestylegan import MobileStyleGAN
from anonymixer.openvino_ir import IRError
from anonymixer.seeded_init import seeded_draw
from tests.conftest import need

PARITY = 1e-4  # max |Δ| ≤ PARITY · max |reference|


@pytest.fixture(scope="module")
def ir_dir() -> Path:
    try:
        return locate_ir()
    except IRError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def generator(ir_dir: Path) -> MobileStyleGAN:
    return load_mobilestylegan(ir_dir)[0]


def fixed_z(n: int, seed: int = 7) -> np.ndarray:
    return seeded_draw("test_mobilestylegan.z", seed, (n, 512)).astype(np.float32)


def rel_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.numpy() - ref).max() / np.abs(ref).max())


@torch.no_grad()
def test_parity_with_openvino_f32(ir_dir: Path, generator: MobileStyleGAN) -> None:
    ov = pytest.importorskip("openvino", reason="openvino (the test extra) is the independent reference")
    core = ov.Core()
    # OpenVINO's CPU default is bf16, which differs from f32 by up to 0.66 on these images.
    precision = {"INFERENCE_PRECISION_HINT": "f32"}
    mapping = core.compile_model(core.read_model(ir_dir / "MappingNetwork.xml"), "CPU", precision)
    synthesis = core.compile_model(core.read_model(ir_dir / "SynthesisNetwork.xml"), "CPU", precision)
    for z in fixed_z(3):
        w_ref = mapping(z[None])[0]
        w = generator.mapping(torch.from_numpy(z[None]))
        assert rel_err(w, w_ref) <= PARITY
        image_ref = synthesis(w_ref)[0]
        image = generator.synthesis(torch.from_numpy(w_ref))
        assert image.shape == (1, 3, 1024, 1024)
        assert rel_err(image, image_ref) <= PARITY
        assert 0.5 < np.abs(image_ref).max() < 1.5  # a real image in [-1, 1], not a degenerate one


@torch.no_grad()
def test_w_plus_rows(generator: MobileStyleGAN) -> None:
    assert (generator.n_latent, generator.style_dim, generator.size) == (23, 512, 1024)
    w = generator.mapping(torch.from_numpy(fixed_z(2)))
    broadcast = generator.synthesis(w)
    plus = generator.synthesis(w[:, None].expand(-1, 23, -1).contiguous())
    torch.testing.assert_close(plus, broadcast, rtol=0, atol=1e-6)
    # batch items are independent: item 1 of the batch equals item 1 alone (to 1/20 of a uint8 level:
    # the CPU's convolution kernels sum in a different order at another batch size)
    torch.testing.assert_close(generator.synthesis(w[1:]), broadcast[1:], rtol=0, atol=0.05 * 2 / 255)
    mixed = w[:1, None].repeat(1, 23, 1)
    mixed[:, 7] = w[1]  # one fine-ish row from another face
    changed = generator.synthesis(mixed)
    difference = (changed - broadcast[:1]).abs()
    assert difference.mean() > 1e-3 and difference.max() > 0.05
    with pytest.raises(ValueError, match=r"w_plus must be \[B, 23, 512\]"):
        generator.synthesis(w[:, None].expand(-1, 18, -1))
    # half size is the full render area-averaged, exactly (the LL band), with no inverse transform
    torch.testing.assert_close(generator.synthesis(w, resolution=512), F.avg_pool2d(broadcast, 2), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="renders at 1024 px or, area-averaged, at 512 px"):
        generator.synthesis(w, resolution=256)


def copy_ir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in IR_SHA256:
        shutil.copy2(src / name, dst / name)
    return dst


def test_flipped_byte_in_bin_is_refused(ir_dir: Path, tmp_path: Path) -> None:
    folder = copy_ir(ir_dir, tmp_path / "ir")
    data = bytearray((folder / "SynthesisNetwork.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "SynthesisNetwork.bin").write_bytes(bytes(data))
    with pytest.raises(IRError, match=r"SynthesisNetwork\.bin: SHA-256 .* corrupted, truncated or replaced"):
        load_mobilestylegan(folder)


def test_renamed_layer_is_refused(ir_dir: Path, tmp_path: Path) -> None:
    folder = copy_ir(ir_dir, tmp_path / "ir")
    xml = folder / "SynthesisNetwork.xml"
    xml.write_text(xml.read_text().replace('name="style" type="Parameter"', 'name="latent" type="Parameter"', 1))
    with pytest.raises(IRError, match=r"SynthesisNetwork\.xml: SHA-256"):
        load_mobilestylegan(folder)
    # Without the pins, the graph match refuses it too, naming what it expected.
    with pytest.raises(IRError, match="expected one Parameter named 'style', found \\['latent'\\]"):
        load_mobilestylegan(folder, verify=False)


def const_offset(xml: Path, layer_name: str) -> int:
    text = xml.read_text()
    start = text.index(f'name="{layer_name}" type="Const"')  # the data element follows the layer tag
    return int(text[start:].split('offset="', 1)[1].split('"', 1)[0])


def test_structural_checks_without_pins(ir_dir: Path, tmp_path: Path) -> None:
    """The graph match is strict on its own: a wrong structural constant, a truncated file, a stray layer."""
    folder = copy_ir(ir_dir, tmp_path / "ir")
    xml, blob = folder / "MappingNetwork.xml", folder / "MappingNetwork.bin"
    data = bytearray(blob.read_bytes())
    slope = const_offset(xml, "LeakyRelu_16/weights30484811")
    data[slope : slope + 4] = np.float32(0.3).tobytes()
    blob.write_bytes(bytes(data))
    with pytest.raises(IRError, match=r"LeakyRelu_16/weights.*expected 0\.2"):
        load_mobilestylegan(folder, verify=False)
    blob.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(IRError, match=r"beyond the end of MappingNetwork\.bin"):
        load_mobilestylegan(folder, verify=False)
    shutil.copy2(ir_dir / "MappingNetwork.bin", blob)
    # An extra float layer hanging off the output is something the loader cannot explain.
    text = xml.read_text()
    stray = (
        '<layer id="9999" name="stray" type="Negative" version="opset1"><input><port id="0" precision="FP32">'
        '<dim>1</dim><dim>512</dim></port></input><output><port id="1" precision="FP32"><dim>1</dim><dim>512</dim>'
        "</port></output></layer>\n\t</layers>"
    )
    text = text.replace("</layers>", stray, 1).replace(
        "</edges>", '<edge from-layer="149" from-port="2" to-layer="9999" to-port="0"/>\n\t</edges>', 1
    )
    xml.write_text(text)
    with pytest.raises(IRError, match=r"does not account for: MappingNetwork\.xml: layer 9999 'stray'"):
        load_mobilestylegan(folder, verify=False)


def test_missing_files_say_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(IRError, match=r"missing MappingNetwork\.xml"):
        locate_ir(tmp_path)


def test_mobile1024_bundle(mobile_bundle_dir: Path, generator: MobileStyleGAN) -> None:
    config = json.loads((mobile_bundle_dir / "bundle.json").read_text())
    assert (config["profile"], config["resolution"], config["n_latent"], config["style_dim"]) == (
        "mobile1024",
        1024,
        23,
        512,
    )
    assert config["encoder"] is None and not (mobile_bundle_dir / "encoder.safetensors").exists()
    assert config["face_embedder"] == {"network": "mobilefacenet", "embedding_size": 128}
    assert config["sources"]["generator"]["files"] == IR_SHA256
    assert config["sources"]["w_avg"]["samples"] >= 4096
    assert "FFHQ" in config["notice"]
    model = bundle.load(mobile_bundle_dir)
    assert model.encoder is None and model.notice == config["notice"]
    torch.testing.assert_close(model.latent_avg, model.w_avg.expand(23, -1))
    for (name, ours), theirs in zip(model.generator.state_dict().items(), generator.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name
    assert config["framing"] == "ffhq" and config["algorithm"]["inversion"] == "optimize"
    assert config["algorithm"]["attribute_loss"] == "fr_features"
    with pytest.raises(BundleError, match="needs an e4e encoder, and the mobile1024 bundle has none"):
        model.require_encoder("inverting a face")
    from anonymixer.config import ProtectConfig
    from anonymixer.protect import Protector

    assert Protector(model).inversion == "optimize"
    with pytest.raises(BundleError, match="the e4e attribute loss needs an e4e encoder"):
        Protector(model, ProtectConfig(attribute_loss="e4e"))


def test_mobile1024_onnx_parity(mobile_bundle_dir: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from exporter.onnx_export import export_all, sample_input, signatures, torch_modules

    model = bundle.load(mobile_bundle_dir)
    facts = export_all(model, tmp_path, only=("stylegan2_mapping", "stylegan2_synthesis"))
    assert json.loads((tmp_path / "onnx_manifest.json").read_text())["models"].keys() == facts.keys()
    sigs, modules = signatures(model), torch_modules(model)
    assert "e4e_encoder" not in modules and sigs["stylegan2_synthesis"].input_shape == (23, 512)
    for name in facts:
        x = sample_input(sigs[name], batch=2, seed=3)  # a dynamic batch other than the export's
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {sigs[name].input_name: x})
        with torch.no_grad():
            ref = modules[name](torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= PARITY * np.abs(ref).max(), name


def test_mobile1024_served_protects_real_faces(mobile_bundle_dir: Path, tmp_path: Path) -> None:
    """The embedded repository serves the real generator, and the anonymixer model protects a real
    photo's face by inverting it through optimisation (a few steps here); scene mode goes through it."""
    import tritonclient.grpc as grpcclient

    from exporter.onnx_export import MODELS
    from exporter.repository import read_config
    from optimizer_backend.server import EmbeddedTritonServer
    from tests.conftest import FACES, build_test_repository

    fast = '{"steps": 1, "views": 0, "inversion_steps": 2}'
    repository = build_test_repository(mobile_bundle_dir, tmp_path / "repository", "--algorithm", fast)
    scene = read_config(repository / "anonymixer_scene" / "config.pbtxt").parameters["scene"].string_value
    assert json.loads(scene)["framing"] == "ffhq"  # the bundle's framing reaches scene mode
    model = bundle.load(mobile_bundle_dir)
    w_plus = model.generator.mapping(torch.from_numpy(fixed_z(1, seed=11)))[:, None].repeat(1, 23, 1).numpy()
    photo = need(FACES / "img1.jpg").read_bytes()
    with EmbeddedTritonServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        index = {m.name: m.state for m in client.get_model_repository_index().models}
        served = [m for m in MODELS if m != "e4e_encoder"]
        assert index == dict.fromkeys((*served, "anonymixer", "face_detector", "anonymixer_scene"), "READY")
        tensor = grpcclient.InferInput("w_plus", list(w_plus.shape), "FP32")
        tensor.set_data_from_numpy(w_plus)
        got = client.infer("stylegan2_synthesis", [tensor], client_timeout=120).as_numpy("image")
        with torch.no_grad():
            ref = model.generator.synthesis(torch.from_numpy(w_plus)).numpy()
        assert np.abs(got - ref).max() <= PARITY * np.abs(ref).max()

        inputs = []
        for name, value in (("IMAGE", photo), ("KEY", b"a key")):
            item = grpcclient.InferInput(name, [1, 1], "BYTES")
            item.set_data_from_numpy(np.array([[value]], dtype=np.object_))
            inputs.append(item)
        result = client.infer("anonymixer_scene", inputs, client_timeout=300)
        assert [a.decode() for a in result.as_numpy("FACE_ACTIONS")[0]] == ["protected"]
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    invert = [
        line
        for line in metrics.splitlines()
        if line.startswith("anonymixer_stage_seconds_count{")
        and 'model="anonymixer"' in line
        and 'stage="invert"' in line
    ]
    assert len(invert) == 1 and float(invert[0].split()[-1]) >= 1  # inverted by optimisation, in its metrics
    log = server.log_file.read_text()
    assert "NVIDIA Source Code License-NC" in log  # the terms, once, in the server's log
    assert "inversion optimize (2 steps)" in log
    # the bundle's compiled synthesis, compiled at start-up for both graphs (batch 1 and from 2 up)
    assert "synthesis compiled (default) for batches [1, 2]" in log


def test_flop_count_of_the_generators_benchmark(generator: MobileStyleGAN) -> None:
    """benchmarks.generators counts MobileStyleGAN at ~10× fewer FLOPs than StyleGAN2 config-f's 151 GFLOP."""
    from benchmarks.generators import generator_flops

    counted = generator_flops(generator.requires_grad_(False), generator.n_latent)
    assert 12 < counted["forward_gflop"] < 17  # 7.4 GMAC: depthwise-separable convs at every scale
    # the backward to W+ alone (no weight gradients) costs as much as the forward again
    assert counted["forward_backward_to_w_gflop"] == pytest.approx(2 * counted["forward_gflop"], rel=0.05)


def test_random_weights_in_mobile1024_shapes_for_speed_runs() -> None:
    """Where the random-face wheel cannot travel (a GPU machine), seeded weights in its shapes."""
    from anonymixer import profiles

    model = profiles.random_bundle("mobile1024")
    assert (model.resolution, model.n_latent, model.style_dim, model.embedding_size) == (1024, 23, 512, 128)
    assert model.config["algorithm"] == profiles.MOBILE1024_ALGORITHM and model.framing == "ffhq"
    assert model.config["sources"] == {"seed": 0} and model.config["encoder"] is None

"""Serving on the GPU: what a CPU can check of it (a KIND_GPU network without onnxruntime's CUDA
provider refuses to load; the device-tensor path of the ONNX wrapper equals its numpy path; the
CUDA memory pool follows the repository), and, marked ``gpu``, the CUDA runs themselves: BLS hands
tensors over only once torch is done with them, the ONNX wrapper keeps them on the GPU, KIND_GPU
Triton serving of the tiny repository equals the CPU, and TensorRT plans pass their check.

The ONNX wrapper and the BLS stages run here outside Triton, against a stand-in for
``triton_python_backend_utils`` that holds torch tensors (``FakeTensor``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import json_format
from torch.utils.dlpack import from_dlpack, to_dlpack

from anonymixer import bundle
from exporter.onnx_export import export_all
from exporter.repository import RepositoryOptions, build_repository, network_config
from optimizer_backend import bls, onnx_model
from optimizer_backend.server import (
    POOL_FLAG,
    TRITON_DEFAULT_CUDA_POOL,
    EmbeddedTritonServer,
    cuda_pool_bytes,
    repository_cuda_pools,
)

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
NEEDS_CUDA_EP = "needs onnxruntime-gpu (this onnxruntime has no CUDAExecutionProvider)"


class FakeTensor:
    """``pb_utils.Tensor`` over a torch tensor (device memory when it is a CUDA tensor)."""

    def __init__(self, name: str, data: Any) -> None:
        self._name, self.data = name, torch.as_tensor(data)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        assert not self.data.is_cuda, "as_numpy() of a GPU tensor: a round trip through host memory"
        return self.data.numpy()

    def to_dlpack(self) -> Any:
        return to_dlpack(self.data)

    def is_cpu(self) -> bool:
        return not self.data.is_cuda

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> FakeTensor:
        return cls(name, from_dlpack(capsule))


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: str | None = None) -> None:
        self.output_tensors, self.error = output_tensors or [], error

    def has_error(self) -> bool:
        return self.error is not None


def fake_pb_utils(**extra: Any) -> SimpleNamespace:
    return SimpleNamespace(
        Tensor=FakeTensor,
        InferenceResponse=FakeResponse,
        TritonError=str,
        Logger=SimpleNamespace(log_info=lambda message: None, log_warn=lambda message: None),
        get_input_tensor_by_name=lambda request, name: request[name],
        get_output_tensor_by_name=lambda response, name: next(t for t in response.output_tensors if t.name() == name),
        **extra,
    )


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_all(bundle.load(tiny_bundle_dir), out)
    return out


def embedder_instance(onnx_dir: Path, folder: Path, kind: str, provider: str = "cuda") -> dict[str, str]:
    """The ``args`` Triton hands ``initialize`` for one face_embedder instance of ``kind`` (CPU or GPU)."""
    facts = json.loads((onnx_dir / "onnx_manifest.json").read_text())["models"]["face_embedder"]
    options = RepositoryOptions("embedded", gpus=(0,) if kind == "GPU" else (), ort_provider=provider)
    config = json_format.MessageToDict(
        network_config("face_embedder", facts, options), preserving_proto_field_name=True
    )
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx_dir / "face_embedder.onnx", folder / "1" / "model.onnx")
    return {
        "model_config": json.dumps(config),
        "model_repository": str(folder),
        "model_version": "1",
        "model_name": "face_embedder",
        "model_instance_kind": kind,
        "model_instance_device_id": "0",
    }


def embedder_requests(device: str = "cpu") -> list[dict[str, FakeTensor]]:
    rng = np.random.default_rng(0)
    shapes = [(2, 3, 112, 112), (1, 3, 112, 112), (1, 3, 64, 64), (3, 3, 112, 112)]  # the third is wrong
    return [
        {"face": FakeTensor("face", torch.from_numpy(rng.uniform(-1, 1, s).astype(np.float32)).to(device))}
        for s in shapes
    ]


def outputs(responses: list[FakeResponse]) -> list[Any]:
    return [r.error if r.has_error() else r.output_tensors[0].data.cpu().numpy() for r in responses]


# --- on the CPU -----------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_instance_without_the_cuda_provider_fails_to_load(
    onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    monkeypatch.setattr(onnx_model, "pb_utils", fake_pb_utils())
    model = onnx_model.TritonPythonModel()
    with pytest.raises(onnx_model.ProviderError) as refused:
        model.initialize(embedder_instance(onnx_dir, tmp_path / "face_embedder", "GPU", provider))
    message = str(refused.value)
    assert message.startswith("face_embedder: a KIND_GPU instance (GPU 0) needs onnxruntime's ")
    assert "CUDAExecutionProvider" in message and "install onnxruntime-gpu" in message
    assert ("TensorrtExecutionProvider" in message) == (provider == "tensorrt")
    assert not hasattr(model, "session")  # no CPU session was made instead


def test_gpu_providers_and_a_provider_onnxruntime_dropped() -> None:
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda = onnx_model.gpu_providers("cuda", 1, everything, Path("cache"))
    assert cuda == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    trt = onnx_model.gpu_providers("tensorrt", 0, everything, Path("cache"))
    assert [p[0] if isinstance(p, tuple) else p for p in trt] == everything
    with pytest.raises(onnx_model.ProviderError, match="execution_provider must be one of"):
        onnx_model.gpu_providers("rocm", 0, everything, Path("cache"))
    onnx_model.require_started("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(onnx_model.ProviderError, match="could not start CUDAExecutionProvider"):
        onnx_model.require_started("cuda", ["CPUExecutionProvider"])  # onnxruntime fell back on its own


def embedder_model(onnx_dir: Path, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch):
    """The face_embedder wrapper initialised as a ``kind`` instance, outside Triton."""
    monkeypatch.setattr(onnx_model, "pb_utils", fake_pb_utils())
    model = onnx_model.TritonPythonModel()
    model.initialize(embedder_instance(onnx_dir, tmp_path / "face_embedder", kind))
    return model


def test_the_device_tensor_path_equals_the_numpy_path(
    onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU instances' path (DLPack in, torch batching, io_binding, DLPack out) run on the CPU."""
    model = embedder_model(onnx_dir, tmp_path, "CPU", monkeypatch)
    assert model.device is None
    numpy_path = outputs(model.execute(embedder_requests()))
    model.device = torch.device("cpu")
    device_path = outputs(model.execute(embedder_requests()))
    assert [getattr(o, "shape", None) for o in numpy_path] == [(2, 128), (1, 128), None, (3, 128)]
    assert (
        numpy_path[2]
        == device_path[2]
        == "input 'face': expected FP32 [batch, 3, 112, 112], got float32 [1, 3, 64, 64]"
    )
    for a, b in zip(numpy_path, device_path, strict=True):
        assert isinstance(a, str) or np.array_equal(a, b)


def test_networks_run_on_the_gpu_only_when_the_anonymixer_model_calls_them(onnx_dir: Path) -> None:
    facts = json.loads((onnx_dir / "onnx_manifest.json").read_text())["models"]["face_embedder"]
    bls_config = network_config("face_embedder", facts, RepositoryOptions("embedded", gpus=(0,)))
    torch_config = network_config("face_embedder", facts, RepositoryOptions("embedded", gpus=(0,), stages_via="torch"))
    assert bls_config.instance_group[0].kind == bls_config.instance_group[0].KIND_GPU
    assert bls_config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"  # device tensors stay
    assert torch_config.instance_group[0].kind == torch_config.instance_group[0].KIND_CPU
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in torch_config.parameters
    trt = network_config("face_embedder", facts, RepositoryOptions("tensorrt", gpus=(0,), stages_via="torch"))
    assert trt.instance_group[0].kind == trt.instance_group[0].KIND_GPU  # plans run only on a GPU


def test_the_cuda_pool_holds_the_largest_stage_tensor(onnx_dir: Path, tmp_path: Path) -> None:
    assert cuda_pool_bytes(16, (3, 1024, 1024)) == 4 * 16 * 3 * 1024 * 1024 * 4  # 768 MiB: 1024 px at batch 16
    assert cuda_pool_bytes(8, (128,)) == TRITON_DEFAULT_CUDA_POOL  # never below Triton's default
    gpu = tmp_path / "gpu"
    build_repository(onnx_dir, gpu, RepositoryOptions("embedded", gpus=(0,), max_batch_size=64))
    # tiny's largest tensor is e4e_encoder's 3×256×256 input (its images are 64 px)
    assert repository_cuda_pools(gpu) == {0: cuda_pool_bytes(64, (3, 256, 256))} != {0: TRITON_DEFAULT_CUDA_POOL}
    for options in (RepositoryOptions("embedded"), RepositoryOptions("embedded", gpus=(0,), stages_via="torch")):
        build_repository(onnx_dir, tmp_path / "cpu", options)
        assert repository_cuda_pools(tmp_path / "cpu") == {}  # nothing of Triton's on a GPU
    flags = [a for a in EmbeddedTritonServer(gpu).command() if a.startswith(POOL_FLAG)]
    assert flags == [f"{POOL_FLAG}=0:{cuda_pool_bytes(64, (3, 256, 256))}"]
    mine = f"{POOL_FLAG}=0:{2**30}"
    chosen = [a for a in EmbeddedTritonServer(gpu, extra_args=(mine,)).command() if a.startswith(POOL_FLAG)]
    assert chosen == [mine]  # a pool the operator sized (--triton-arg) wins


# --- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_bls_hands_tensors_over_only_after_torch_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    idle_at_handover: list[bool] = []

    def from_dlpack_checked(name: str, capsule: Any) -> FakeTensor:
        idle_at_handover.append(torch.cuda.current_stream().query())  # True: no kernel still writing
        return FakeTensor(name, from_dlpack(capsule))

    class Request:  # the callee echoes its input, from device memory
        def __init__(self, model_name: str, requested_output_names: list[str], inputs: list, **kwargs: Any) -> None:
            assert kwargs["preferred_memory"].args == ("GPU", 0)
            self.output = FakeTensor(requested_output_names[0], inputs[0].data.clone())

        def exec(self) -> FakeResponse:
            return FakeResponse([self.output])

    fake = fake_pb_utils(
        InferenceRequest=Request,
        PreferredMemory=lambda *args: SimpleNamespace(args=args),
        TRITONSERVER_MEMORY_GPU="GPU",
    )
    fake.Tensor = SimpleNamespace(from_dlpack=from_dlpack_checked)  # all bls_stage uses of it
    monkeypatch.setattr(bls, "pb_utils", fake)
    stage = bls.bls_stage("face_embedder", "face", "embedding", max_batch=4)
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(3):
        slow = a
        for _ in range(20):  # tens of milliseconds of queued kernels
            slow = slow @ a / 64
        x = slow[:10, :300].double()  # the stage's .float() is one more kernel on the stream
        got = stage(x)
        assert got.is_cuda and torch.equal(got, x.float())
    assert idle_at_handover == [True] * 9  # 3 calls × 3 chunks (4 + 4 + 2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EP, reason=NEEDS_CUDA_EP)
def test_the_onnx_wrapper_keeps_tensors_on_the_gpu(
    onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = embedder_model(onnx_dir, tmp_path, "GPU", monkeypatch)
    assert model.device == torch.device("cuda", 0) and model.session.get_providers()[0] == "CUDAExecutionProvider"
    responses = model.execute(embedder_requests("cuda"))  # FakeTensor.as_numpy() fails on device tensors
    assert all(r.output_tensors[0].data.is_cuda for i, r in enumerate(responses) if i != 2)
    cpu = ort.InferenceSession(str(onnx_dir / "face_embedder.onnx"), providers=["CPUExecutionProvider"])
    for request, got in zip(embedder_requests(), outputs(responses), strict=True):
        if not isinstance(got, str):
            (expected,) = cpu.run(None, {"face": request["face"].as_numpy()})
            assert np.abs(got - expected).max() <= 1e-3  # unit-norm templates; CUDA's kernels differ
    assert isinstance(outputs(model.execute(embedder_requests("cpu")))[0], np.ndarray)  # host inputs too


@pytest.mark.gpu
@pytest.mark.parametrize("stages_via", ["bls", "torch"])
def test_kind_gpu_serving_of_the_tiny_repository_equals_the_cpu(
    tiny_bundle_dir: Path, tmp_path: Path, stages_via: str
) -> None:
    """The anonymixer model on GPU 0 with its stages through BLS to KIND_GPU networks (onnxruntime's
    CUDA provider), or in-process (the networks then KIND_CPU): what the in-process CPU Protector
    gives, within GPU-vs-CPU float differences."""
    if stages_via == "bls" and not HAS_CUDA_EP:
        pytest.skip(NEEDS_CUDA_EP)
    pytest.importorskip("pytriton", reason="needs the embedded Triton server (the nvidia-pytriton wheel)")
    import tritonclient.grpc as grpcclient

    from anonymixer.config import ProtectConfig
    from anonymixer.protect import Protector
    from tests.conftest import TEST_ALGORITHM, build_test_repository
    from tests.test_anonymixer_server import png, protect
    from tests.test_protect import faces

    repository = build_test_repository(
        tiny_bundle_dir, tmp_path / "repository", "--gpus", "0", "--stages-via", stages_via
    )
    assert bool(repository_cuda_pools(repository)) == (stages_via == "bls")
    key, images = b"gpu-serving-key", faces(2, seed=8)
    with EmbeddedTritonServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = protect(client, [png(im) for im in images], [key, key], groups=[1, 1])
        kinds = {
            name: client.get_model_config(name, as_json=True)["config"]["instance_group"][0]["kind"]
            for name in ("anonymixer", "stylegan2_synthesis")
        }
    assert kinds == {"anonymixer": "KIND_GPU", "stylegan2_synthesis": "KIND_GPU" if stages_via == "bls" else "KIND_CPU"}
    local = Protector(bundle.load(tiny_bundle_dir), ProtectConfig.from_dict(json.loads(TEST_ALGORITHM)))
    expected = local.protect(images, key, groups=[1, 1])
    templates = result.as_numpy("TEMPLATE")
    for i, face in enumerate(expected):
        assert float(templates[i] @ face.template) >= 0.99
        assert abs(float(result.as_numpy("ORIGINAL_SIMILARITY")[i, 0]) - face.original_similarity) < 2e-2


@pytest.mark.gpu
def test_tensorrt_plans_of_the_tiny_bundle_pass_their_check(onnx_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install '.[gpu]')")
    from exporter.tensorrt_build import build_engines, check_plans

    plans = tmp_path / "plans"
    build_engines(onnx_dir, plans, precision="fp16", max_batch=8)
    results = check_plans(onnx_dir, plans, max_batch_size=8)
    print({name: (r.metric, r.worst) for name, r in results.items()})
    assert all(r.passed and r.profile.max == 8 for r in results.values())
    options = RepositoryOptions("tensorrt", gpus=(0,), max_batch_size=8)
    models = build_repository(onnx_dir, tmp_path / "repository", options, engines_dir=plans)
    assert all((folder / "1" / "model.plan").is_file() for folder in models.values())

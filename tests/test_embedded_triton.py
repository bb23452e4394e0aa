"""A real embedded Triton server (nvidia-pytriton's tritonserver) serving the tiny repository over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from anonymixer import bundle
from exporter.onnx_export import MODELS, sample_input, signatures, torch_modules
from optimizer_backend.server import EmbeddedTritonServer

TOL = 1e-4


@pytest.fixture(scope="module")
def server(triton_server: EmbeddedTritonServer) -> EmbeddedTritonServer:
    return triton_server


@pytest.fixture(scope="module")
def client(server: EmbeddedTritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def infer(client: grpcclient.InferenceServerClient, name: str, x: np.ndarray, input_name: str, output_name: str):
    tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput(output_name)], client_timeout=60)


def test_all_models_ready_on_the_cpu(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_ready()
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index == dict.fromkeys((*MODELS, "anonymixer", "face_detector", "anonymixer_scene"), "READY")
    config = client.get_model_config("stylegan2_synthesis", as_json=True)["config"]
    assert config["backend"] == "python" and config["instance_group"][0]["kind"] == "KIND_CPU"


@pytest.mark.parametrize("name", MODELS)
def test_outputs_equal_the_pytorch_bundle(client, tiny_bundle_dir: Path, name: str) -> None:
    model = bundle.load(tiny_bundle_dir)
    sig, module = signatures(model)[name], torch_modules(model)[name]
    for batch in (1, 3):
        x = sample_input(sig, batch, seed=10 + batch)
        got = infer(client, name, x, sig.input_name, sig.output_name).as_numpy(sig.output_name)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape == (batch, *sig.output_shape)
        assert np.abs(got - ref).max() <= TOL * np.abs(ref).max(), name


def test_concurrent_requests_are_batched_and_returned_to_their_owner(client, tiny_bundle_dir: Path) -> None:
    model = bundle.load(tiny_bundle_dir)
    sig = signatures(model)["stylegan2_mapping"]
    inputs = [sample_input(sig, 1 + i % 3, seed=i) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda x: infer(client, "stylegan2_mapping", x, "z", "w").as_numpy("w"), inputs))
    with torch.no_grad():
        for x, got in zip(inputs, results, strict=True):
            np.testing.assert_allclose(got, model.generator.mapping(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    stats = client.get_inference_statistics("stylegan2_mapping", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= sum(len(x) for x in inputs)


def test_a_bad_request_fails_alone_and_the_server_stays_ready(client) -> None:
    with pytest.raises(InferenceServerException, match=r"(?i)shape|dims"):
        infer(client, "face_embedder", np.zeros((1, 3, 100, 100), np.float32), "face", "embedding")
    with pytest.raises(InferenceServerException):
        infer(client, "face_embedder", np.zeros((9, 3, 112, 112), np.float32), "face", "embedding")  # > max batch
    ok = infer(client, "face_embedder", np.zeros((2, 3, 112, 112), np.float32), "face", "embedding")
    assert ok.as_numpy("embedding").shape[0] == 2 and client.is_server_ready()

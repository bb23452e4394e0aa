"""``anonymixer_scene`` and ``face_detector`` on the real embedded Triton server, and the scene client/CLI."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from anonymixer.alignment import FFHQ_TEMPLATE_256, map_pixels, template_transform
from anonymixer.face_detection import FaceDetector
from anonymixer.images import open_rgb
from anonymixer.paste_back import FaceMask
from anonymixer.samples import builtin_photos
from anonymixer_client import AnonymixerClient, InvalidInputError, Key, NotServedError
from anonymixer_client.cli import main as client_main
from anonymixer_client.errors import map_error
from exporter.repository import read_config, write_config
from optimizer_backend.server import EmbeddedTritonServer
from tests.conftest import FACES, need
from tests.test_anonymixer_server import png, request_inputs

KEY = Key(b"scene-server-test-key-5521")


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTritonServer):
    with AnonymixerClient(triton_server.grpc_url, timeout_s=300) as c:
        yield c


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return builtin_photos()[0][1]


def outside_masks(shape: tuple[int, ...], landmarks: list[np.ndarray]) -> np.ndarray:
    outside = np.ones(shape[:2], bool)
    for marks in landmarks:
        # the tiny bundle's framing (ffhq), and the mask carried to it
        uv = map_pixels(template_transform(marks, FFHQ_TEMPLATE_256, 256, 256), 0, 0, shape[1], shape[0])
        outside &= FaceMask().reframed("ffhq").alpha(uv[..., 0], uv[..., 1], 256) == 0
    return outside


def test_a_real_photo_gets_every_face_replaced(client: AnonymixerClient) -> None:
    photo = np.asarray(open_rgb(need(FACES / "couple.jpg")))
    scene = client.protect_scene(FACES / "couple.jpg", KEY, steps=1)
    out = np.asarray(scene.image)
    assert out.shape == photo.shape and [f.action for f in scene.faces] == ["protected", "protected"]
    assert scene.faces[0].box[0] < scene.faces[1].box[0]  # left to right
    outside = outside_masks(photo.shape, [np.array(f.landmarks, np.float32).astype(np.float64) for f in scene.faces])
    assert np.array_equal(out[outside], photo[outside])  # JPEG decoded once, PNG out: bit-identical
    assert np.abs(out.astype(int) - photo)[~outside].mean() > 10


def test_the_detector_model_matches_the_library(triton_server: EmbeddedTritonServer, portrait: np.ndarray) -> None:
    ramp = np.tile(np.linspace(0, 255, 512, dtype=np.float32)[None, :], (512, 1))
    batch = np.stack([portrait.transpose(2, 0, 1).astype(np.float32), np.stack([ramp] * 3)])
    tensor = grpcclient.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as c:
        faces = c.infer("face_detector", [tensor], client_timeout=60).as_numpy("faces")
    expected = FaceDetector().detect(portrait)
    assert faces.shape == (2, 1, 15)
    assert np.allclose(faces[0], expected, atol=1e-3) and not faces[1].any()  # padding row for the empty image


def test_exif_orientation_is_honoured(client: AnonymixerClient, portrait: np.ndarray) -> None:
    upright = client.protect_scene(portrait, KEY, steps=1)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(portrait).transpose(Image.Transpose.ROTATE_90).save(buffer, format="PNG", exif=exif)
    rotated = client.protect_scene(buffer.getvalue(), KEY, steps=1)
    assert np.array_equal(np.asarray(rotated.image), np.asarray(upright.image))
    assert [f.box for f in rotated.faces] == [f.box for f in upright.faces]


def test_photos_without_faces_come_back_unchanged(client: AnonymixerClient) -> None:
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    scene = client.protect_scene(ramp, KEY)
    assert scene.faces == [] and np.array_equal(np.asarray(scene.image), ramp)


def test_small_faces_are_blurred_and_reported(client: AnonymixerClient, portrait: np.ndarray) -> None:
    small = np.asarray(Image.fromarray(portrait).resize((160, 160), Image.BICUBIC))
    scene = client.protect_scene(small, KEY, steps=1)
    assert [f.action for f in scene.faces] == ["blurred"]  # a ~30 px face, under min_face 40
    assert not np.array_equal(np.asarray(scene.image), small)


def test_bad_photos_fail_alone_and_the_server_keeps_serving(client: AnonymixerClient, portrait: np.ndarray) -> None:
    huge = png(Image.new("RGB", (8000, 6000)))  # 48 M pixels, a few kB of PNG
    cases = [(b"not an image", "cannot be decoded"), (huge, "8000×6000 is over the limit of 40000000 pixels")]
    with ThreadPoolExecutor(3) as pool:
        good = pool.submit(client.protect_scene, portrait, KEY, steps=1)
        bad = [pool.submit(client.protect_scene, data, KEY) for data, _ in cases]
        for future, (_, reason) in zip(bad, cases, strict=True):
            with pytest.raises(InvalidInputError, match=reason):
                future.result()
        assert [f.action for f in good.result().faces] == ["protected"]
    assert client.health()["ready"]


def test_one_request_with_photos_of_different_face_counts(
    triton_server: EmbeddedTritonServer, portrait: np.ndarray
) -> None:
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    inputs = request_inputs([png(ramp), png(portrait)], [b"k1", b"k2"], steps=[1, 1])
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as c:
        result = c.infer("anonymixer_scene", inputs, client_timeout=120)
    assert result.as_numpy("FACES").shape == (2, 1, 15)
    assert result.as_numpy("FACE_ACTIONS").tolist() == [[b""], [b"protected"]]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.as_numpy("IMAGE")[0, 0]))), ramp)


def test_an_unserved_model_is_named(triton_server: EmbeddedTritonServer) -> None:
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as c, pytest.raises(InferenceServerException) as info:
        c.infer("anonymixer_scene_v9", request_inputs([b"x"], [b"k"]))
    assert isinstance(map_error(info.value), NotServedError)


def test_scene_cli_writes_protected_photos(
    triton_server: EmbeddedTritonServer, tmp_path: Path, portrait: np.ndarray
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(portrait).save(photos / "astronaut.jpg", quality=95)
    (photos / "broken.jpg").write_bytes(b"broken")
    key_file = tmp_path / "key"
    key_file.write_bytes(b"cli scene key\n")
    args = ["--url", triton_server.grpc_url, "scene", str(photos), "--key-file", str(key_file), "--out"]
    assert client_main([*args, str(tmp_path / "out"), "--steps", "1"]) == 3  # one file failed
    out = np.asarray(Image.open(tmp_path / "out" / "astronaut.protected.png"))
    assert out.shape == portrait.shape
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert record["output"] == "astronaut.protected.png" and [f["action"] for f in record["faces"]] == ["protected"]
    assert record["seconds"] > 0
    assert "cli scene key" not in (tmp_path / "out" / "results.jsonl").read_text()


@pytest.fixture(scope="module")
def jpeg_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server whose scene model answers JPEG and waits 2 s to batch requests, its models loaded
    and unloaded on demand (a model that is down, for real)."""
    repository = Path(shutil.copytree(triton_repository, tmp_path_factory.mktemp("jpeg") / "repository"))
    folder = repository / "anonymixer_scene"
    config = read_config(folder / "config.pbtxt")
    config.parameters["output_format"].string_value = "jpeg"
    config.dynamic_batching.max_queue_delay_microseconds = 2_000_000
    write_config(folder, config)
    with EmbeddedTritonServer(repository, extra_args=("--model-control-mode=explicit", "--load-model=*")) as server:
        yield server


def scene_call(client: grpcclient.InferenceServerClient, photo: np.ndarray, key: bytes) -> object:
    """The scene model's result for one photo, or the InferenceServerException it raised."""
    try:
        return client.infer("anonymixer_scene", request_inputs([png(photo)], [key], steps=[1]), client_timeout=180)
    except InferenceServerException as exc:
        return exc


def executions(client: grpcclient.InferenceServerClient, at_least: int = 0) -> tuple[int, int]:
    """(executions, inferences) of the scene model, once it counts ``at_least`` executions: Triton
    updates its statistics after the answers leave, late on a loaded machine (up to 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        (stats,) = client.get_inference_statistics("anonymixer_scene", as_json=True)["model_stats"]
        counts = int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))
        if counts[0] >= at_least or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def test_an_internal_error_fails_only_its_request(jpeg_server: EmbeddedTritonServer, portrait: np.ndarray) -> None:
    """A photo 70 000 px wide passes every check but cannot be written as JPEG (65 500 px at most):
    sent in one batch with a good photo, it gets an INTERNAL error and the good one its photo."""
    wide = np.zeros((64, 70_000, 3), np.uint8)
    keys = (b"isolation-good-key-4417", b"isolation-bad-key-9052")
    with grpcclient.InferenceServerClient(jpeg_server.grpc_url) as c, ThreadPoolExecutor(2) as pool:
        before = executions(c)
        good, bad = pool.map(lambda job: scene_call(c, *job), [(portrait, keys[0]), (wide, keys[1])])
        assert executions(c, before[0] + 1) == (before[0] + 1, before[1] + 2)  # both in one execute
    assert not isinstance(good, Exception), good
    assert np.asarray(Image.open(io.BytesIO(good.as_numpy("IMAGE")[0, 0]))).shape == portrait.shape
    assert good.as_numpy("FACE_ACTIONS").tolist() == [[b"protected"]]
    assert isinstance(bad, InferenceServerException) and bad.status() == "StatusCode.INTERNAL"
    # the caller gets an id to quote; the operator finds the traceback under it
    told = re.fullmatch(
        r"anonymixer_scene: internal error while encoding the output: OSError "
        r"\(error id ([0-9a-f]{12}) in the server's log\)",
        bad.message(),
    )
    assert told, bad.message()
    log = jpeg_server.log_file.read_bytes()
    # an error-level line with the traceback (Triton escapes the newlines of a log message)
    line = rb"^E\d{4} .*anonymixer_scene: error " + told.group(1).encode() + rb" while encoding the output:\\nTraceback"
    assert re.search(line, log, re.M)
    assert not any(key in log for key in keys)


def test_a_model_that_is_down_answers_unavailable(jpeg_server: EmbeddedTritonServer, portrait: np.ndarray) -> None:
    """The scene model's BLS calls to an unloaded model: UNAVAILABLE (clients retry it) for the
    requests that needed it; a photo without faces is still served; answered again once it is back."""
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    with grpcclient.InferenceServerClient(jpeg_server.grpc_url) as c:

        def down(model: str) -> None:
            c.unload_model(model)
            deadline = time.monotonic() + 60
            while c.is_model_ready(model) and time.monotonic() < deadline:
                time.sleep(0.2)

        try:
            down("anonymixer")
            with ThreadPoolExecutor(2) as pool:
                face, no_face = pool.map(lambda photo: scene_call(c, photo, b"k"), [portrait, ramp])
            assert isinstance(face, InferenceServerException) and face.status() == "StatusCode.UNAVAILABLE"
            assert face.message().startswith("face protection failed: anonymixer:") and "not ready" in face.message()
            assert not isinstance(no_face, Exception) and no_face.as_numpy("FACES").shape == (1, 0, 15)
            c.load_model("anonymixer")
            down("face_detector")
            failed = scene_call(c, ramp, b"k")
            assert isinstance(failed, InferenceServerException) and failed.status() == "StatusCode.UNAVAILABLE"
            assert failed.message().startswith("face detection failed: face_detector:")
        finally:
            c.load_model("face_detector")
            c.load_model("anonymixer")
        served = scene_call(c, portrait, b"k")
        assert not isinstance(served, Exception) and served.as_numpy("FACE_ACTIONS").tolist() == [[b"protected"]]

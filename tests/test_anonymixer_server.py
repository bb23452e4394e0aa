"""The ``anonymixer`` model end to end on the real embedded Triton server, with plain tritonclient."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from anonymixer import bundle
from anonymixer.config import ProtectConfig, resolve_settings
from anonymixer.keys import identity_derivation, salt_fingerprint
from anonymixer.protect import Protector
from exporter.repository import algorithm_overrides
from optimizer_backend.server import EmbeddedTritonServer
from tests.conftest import TEST_ALGORITHM, build_test_repository
from tests.test_protect import faces

SECRET_KEYS = (b"s3cret-key-alpha-7731", b"s3cret-key-bravo-9124")  # grepped for in the server log


def png(image: np.ndarray | Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def request_inputs(images: list[bytes], keys: list[bytes], groups=None, steps=None) -> list[grpcclient.InferInput]:
    def tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    inputs = [
        tensor("IMAGE", np.array([[im] for im in images], dtype=np.object_), "BYTES"),
        tensor("KEY", np.array([[k] for k in keys], dtype=np.object_), "BYTES"),
    ]
    if groups is not None:
        inputs.append(tensor("GROUP", np.array([[g] for g in groups], dtype=np.int64), "INT64"))
    if steps is not None:
        inputs.append(tensor("STEPS", np.array([[s] for s in steps], dtype=np.int32), "INT32"))
    return inputs


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTritonServer):
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as c:
        yield c


def protect(client, images, keys, **kwargs):
    return client.infer("anonymixer", request_inputs(images, keys, **kwargs), client_timeout=120)


FACE = png(faces(1, seed=7)[0])


def served_config(bundle_dir: Path, algorithm: str = TEST_ALGORITHM) -> ProtectConfig:
    """The settings a test repository's anonymixer model runs with: the bundle's under ``algorithm``."""
    return resolve_settings(bundle.load(bundle_dir).config, algorithm_overrides(algorithm)).config


def test_contract(client, tiny_bundle_dir: Path) -> None:
    config = client.get_model_config("anonymixer", as_json=True)["config"]
    inputs = {i["name"]: (i["data_type"], i["dims"], i.get("optional", False)) for i in config["input"]}
    assert inputs == {
        "IMAGE": ("TYPE_STRING", ["1"], False),
        "KEY": ("TYPE_STRING", ["1"], False),
        "GROUP": ("TYPE_INT64", ["1"], True),
        "STEPS": ("TYPE_INT32", ["1"], True),
    }
    assert {o["name"]: o["data_type"] for o in config["output"]} == {
        "PROTECTED": "TYPE_STRING",
        "TEMPLATE": "TYPE_FP32",
        "ORIGINAL_SIMILARITY": "TYPE_FP32",
        "DERIVATION": "TYPE_STRING",
    }
    result = protect(client, [FACE, FACE], [SECRET_KEYS[0], SECRET_KEYS[1]])
    pngs, templates, sims = (result.as_numpy(n) for n in ("PROTECTED", "TEMPLATE", "ORIGINAL_SIMILARITY"))
    assert pngs.shape == (2, 1) and templates.shape == (2, 128) and sims.shape == (2, 1)
    derivation = identity_derivation(served_config(tiny_bundle_dir)).encode()
    assert derivation == b"anonymixer/key-v1/paper/rows3-8/psi0.7"
    assert result.as_numpy("DERIVATION").tolist() == [[derivation], [derivation]]
    assert templates.dtype == sims.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(templates, axis=1), 1, atol=1e-5)
    picture = Image.open(io.BytesIO(pngs[0, 0]))
    assert picture.format == "PNG" and picture.size == (64, 64) and picture.mode == "RGB"


def test_reproducible_and_key_bound(client) -> None:
    a = protect(client, [FACE], [SECRET_KEYS[0]]).as_numpy("PROTECTED")[0, 0]
    again = protect(client, [FACE], [SECRET_KEYS[0]]).as_numpy("PROTECTED")[0, 0]
    b = protect(client, [FACE], [SECRET_KEYS[1]]).as_numpy("PROTECTED")[0, 0]
    assert a == again and a != b


def test_equals_the_in_process_protector(client, tiny_bundle_dir: Path) -> None:
    images = faces(2, seed=8)
    result = protect(client, [png(im) for im in images], [SECRET_KEYS[0]] * 2, groups=[1, 1])
    local = Protector(bundle.load(tiny_bundle_dir), ProtectConfig.from_dict(json.loads(TEST_ALGORITHM)))
    expected = local.protect(images, SECRET_KEYS[0], groups=[1, 1])
    for i, face in enumerate(expected):
        served = np.asarray(Image.open(io.BytesIO(result.as_numpy("PROTECTED")[i, 0])))
        assert np.abs(served.astype(int) - face.image.astype(int)).max() <= 3
        assert float(result.as_numpy("TEMPLATE")[i] @ face.template) >= 0.999
        assert abs(float(result.as_numpy("ORIGINAL_SIMILARITY")[i, 0]) - face.original_similarity) < 5e-3


SALT = b"deployment salt 4417\n"  # the newline is salt too: a salt file is bytes, not text


@pytest.fixture(scope="module")
def in_process_server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with a deployment salt whose networks all run in the anonymixer model's own torch
    (``--stages-via torch``): nothing between the library and the wire but Triton."""
    folder = tmp_path_factory.mktemp("in_process")
    repository = build_test_repository(tiny_bundle_dir, folder / "repository", "--stages-via", "torch")
    (folder / "salt").write_bytes(SALT)
    server = EmbeddedTritonServer(repository)
    try:
        with pytest.MonkeyPatch.context() as env:  # the server's environment only, not later servers'
            env.setenv("ANONYMIXER_SALT_FILE", str(folder / "salt"))
            server.start()
        yield server.wait_ready()
    finally:
        server.stop()


def test_served_faces_are_the_librarys_for_the_same_key_and_salt(
    in_process_server: EmbeddedTritonServer, tiny_bundle_dir: Path
) -> None:
    """The key's latent is computed alike in both (fp32 CPU mapping, each key alone): the mix alone
    (0 steps) and the refined faces are pixel for pixel the library's, under the same derivation."""
    images = faces(3, seed=33)
    keys = [SECRET_KEYS[0], SECRET_KEYS[1], SECRET_KEYS[0]]
    local = Protector(bundle.load(tiny_bundle_dir), served_config(tiny_bundle_dir), salt=SALT)
    unsalted = Protector(bundle.load(tiny_bundle_dir), served_config(tiny_bundle_dir))
    with grpcclient.InferenceServerClient(in_process_server.grpc_url) as c:
        for steps in (0, 5):
            result = c.infer("anonymixer", request_inputs([png(im) for im in images], keys, steps=[steps] * 3))
            expected = local.protect(images, keys, steps=steps)
            for i, face in enumerate(expected):
                served = np.asarray(Image.open(io.BytesIO(result.as_numpy("PROTECTED")[i, 0])))
                assert np.array_equal(served, face.image), (steps, i)
                np.testing.assert_allclose(result.as_numpy("TEMPLATE")[i], face.template, atol=1e-6)
            derivation = identity_derivation(local.config).encode()
            assert result.as_numpy("DERIVATION").tolist() == [[derivation]] * 3
    without_salt = unsalted.protect(images[:1], keys[0], steps=5)[0].image
    assert not np.array_equal(without_salt, expected[0].image)  # the salt took part


def test_the_salt_is_named_by_its_fingerprint_never_by_its_value(in_process_server: EmbeddedTritonServer) -> None:
    """The log says which salt is in force (its length and fingerprint), and that its trailing
    newline counts; the salt itself is never written."""
    log = in_process_server.log_file.read_text(errors="replace")
    assert f"{len(SALT)} bytes, fingerprint {salt_fingerprint(SALT)}" in log
    assert "begins or ends with whitespace, which is part of the salt" in log
    assert SALT.strip().decode() not in log


def settled_stats(client) -> dict:
    """The model's statistics once they stop changing (Triton records them after the response)."""
    previous = None
    while True:
        stats = client.get_inference_statistics("anonymixer", as_json=True)["model_stats"][0]
        counts = (stats.get("inference_count"), stats.get("execution_count"))
        if counts == previous:
            return stats
        previous = counts
        time.sleep(0.5)


def test_concurrent_requests_are_batched_and_equal_unbatched(client) -> None:
    images = [png(im) for im in faces(8, seed=9)]
    alone = [protect(client, [im], [SECRET_KEYS[1]]).as_numpy("TEMPLATE")[0] for im in images]
    before = settled_stats(client)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda im: protect(client, [im], [SECRET_KEYS[1]]).as_numpy("TEMPLATE")[0], images))
    after = settled_stats(client)
    requests = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    print(f"8 concurrent requests ran in {executions} executions")
    assert requests == 8 and executions < requests
    for t, s in zip(together, alone, strict=True):
        assert float(t @ s) >= 0.999


def test_steps_and_groups_are_honoured(client) -> None:
    zero = protect(client, [FACE], [SECRET_KEYS[0]], steps=[0]).as_numpy("ORIGINAL_SIMILARITY")[0, 0]
    five = protect(client, [FACE], [SECRET_KEYS[0]], steps=[5]).as_numpy("ORIGINAL_SIMILARITY")[0, 0]
    assert abs(five) < abs(zero)
    # One person's photos in one group are refined jointly: the consistency term pulls their
    # templates together, which the same photos refined as separate items lack.
    images = [png(im) for im in faces(2, seed=13)]
    keys = [SECRET_KEYS[0]] * 2
    joint = protect(client, images, keys, groups=[3, 3], steps=[10, 10]).as_numpy("TEMPLATE")
    apart = protect(client, images, keys, steps=[10, 10]).as_numpy("TEMPLATE")
    joint_distance, apart_distance = (float(np.linalg.norm(t[0] - t[1])) for t in (joint, apart))
    print(f"template distance within the group {joint_distance:.3f}, as separate items {apart_distance:.3f}")
    assert joint_distance < 0.5 * apart_distance  # measured 0.035 vs 0.127


def test_template_is_that_of_the_returned_png(client, tiny_bundle_dir: Path) -> None:
    local = Protector(bundle.load(tiny_bundle_dir), ProtectConfig.from_dict(json.loads(TEST_ALGORITHM)))
    images = faces(2, seed=14)
    result = protect(client, [png(im) for im in images], list(SECRET_KEYS), steps=[3, 3])
    for i, original in enumerate(images):
        returned = local.template(np.asarray(Image.open(io.BytesIO(result.as_numpy("PROTECTED")[i, 0]))))
        assert float(returned @ result.as_numpy("TEMPLATE")[i]) >= 0.9999
        similarity = float(returned @ local.template(original))
        assert abs(float(result.as_numpy("ORIGINAL_SIMILARITY")[i, 0]) - similarity) < 1e-3


def _converted_equals_rgb(client, variant: bytes, rgb: np.ndarray) -> None:
    got = protect(client, [variant], [SECRET_KEYS[0]], steps=[1]).as_numpy("PROTECTED")[0, 0]
    want = protect(client, [png(rgb)], [SECRET_KEYS[0]], steps=[1]).as_numpy("PROTECTED")[0, 0]
    assert got == want


def test_image_modes_are_converted_correctly(client) -> None:
    rgb = faces(1, seed=10)[0]
    gray = Image.fromarray(rgb).convert("L")
    gray_rgb = np.asarray(gray.convert("RGB"))
    _converted_equals_rgb(client, png(gray), gray_rgb)
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # 16-bit grayscale
    assert sixteen.mode.startswith("I;16")
    _converted_equals_rgb(client, png(sixteen), gray_rgb)
    rgba = Image.fromarray(rgb).convert("RGBA")  # opaque alpha
    _converted_equals_rgb(client, png(rgba), rgb)
    half = np.dstack([rgb, np.full(rgb.shape[:2], 0, np.uint8)])  # fully transparent → white
    _converted_equals_rgb(client, png(Image.fromarray(half, "RGBA")), np.full_like(rgb, 255))
    rotated = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)  # stored rotated, EXIF undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    _converted_equals_rgb(client, png(rotated, exif=exif), rgb)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    _converted_equals_rgb(client, cmyk.getvalue(), np.asarray(Image.open(io.BytesIO(cmyk.getvalue())).convert("RGB")))


def bomb() -> bytes:
    return png(Image.new("1", (5000, 5000)))  # 25 M pixels, a few KB compressed


BAD_REQUESTS = [
    (
        "undecodable",
        lambda: request_inputs([b"not an image"], [SECRET_KEYS[0]]),
        r"IMAGE item 0: cannot be decoded as an image",
    ),
    ("empty image", lambda: request_inputs([FACE, b""], [SECRET_KEYS[0]] * 2), r"IMAGE item 1: empty"),
    ("pixel limit", lambda: request_inputs([bomb()], [SECRET_KEYS[0]]), r"IMAGE item 0: 5000×5000 is over the limit"),
    (
        "not square",
        lambda: request_inputs([png(np.zeros((64, 80, 3), np.uint8))], [SECRET_KEYS[0]]),
        r"IMAGE item 0: an aligned face must be square, got 80×64",
    ),
    ("empty key", lambda: request_inputs([FACE], [b""]), r"KEY item 0: must be 1–1024 bytes, got empty"),
    (
        "long key",
        lambda: request_inputs([FACE, FACE], [SECRET_KEYS[0], b"k" * 1025]),
        r"KEY item 1: must be 1–1024 bytes, got 1025 bytes",
    ),
    ("steps", lambda: request_inputs([FACE], [SECRET_KEYS[0]], steps=[501]), r"STEPS item 0: 501 is out of range"),
    ("negative steps", lambda: request_inputs([FACE], [SECRET_KEYS[0]], steps=[-1]), r"STEPS item 0: -1 is out"),
    (
        "group key",
        lambda: request_inputs([FACE, FACE], list(SECRET_KEYS), groups=[1, 1]),
        r"GROUP item 1: shares group 1 with item 0 but not its key",
    ),
    (
        "group steps",
        lambda: request_inputs([FACE] * 3, [SECRET_KEYS[0]] * 3, groups=[3, 4, 3], steps=[2, 4, 4]),
        r"^\[StatusCode.INVALID_ARGUMENT\] GROUP item 2: shares group 3 with item 0 but not its STEPS \(4 vs 2; ",
    ),
]


@pytest.mark.parametrize(("case", "make", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_fails_alone(client, case: str, make, message: str) -> None:
    good = request_inputs([FACE], [SECRET_KEYS[1]], steps=[1])
    with ThreadPoolExecutor(3) as pool:  # sent together so that they can share an execute
        futures = [
            pool.submit(client.infer, "anonymixer", good, client_timeout=120),
            pool.submit(client.infer, "anonymixer", make(), client_timeout=120),
            pool.submit(client.infer, "anonymixer", good, client_timeout=120),
        ]
        with pytest.raises(InferenceServerException, match=message):
            futures[1].result()
        assert all(f.result().as_numpy("PROTECTED").shape == (1, 1) for f in (futures[0], futures[2]))
    assert client.is_server_ready()


def test_mismatched_batches_and_wrong_dtypes_are_refused(client) -> None:
    image = grpcclient.InferInput("IMAGE", [2, 1], "BYTES")
    image.set_data_from_numpy(np.array([[FACE], [FACE]], dtype=np.object_))
    key = grpcclient.InferInput("KEY", [1, 1], "BYTES")
    key.set_data_from_numpy(np.array([[SECRET_KEYS[0]]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"(?i)KEY|batch|shape"):
        client.infer("anonymixer", [image, key], client_timeout=60)
    wrong = grpcclient.InferInput("KEY", [1, 1], "INT32")
    wrong.set_data_from_numpy(np.array([[7]], dtype=np.int32))
    one = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    one.set_data_from_numpy(np.array([[FACE]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"(?i)KEY.*(data ?type|INT32)|(data ?type|INT32).*KEY"):
        client.infer("anonymixer", [one, wrong], client_timeout=60)
    assert client.is_server_ready()


def test_cancellation_stops_the_refinement(client) -> None:
    outcome: list = []
    handle = client.async_infer(
        "anonymixer",
        request_inputs([FACE], [SECRET_KEYS[0]], steps=[500]),
        callback=lambda result, error: outcome.append(error),
        client_timeout=120,
    )
    time.sleep(1.5)
    handle.cancel()
    start = time.perf_counter()
    protect(client, [FACE], [SECRET_KEYS[1]], steps=[1])  # would wait ~15 s behind 500 steps
    assert time.perf_counter() - start < 10
    deadline = time.monotonic() + 10
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outcome and outcome[0] is not None and "cancel" in str(outcome[0]).lower()


def test_metrics_and_no_keys_in_the_log(client, triton_server: EmbeddedTritonServer) -> None:
    protect(client, [FACE], [SECRET_KEYS[0]], steps=[1])
    with pytest.raises(InferenceServerException):
        protect(client, [b"junk"], [SECRET_KEYS[0]])
    text = urllib.request.urlopen(triton_server.metrics_url, timeout=10).read().decode()
    for family in (
        "anonymixer_items_protected_total",
        "anonymixer_refinement_steps_total",
        "anonymixer_batch_items",
        "anonymixer_stage_seconds",
        "anonymixer_original_similarity",
        "nv_inference_request_success",
    ):
        assert family in text, family
    assert 'anonymixer_request_errors_total{model="anonymixer",reason="undecodable"}' in text
    assert 'stage="refine"' in text and 'stage="decode"' in text
    # a CPU request takes minutes: its stage times land in buckets, not all in +Inf
    assert re.search(r'anonymixer_stage_seconds_bucket\{[^}]*le="3600"[^}]*stage="refine"', text) or re.search(
        r'anonymixer_stage_seconds_bucket\{[^}]*stage="refine"[^}]*le="3600"', text
    )
    # The scene model has its own series of the same family; this test's items are the anonymixer model's.
    items = [
        line for line in text.splitlines() if line.startswith('anonymixer_items_protected_total{model="anonymixer"')
    ]
    assert len(items) == 1 and float(items[0].split()[-1]) > 0
    log = triton_server.log_file.read_bytes()
    assert b"rejected a request" in log  # the log is being written…
    for key in SECRET_KEYS:  # …and never holds a key
        assert key not in log


def test_overload_is_refused_fast(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """A full queue refuses new requests at once instead of queueing them. With one request running
    and one waiting (``--protect-max-batch 1 --max-queue-size 1``), six sent together: at most those
    two are let in, every other is refused UNAVAILABLE "Exceeds maximum queue size", and Triton's own
    statistics count only the served ones as ever queued. (How fast a refusal comes is a figure for
    benchmarks/overload.py, not a test on a shared machine.)"""
    repository = build_test_repository(
        tiny_bundle_dir, tmp_path / "repository", "--protect-max-batch", "1", "--max-queue-size", "1"
    )
    callers, held = 6, 2  # held: the running batch of one and the queue of one
    with EmbeddedTritonServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as c:
        slow = request_inputs([FACE], [SECRET_KEYS[0]], steps=[20])  # long enough to hold both places

        def outcome() -> InferenceServerException | None:
            try:
                c.infer("anonymixer", slow, client_timeout=600)  # long: a slow answer must not pass for a refusal
                return None
            except InferenceServerException as exc:
                return exc

        before = settled_stats(c)
        with ThreadPoolExecutor(callers) as pool:
            outcomes = list(pool.map(lambda _: outcome(), range(callers)))
        after = settled_stats(c)
        refused = [e for e in outcomes if e is not None]
        served = callers - len(refused)
        print(f"overload: {served} served, {len(refused)} refused: {refused[0] if refused else None}")
        # both places held, then every later caller refused (one place, if all five came before the
        # first left the queue for the running place)
        assert 1 <= served <= held
        assert all(e.status() == "StatusCode.UNAVAILABLE" for e in refused)
        assert all(e.message().endswith("Exceeds maximum queue size") for e in refused)

        def count(stats: dict, part: str) -> int:
            return int(stats["inference_stats"][part].get("count", 0))

        for part in ("queue", "success", "fail"):  # the refused never entered: neither queued nor failed
            assert count(after, part) - count(before, part) == (0 if part == "fail" else served), part
        assert c.is_server_ready()


# One tiny refinement step saves ~3.7 MiB of weights and ~17.4 MiB per item for backward
# (tests/test_protect.py): a 45 MiB budget fits a batch of two items, never a group of three.
BUDGET_ALGORITHM = '{"steps": 2, "views": 0, "memory_budget_mib": 45}'


@pytest.fixture(scope="module")
def budget_server(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with a memory budget, whose models can be unloaded (explicit model control)."""
    folder = tmp_path_factory.mktemp("budget")
    repository = build_test_repository(tiny_bundle_dir, folder / "repository", "--algorithm", BUDGET_ALGORITHM)
    explicit = ("--model-control-mode=explicit", "--load-model=*")
    with EmbeddedTritonServer(repository, extra_args=explicit) as server:
        yield server


def test_out_of_memory_splits_the_batch_and_fails_only_the_group_that_cannot_fit(
    budget_server: EmbeddedTritonServer, client
) -> None:
    images = [png(im) for im in faces(4, seed=15)]
    keys = [SECRET_KEYS[0]] * 3
    with grpcclient.InferenceServerClient(budget_server.grpc_url) as c:
        # 3 items (groups of 2 and 1) do not fit together: split and retried, nothing is lost
        split = c.infer("anonymixer", request_inputs(images[:3], keys, groups=[1, 1, 2]), client_timeout=120)
        unconstrained = protect(client, images[:3], keys, groups=[1, 1, 2], steps=[2] * 3)  # the session server
        for i in range(3):
            assert float(split.as_numpy("TEMPLATE")[i] @ unconstrained.as_numpy("TEMPLATE")[i]) >= 0.999
        log = budget_server.log_file.read_text(errors="replace")
        assert "a refinement batch of 3 items ran out of memory; retrying it as 2 + 1 items" in log

        too_big = request_inputs(images[:3], keys, groups=[5, 5, 5])  # one group of three: never fits
        fits = request_inputs(images[3:], [SECRET_KEYS[1]])
        with ThreadPoolExecutor(3) as pool:  # sent together so that they can share an execute
            futures = [pool.submit(c.infer, "anonymixer", r, client_timeout=120) for r in (fits, too_big, fits)]
            with pytest.raises(InferenceServerException) as failed:
                futures[1].result()
            assert all(f.result().as_numpy("PROTECTED").shape == (1, 1) for f in (futures[0], futures[2]))
        assert failed.value.status() == "StatusCode.INTERNAL"
        assert failed.value.message() == (
            "out of memory: refinement of 3 items needs more than 45 MiB of activations (memory_budget_mib)"
        )
        text = urllib.request.urlopen(budget_server.metrics_url, timeout=10).read().decode()
        assert 'anonymixer_request_errors_total{model="anonymixer",reason="out_of_memory"} 1' in text
        assert c.is_server_ready()


def test_a_network_model_down_is_unavailable_not_internal(budget_server: EmbeddedTritonServer) -> None:
    request = request_inputs([FACE], [SECRET_KEYS[0]], steps=[1])
    with grpcclient.InferenceServerClient(budget_server.grpc_url) as c:
        c.unload_model("stylegan2_synthesis")
        try:
            with pytest.raises(InferenceServerException) as failed:
                c.infer("anonymixer", request, client_timeout=120)
        finally:
            c.load_model("stylegan2_synthesis")
        assert failed.value.status() == "StatusCode.UNAVAILABLE"
        message = failed.value.message()
        assert message.startswith("anonymixer: a network model is unavailable, retry: stylegan2_synthesis: ")
        served = c.infer("anonymixer", request, client_timeout=120).as_numpy("PROTECTED")  # the retry
        # keys never go through the served mapping network (anonymixer.keys): protecting needs none
        c.unload_model("stylegan2_mapping")
        try:
            assert c.infer("anonymixer", request, client_timeout=120).as_numpy("PROTECTED").tolist() == served.tolist()
        finally:
            c.load_model("stylegan2_mapping")

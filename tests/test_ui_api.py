"""The browser front end's flows through its API (gradio_client), against the real tiny service:
protect and enroll, verify, revoke, whole photos, the service's report, and the service's own
errors in place of tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymixer.samples import builtin_photos
from tests.conftest import REPO
from tests.test_protect import faces

gradio_client = pytest.importorskip("gradio_client", reason="the browser UI needs the ui extra: pip install -e '.[ui]'")

KEY, OTHER_KEY = "ui-api-test-key-7741", "ui-api-test-key-other"


@pytest.fixture(scope="module")
def page(ui_page: str):
    client = gradio_client.Client(ui_page, verbose=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def face_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ui-faces")
    paths = []
    for n, array in enumerate(faces(3, seed=31)):
        Image.fromarray(array).save(folder / f"face{n}.png")
        paths.append(folder / f"face{n}.png")
    return paths


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_protect_enrolls_and_verifies(page, face_files: list[Path]) -> None:
    photos = [gradio_client.handle_file(str(p)) for p in face_files[:2]]
    gallery, scores, note = page.predict(photos, KEY, api_name="/protect")
    captions = [item["caption"] for item in gallery]
    assert captions[0] == "1: original" and captions[1].startswith("1: protected · cos(protected, original) ")
    protected = pixels(gallery[1]["image"])
    original = np.asarray(Image.open(face_files[0]).resize(protected.shape[1::-1]).convert("RGB"), dtype=np.int16)
    assert np.abs(protected - original).mean() > 10  # a new face, not the photo
    assert "| 1 | " in scores and "| 2 | " in scores and "Enrolled: a template of 2" in note
    # the template stays in this session: the same person verifies, another key's face does not score as high
    same_face, same = page.predict(gradio_client.handle_file(str(face_files[0])), KEY, 0.0, api_name="/verify")
    assert "**match**" in same and Path(same_face).is_file()
    score = float(same.split("score ")[1].split(" ")[0])
    _, other = page.predict(gradio_client.handle_file(str(face_files[0])), OTHER_KEY, 0.0, api_name="/verify")
    assert float(other.split("score ")[1].split(" ")[0]) < score


def test_verify_needs_an_enrolment_of_its_own_session(ui_page: str, face_files: list[Path]) -> None:
    """Another session (another browser) has no template: nothing of one user reaches another."""
    stranger = gradio_client.Client(ui_page, verbose=False)
    try:
        with pytest.raises(gradio_client.exceptions.AppError, match="enroll first"):
            stranger.predict(gradio_client.handle_file(str(face_files[0])), KEY, 0.5, api_name="/verify")
    finally:
        stranger.close()


def test_revoke_gives_another_face(page, face_files: list[Path]) -> None:
    current, renewed, text = page.predict(
        gradio_client.handle_file(str(face_files[2])), KEY, OTHER_KEY, api_name="/revoke"
    )
    assert np.abs(pixels(current) - pixels(renewed)).mean() > 5
    assert re.match(r"Cross-key score [+-]\d\.\d{3} — \*\*(no )?match\*\* \(threshold 0\.50\)", text)
    assert KEY not in text and OTHER_KEY not in text


def test_whole_photo(page, tmp_path: Path) -> None:
    photo = tmp_path / "portrait.png"
    Image.fromarray(builtin_photos()[0][1]).save(photo)
    image, boxes, table = page.predict(gradio_client.handle_file(str(photo)), KEY, api_name="/scene")
    assert pixels(image).shape == np.asarray(Image.open(photo).convert("RGB")).shape
    assert [a["label"] for a in boxes["annotations"]] == ["1: protected"]
    assert "| 1 | " in table and "| protected |" in table


def test_service_report(page) -> None:
    report = page.predict(api_name="/service")
    assert report.startswith("**Ready**") and "| `anonymixer` | READY | 1 |" in report
    assert "| `anonymixer` | " in report.split("Since each model loaded")[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image at all", "IMAGE item 0: cannot be decoded as an image"),
        ((80, 64), "IMAGE item 0: an aligned face must be square, got 80×64"),
        ((5000, 5000), "IMAGE item 0: 5000×5000 is over the limit of 16000000 pixels"),
    ],
)
def test_bad_files_get_the_services_message(
    page, tmp_path: Path, content: bytes | tuple[int, int], message: str
) -> None:
    path = tmp_path / "upload.png"
    if isinstance(content, tuple):
        Image.new("RGB", content, (120, 90, 60)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        page.predict([gradio_client.handle_file(str(path))], KEY, api_name="/protect")


def test_a_missing_key_is_asked_for(page, face_files: list[Path]) -> None:
    with pytest.raises(gradio_client.exceptions.AppError, match="type a key or load a key file first"):
        page.predict([gradio_client.handle_file(str(face_files[0]))], "", api_name="/protect")


def test_the_command_names_the_extra_when_gradio_is_missing() -> None:
    script = "import sys; sys.modules['gradio'] = None; from apps.cli import main; main(['ui', '--server', 'x:1'])"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pip install -e '.[ui]'" in done.stderr


def test_tls_flags_need_a_running_service() -> None:
    from apps.cli import main

    with pytest.raises(SystemExit, match="give --server too"):
        main(["ui", "--ssl"])


def test_a_photo_without_faces_says_so(page, tmp_path: Path) -> None:
    path = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (200, 200, 190)).save(path)
    _, boxes, table = page.predict(gradio_client.handle_file(str(path)), KEY, api_name="/scene")
    assert boxes["annotations"] == [] and table.startswith("No face found")


def test_an_unreachable_service_is_named(tmp_path: Path, face_files: list[Path]) -> None:
    from optimizer_backend.server import free_ports
    from webui.app import build, launch
    from webui.connection import Connection

    dead = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    page = build(Connection(dead, timeout_s=20))
    url = launch(page, "127.0.0.1", free_ports(1)[0], block=False)
    try:
        client = gradio_client.Client(url, verbose=False)
        assert client.predict(api_name="/service").startswith(f"**Not reachable** at `{dead}`")
        with pytest.raises(gradio_client.exceptions.AppError, match="the service is unreachable: failed to connect"):
            client.predict([gradio_client.handle_file(str(face_files[0]))], KEY, api_name="/protect")
        client.close()
    finally:
        page.close()


def test_a_key_file_is_read_once_and_its_upload_removed(tmp_path: Path) -> None:
    from anonymixer_client import Key
    from webui.keys import NO_KEY, key_of, read_key_file

    upload = tmp_path / "alice.key"
    upload.write_bytes(b"alice's secret\n")
    secret = read_key_file(str(upload))
    assert secret == b"alice's secret" and not upload.exists()  # only the session holds it now
    assert key_of("", secret) == Key(b"alice's secret") and key_of("typed", secret) == Key("typed")
    with pytest.raises(ValueError, match=NO_KEY):
        key_of("", None)
    upload.write_bytes(b"\n")
    with pytest.raises(ValueError, match="a key must be 1–1024 bytes, got 0"):
        read_key_file(str(upload))
    assert not upload.exists()


def test_the_clients_flags_pass_through_to_every_call(tmp_path: Path) -> None:
    from apps.cli import build_parser
    from apps.ui import connection

    secret = tmp_path / "api.key"
    secret.write_text("deployment-secret-9\n")
    flags = ["--server", "svc:9001", "--ssl", "--root-certificates", "ca.pem", "--certificate", "me.pem"]
    args = build_parser().parse_args(["ui", *flags, "--private-key", "me.key", "--api-key-file", str(secret)])
    made = connection(args, args.server, "http://svc:9002/metrics")
    assert "deployment-secret-9" not in repr(made)
    for client in (made.async_client(), made.client()):
        assert (client.url, client.ssl, client.root_certificates) == ("svc:9001", True, "ca.pem")
        assert (client.certificate_chain, client.private_key) == ("me.pem", "me.key")
        assert client.headers is not None and "deployment-secret-9" in client.headers.values()

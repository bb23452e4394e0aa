"""``python -m exporter download`` against a real HTTP server on loopback: resume, verify, refuse."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter.__main__ import main as exporter_main
from exporter.download import OFFICIAL_FILES, DownloadError, download_file
from tests.conftest import MOBILEFACENET, need

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class FileServer:
    """Serves PAYLOAD under any name; can honour or ignore Range and drop a connection mid-body."""

    def __init__(self) -> None:
        self.payload = PAYLOAD
        self.honour_range = True
        self.cut_after: int | None = None  # bytes sent before dropping the next response
        self.requests: list[str | None] = []  # the Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng and server.honour_range else 0
                if start >= len(server.payload):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    server.cut_after = None
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


SPEC = replace(OFFICIAL_FILES["e4e"], sha256=DIGEST, size=len(PAYLOAD))


def test_download_verifies_and_skips_when_present(server: FileServer, tmp_path: Path) -> None:
    path = download_file(SPEC, tmp_path, mirror=server.url, timeout_s=5)
    assert path.read_bytes() == PAYLOAD
    assert path.name == "e4e_ffhq_encode.pt"
    assert not (tmp_path / "e4e_ffhq_encode.pt.part").exists()
    download_file(SPEC, tmp_path, mirror=server.url, timeout_s=5)
    assert len(server.requests) == 1  # the second call found a verified file


def test_interrupted_download_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    server.cut_after = 300_000
    path = download_file(SPEC, tmp_path, mirror=server.url, timeout_s=5)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=300000-"]


def test_server_ignoring_range_restarts_cleanly(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "e4e_ffhq_encode.pt.part").write_bytes(PAYLOAD[:1000])
    server.honour_range = False
    path = download_file(SPEC, tmp_path, mirror=server.url, timeout_s=5)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=1000-"]


def test_checksum_mismatch_removes_the_file(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="does not match the pinned"):
        download_file(replace(SPEC, sha256="0" * 64), tmp_path, mirror=server.url, timeout_s=5)
    assert list(tmp_path.iterdir()) == []


def test_unpinned_needs_consent(server: FileServer, tmp_path: Path) -> None:
    unpinned = OFFICIAL_FILES["ir_se50"]
    assert unpinned.sha256 is None
    with pytest.raises(DownloadError, match="no pinned SHA-256"):
        download_file(unpinned, tmp_path, mirror=server.url, timeout_s=5)
    assert server.requests == []
    path = download_file(unpinned, tmp_path, mirror=server.url, allow_unpinned=True, timeout_s=5)
    assert path.read_bytes() == PAYLOAD


def test_unreachable_source_keeps_partial_data(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="every source failed"):
        download_file(SPEC, tmp_path, mirror="http://127.0.0.1:9", attempts=1, timeout_s=2)


def test_cli_pins_hash_and_downloads(server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = exporter_main(
        ["download", "--dest", str(tmp_path), "--mirror", server.url, "--sha256", f"ir_se50={DIGEST}", "ir_se50"]
    )
    assert code == 0
    assert (tmp_path / "model_ir_se50.pth").read_bytes() == PAYLOAD
    assert DIGEST in capsys.readouterr().err
    bad = exporter_main(
        ["download", "--dest", str(tmp_path), "--mirror", server.url, "--sha256", f"stylegan2={'f' * 64}", "stylegan2"]
    )
    assert bad == 1
    assert "does not match the pinned" in capsys.readouterr().err


def test_mobilefacenet_pin_matches_the_real_file(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mobile1024 FR network downloads with its pinned hash (served here from ../shared's copy)."""
    server.payload = need(MOBILEFACENET).read_bytes()
    assert exporter_main(["download", "--dest", str(tmp_path), "--mirror", server.url, "mobilefacenet"]) == 0
    assert (tmp_path / "mobilefacenet.pt").read_bytes() == server.payload
    assert len(server.payload) == OFFICIAL_FILES["mobilefacenet"].size
    assert OFFICIAL_FILES["mobilefacenet"].sha256 in capsys.readouterr().err

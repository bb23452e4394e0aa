"""Resumable, checksum-verified download of the official pretrained files.

Each file is fetched into ``<name>.part`` with HTTP range requests (an interrupted download resumes
where it stopped; a server that ignores ``Range`` restarts it), hashed, and renamed into place only
when its SHA-256 matches the pinned value. Files already present with the right hash are skipped.

Pinned hashes: only where a public, independently confirmed value exists. The others are marked
unpinned: they are downloaded only with ``allow_unpinned`` and their hash is printed so it can be
recorded (``--sha256 NAME=HEX`` pins it on later runs).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialFile:
    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    note: str


OFFICIAL_FILES: dict[str, OfficialFile] = {
    f.name: f
    for f in (
        OfficialFile(
            name="e4e",
            filename="e4e_ffhq_encode.pt",
            urls=(
                "https://drive.usercontent.google.com/download?id=1cUv_reLE6k3604or78EranS7XzuVMWeO&export=download&confirm=t",
            ),
            sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
            size=1201649680,
            note="e4e FFHQ encoder + StyleGAN2 FFHQ decoder (omertov/encoder4editing README link)",
        ),
        OfficialFile(
            name="ir_se50",
            filename="model_ir_se50.pth",
            urls=("https://drive.google.com/uc?id=1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn&export=download&confirm=t",),
            sha256=None,
            size=None,
            note="IR-SE50 ArcFace (TreB1eN/InsightFace_Pytorch, as linked by pSp/e4e); no public SHA-256 known",
        ),
        OfficialFile(
            name="stylegan2",
            filename="stylegan2-ffhq-config-f.pt",
            urls=("https://drive.google.com/uc?id=1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT&export=download&confirm=t",),
            sha256=None,
            size=None,
            note="rosinality StyleGAN2 FFHQ config-f (optional: e4e_ffhq_encode.pt already holds the generator)",
        ),
        OfficialFile(
            name="mobilefacenet",
            filename="mobilefacenet.pt",
            urls=("https://github.com/foamliu/MobileFaceNet/releases/download/v1.0/mobilefacenet.pt",),
            # 4 135 271 bytes; this hash is published beside the URL by independent projects that use it.
            sha256="90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4",
            size=4135271,
            note="MobileFaceNet (foamliu/MobileFaceNet v1.0 release, Apache-2.0, trained on MS1M): the mobile1024 FR",
        ),
    )
}
DEFAULT_FILES = ("e4e", "ir_se50")  # the ffhq1024 bundle's; mobile1024 needs only mobilefacenet


class DownloadError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _fetch_to_part(url: str, part: Path, size_hint: int | None, timeout_s: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "anonymixer-exporter"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else size_hint
        with (
            open(part, "ab" if have else "wb") as out,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name, file=sys.stderr) as bar,
        ):
            received = 0
            while block := response.read(CHUNK):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if length is not None and received < int(length):
        # http.client reports a dropped connection as a short read, not an error.
        raise ConnectionError(f"connection closed after {received} of {length} bytes")


def download_file(
    spec: OfficialFile,
    dest: Path,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    allow_unpinned: bool = False,
    attempts: int = 3,
    timeout_s: float = 60.0,
) -> Path:
    """Fetch one file into ``dest`` and verify it; returns its path. Resumes a previous ``.part``."""
    expected = sha256 or spec.sha256
    if expected is None and not allow_unpinned:
        raise DownloadError(
            f"{spec.filename}: no pinned SHA-256 is known; pass --sha256 {spec.name}=HEX, or --allow-unpinned "
            "to download it and print its hash"
        )
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / spec.filename
    if final.exists() and expected is not None and sha256_of(final) == expected:
        print(f"{spec.filename}: present, SHA-256 verified", file=sys.stderr)
        return final
    part = dest / (spec.filename + ".part")
    urls = [mirror.rstrip("/") + "/" + spec.filename] if mirror else list(spec.urls)
    errors = []
    for url in urls:
        for attempt in range(1, attempts + 1):
            try:
                _fetch_to_part(url, part, spec.size, timeout_s)
                break
            except (OSError, urllib.error.URLError) as exc:
                errors.append(f"{url} (attempt {attempt}): {exc}")
        else:
            continue
        actual = sha256_of(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise DownloadError(f"{spec.filename}: SHA-256 {actual} does not match the pinned {expected}; file removed")
        shutil.move(part, final)
        print(f"{spec.filename}: {final.stat().st_size} bytes, SHA-256 {actual}", file=sys.stderr)
        return final
    raise DownloadError(
        f"{spec.filename}: every source failed (partial data kept in {part}):\n  " + "\n  ".join(errors)
    )

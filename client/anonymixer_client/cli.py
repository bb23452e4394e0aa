"""``anonymixer-client``: protect folders of faces or whole photos, enroll, verify and check the
service from a shell.

Exit codes: 0 ok, 2 bad usage (a template of another identity derivation than the server's
included), 3 some items failed (listed), 4 server unavailable; ``verify``: 0 match, 1 no match.
Every template written (``enroll``'s file, ``protect``'s results.jsonl) records the identity
derivation the server reported, ``null`` if it reported none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from anonymixer_client.client import DEFAULT_THRESHOLD, AnonymixerClient
from anonymixer_client.errors import AnonymixerError, InvalidInputError, ModelNotReadyError, ServerUnavailableError
from anonymixer_client.types import Key, Template

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
EXIT_OK, EXIT_USAGE, EXIT_ITEMS_FAILED, EXIT_UNAVAILABLE = 0, 2, 3, 4


def image_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files


def output_name(path: Path, data: bytes) -> str:
    suffix = ".png" if data.startswith(PNG_SIGNATURE) else ".jpg"
    return f"{path.stem}.protected{suffix}"


def process_files(args: argparse.Namespace, unit: str, call: Callable[[Path], tuple[bytes, dict[str, Any]]]) -> int:
    """Run ``call`` on every input file, ``args.concurrency`` at a time, writing each result to
    --out and a JSON line to results.jsonl; files done by an earlier run are skipped (resumable)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = image_files(args.inputs)
    done = {p.name.split(".protected")[0] for p in out.glob("*.protected.*")}
    todo = [f for f in files if f.stem not in done]
    failed: list[str] = []
    results = out / "results.jsonl"
    with (
        open(results, "a") as log,
        ThreadPoolExecutor(args.concurrency) as pool,
        tqdm(total=len(files), initial=len(files) - len(todo), unit=unit, desc=args.command) as bar,
    ):

        def one(path: Path) -> tuple[Path, float, tuple[bytes, dict[str, Any]] | InvalidInputError]:
            start = time.perf_counter()
            outcome: tuple[bytes, dict[str, Any]] | InvalidInputError
            try:
                outcome = call(path)
            except InvalidInputError as exc:
                outcome = exc
            return path, time.perf_counter() - start, outcome

        for future in as_completed([pool.submit(one, f) for f in todo]):
            path, seconds, outcome = future.result()
            bar.update()
            if isinstance(outcome, InvalidInputError):
                failed.append(f"{path}: {outcome.reason}")
                continue
            data, record = outcome
            name = output_name(path, data)
            (out / name).write_bytes(data)
            log.write(json.dumps({"file": str(path), "output": name, **record, "seconds": round(seconds, 3)}) + "\n")
            log.flush()
    print(
        f"{len(todo) - len(failed)} protected, {len(files) - len(todo)} already done, {len(failed)} failed; "
        f"results in {results}"
    )
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return EXIT_ITEMS_FAILED if failed else EXIT_OK


def cmd_protect(client: AnonymixerClient, args: argparse.Namespace) -> int:
    key = Key.from_file(args.key_file)

    def protect(path: Path) -> tuple[bytes, dict[str, Any]]:
        face = client.protect([path], key, steps=args.steps)[0]
        return face.png, {
            "template": [round(float(v), 6) for v in face.template],
            "derivation": face.derivation,
            "original_similarity": face.original_similarity,
        }

    return process_files(args, "face", protect)


def cmd_scene(client: AnonymixerClient, args: argparse.Namespace) -> int:
    key = Key.from_file(args.key_file)

    def protect_scene(path: Path) -> tuple[bytes, dict[str, Any]]:
        scene = client.protect_scene(path, key, steps=args.steps)
        faces = [
            {"box": [round(v, 1) for v in f.box], "score": round(f.score, 4), "action": f.action} for f in scene.faces
        ]
        return scene.data, {"faces": faces}

    return process_files(args, "photo", protect_scene)


def cmd_enroll(client: AnonymixerClient, args: argparse.Namespace) -> int:
    template = client.enroll(image_files(args.inputs), Key.from_file(args.key_file))
    record = {"template": template.vector.tolist(), "images": template.images, "derivation": template.derivation}
    Path(args.template).write_text(json.dumps(record))
    print(f"template of {template.images} image(s) written to {args.template}")
    return EXIT_OK


def cmd_verify(client: AnonymixerClient, args: argparse.Namespace) -> int:
    stored = json.loads(Path(args.template).read_text())
    # a file written before derivations were recorded has none: verify() warns and compares
    template = Template(
        np.asarray(stored["template"], dtype=np.float32), stored.get("images", 1), stored.get("derivation")
    )
    result = client.verify(args.image, Key.from_file(args.key_file), template, threshold=args.threshold)
    print(json.dumps({"score": round(result.score, 6), "is_match": result.is_match, "threshold": result.threshold}))
    return EXIT_OK if result.is_match else 1


def cmd_health(client: AnonymixerClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.health(), indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anonymixer-client", description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address (default 127.0.0.1:8001)")
    parser.add_argument("--ssl", action="store_true")
    parser.add_argument("--root-certificates", help="PEM file of the CA that signed the server certificate")
    parser.add_argument("--certificate", help="this client's PEM certificate (a server with mutual TLS)")
    parser.add_argument("--private-key", help="the PEM private key of --certificate")
    parser.add_argument("--api-key-file", help="a file holding the deployment's API key (sent as header api-key)")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline per call, seconds (default 300)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, concurrency, run in (
        ("protect", "protect images (files or folders) into --out", 4, cmd_protect),
        ("scene", "whole photos (files or folders): every face replaced, into --out", 2, cmd_scene),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("inputs", nargs="+")
        p.add_argument("--key-file", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--concurrency", type=int, default=concurrency)
        p.add_argument("--steps", type=int, default=None)
        p.set_defaults(run=run)
    e = sub.add_parser("enroll", help="a person's photos → a template file")
    e.add_argument("inputs", nargs="+")
    e.add_argument("--key-file", required=True)
    e.add_argument("--template", required=True, help="output JSON file")
    e.set_defaults(run=cmd_enroll)
    v = sub.add_parser("verify", help="probe photo + key vs a template file (exit 0 match, 1 no match)")
    v.add_argument("image")
    v.add_argument("--key-file", required=True)
    v.add_argument("--template", required=True)
    v.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    v.set_defaults(run=cmd_verify)
    h = sub.add_parser("health", help="server and model readiness, versions, batch settings")
    h.set_defaults(run=cmd_health)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if bool(args.certificate) != bool(args.private_key):
        print("error: --certificate and --private-key go together", file=sys.stderr)
        return EXIT_USAGE
    client = AnonymixerClient(
        args.url,
        ssl=args.ssl,
        timeout_s=args.timeout,
        root_certificates=args.root_certificates,
        certificate_chain=args.certificate,
        private_key=args.private_key,
        api_key=Path(args.api_key_file).read_text().strip() if args.api_key_file else None,
    )
    try:
        with client:
            return int(args.run(client, args))
    except (ServerUnavailableError, ModelNotReadyError) as exc:
        print(f"error: server unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AnonymixerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ITEMS_FAILED


if __name__ == "__main__":
    sys.exit(main())

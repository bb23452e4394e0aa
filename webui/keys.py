"""A user's key in the page: typed into a password field or read from a key file. It is turned
into a :class:`anonymixer_client.Key` (which never prints itself) and goes nowhere but the
service: never into an output, a log line or an error message."""

from __future__ import annotations

import contextlib
from pathlib import Path

from anonymixer_client import Key

NO_KEY = "type a key or load a key file first"


def read_key_file(path: str) -> bytes:
    """The key file's bytes (a trailing newline dropped, as the client's CLI reads one), after
    removing the copy the upload left on the server's disk: the key then lives only in the
    session's memory."""
    file = Path(path)
    try:
        secret = file.read_bytes().rstrip(b"\r\n")
    finally:
        with contextlib.suppress(OSError):
            file.unlink()
    Key(secret)  # refuse an empty or oversized file now, with the client's own message (sizes only)
    return secret


def key_of(typed: str | None, loaded: bytes | None) -> Key:
    """The typed key, else the loaded key file's; ``ValueError`` when there is neither."""
    if typed:
        return Key(typed)
    if loaded:
        return Key(loaded)
    raise ValueError(NO_KEY)

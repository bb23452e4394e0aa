"""A stub's heartbeat: evidence that it lives and works which does not queue behind its work.

A request to a model waits in the model's queue, so the supervisor cannot tell a stub busy with a
300 s request from a wedged one by sending it a probe. Every Python model of the repository
therefore writes its state into a small file the supervisor reads,
``$ANONYMIXER_HEARTBEAT_DIR/<stub pid>``, holding ``<state> <CLOCK_MONOTONIC seconds>``:

- ``idle``: between ``execute`` calls;
- ``busy``: inside ``execute``, beating at least once per unit of its work (a refinement or
  inversion step, a network batch), so a stale ``busy`` beat means no progress;
- ``waiting``: blocked in a BLS call to another model of the server, which is judged on its own.

``CLOCK_MONOTONIC`` is one clock for every process of the machine, so the supervisor compares a
beat with its own ``time.monotonic()``. Without the environment variable (a server started without
the supervisor) beating costs nothing and writes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "ANONYMIXER_HEARTBEAT_DIR"
STATES = ("idle", "busy", "waiting")
RECORD_BYTES = 32
MIN_INTERVAL_S = 0.2  # a GPU step takes milliseconds: one write per step would be wasted work


@dataclass(frozen=True)
class Beat:
    state: str
    at: float  # time.monotonic() of the beat

    def age(self, now: float) -> float:
        return now - self.at


class Heartbeat:
    """This process's beat (one stub process serves one model instance)."""

    def __init__(self, directory: str | Path | None) -> None:
        self._fd: int | None = None
        self.state, self._written = "idle", 0.0
        if directory:
            path = Path(directory) / str(os.getpid())
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self.beat("idle")

    def beat(self, state: str = "busy") -> None:
        """Record ``state`` now (a repeated state at most every ``MIN_INTERVAL_S``)."""
        now = time.monotonic()
        if self._fd is None or (state == self.state and now - self._written < MIN_INTERVAL_S):
            self.state = state
            return
        self.state, self._written = state, now
        # one pwrite of a fixed-size record at offset 0: a reader never sees half of two records
        os.pwrite(self._fd, f"{state} {now:.3f}".ljust(RECORD_BYTES).encode(), 0)

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Around an ``execute``: busy inside, idle after."""
        self.beat("busy")
        try:
            yield
        finally:
            self.beat("idle")

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a call to another model: waiting inside, the state before after."""
        before = self.state
        self.beat("waiting")
        try:
            yield
        finally:
            self.beat(before)


_process_heartbeat: Heartbeat | None = None


def heartbeat() -> Heartbeat:
    """The heartbeat of this stub process, opened on first use."""
    global _process_heartbeat
    if _process_heartbeat is None:
        _process_heartbeat = Heartbeat(os.environ.get(ENV))
    return _process_heartbeat


def read_beat(directory: Path, pid: int) -> Beat | None:
    """The last beat of stub ``pid``, or None if it never beat (or the record cannot be read)."""
    try:
        state, at = (directory / str(pid)).read_text().split()
        return Beat(state, float(at)) if state in STATES else None
    except (OSError, ValueError):
        return None


def beating(execute: Callable[[Any, list[Any]], list[Any]]) -> Callable[[Any, list[Any]], list[Any]]:
    """Decorates a model's ``execute``: busy while it runs, idle after."""

    @functools.wraps(execute)
    def wrapper(self: Any, requests: list[Any]) -> list[Any]:
        with heartbeat().working():
            return execute(self, requests)

    return wrapper

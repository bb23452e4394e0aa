"""Typed errors: what went wrong, mapped from the gRPC status and the server's message."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_ITEM = re.compile(r"\b(IMAGE|KEY|GROUP|STEPS) item (\d+): (.*)", re.S)
QUEUE_FULL = "Exceeds maximum queue size"  # Triton's UNAVAILABLE refusal when a model's queue is full


class AnonymixerError(Exception):
    """Base class of every error this client raises."""


class InvalidInputError(AnonymixerError):
    """The server refused an input; ``item`` is the index in *your* input list (None if not per item)."""

    def __init__(
        self, message: str, *, input_name: str | None = None, item: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.input_name, self.item, self.reason = input_name, item, reason or message


class ServerUnavailableError(AnonymixerError):
    """No server answered, or it answered UNAVAILABLE (retried within the call's deadline)."""


class ServiceBusyError(ServerUnavailableError):
    """The service is up but busy: the model's queue is full (``--max-queue-size``), so Triton
    refused the request at once, without queueing it. Retried with backoff until the call's
    deadline (whenever ``retries`` > 0, without counting against it)."""


class AccessDeniedError(AnonymixerError):
    """The server refused this client: a missing or wrong API key (``api_key``). Not retried."""


class ModelUnavailableError(AnonymixerError):
    """The model's process died and the server's supervisor is bringing it back, or a model it
    calls is down: Triton answers ``Stub process '…' is not healthy`` (INTERNAL) or the service
    answers UNAVAILABLE. Retried within the call's deadline; raised only when that runs out."""


class DeadlineExceededError(AnonymixerError):
    """The call did not finish within its deadline."""


class ModelNotReadyError(AnonymixerError):
    """The server is up but the model is not loaded or not ready."""


class NotServedError(ModelNotReadyError):
    """This server does not serve the model at all (for example a repository without scene mode)."""


class DerivationMismatchError(AnonymixerError, ValueError):
    """A template and the faces compared with it (or the faces of one enrolment) come from
    different identity derivations: their scores would mean nothing. The message names both.
    A ValueError too: the template does not fit this server (the CLI exits 2)."""


def map_error(exc: Exception, index: list[int] | None = None) -> AnonymixerError:
    """A tritonclient exception → a typed error; ``index`` maps a chunk's item numbers to the caller's."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = str(getattr(exc, "message", lambda: str(exc))() or exc)
    if "protocol is restricted" in message or "API is restricted" in message:
        return AccessDeniedError(message)
    if "is not healthy" in message or ("UNAVAILABLE" in status and "unavailable, retry" in message):
        return ModelUnavailableError(message)
    if "UNAVAILABLE" in status and QUEUE_FULL in message:
        return ServiceBusyError(
            "the service is busy: its queue is full, so it refused the request at once; retried with backoff "
            f"until the call's deadline when retries > 0 (server: {message})"
        )
    if "UNAVAILABLE" in status:
        return ServerUnavailableError(message)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return DeadlineExceededError(message)
    if "CANCELLED" in status:
        return AnonymixerError(f"cancelled: {message}")
    match = _ITEM.search(message)
    if match:
        item = int(match.group(2))
        item = index[item] if index is not None and item < len(index) else item
        text = f"{match.group(1)} item {item}: {match.group(3)}"
        return InvalidInputError(text, input_name=match.group(1), item=item, reason=match.group(3))
    if "INVALID_ARGUMENT" in status or "unexpected" in message.lower() or "datatype" in message.lower():
        return InvalidInputError(message)
    if "unknown model" in message.lower():
        return NotServedError(message)
    if "not found" in message.lower() or "is not ready" in message.lower():
        return ModelNotReadyError(message)
    return AnonymixerError(f"{status}: {message}" if status else message)


RETRYABLE = (ServerUnavailableError, ModelUnavailableError)
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.2, 5.0
_JITTER = random.Random()  # seeded once from the OS; every call draws its delays from it


def backoff(attempt: int, rng: random.Random = _JITTER) -> float:
    """Seconds to wait before retry number ``attempt`` (0 first): equal jitter over an exponential
    step (0.2 s doubling, capped at 5 s) — half the step plus a random share of the other half, so
    callers refused together do not all come back together, yet none returns sooner than half its step."""
    step = min(BACKOFF_FIRST_S * 2.0 ** min(attempt, 16), BACKOFF_CAP_S)  # 2**16: far past the cap, no overflow
    return step / 2 + rng.uniform(0, step / 2)


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


@dataclass
class RetryBudget:
    """One call's retries. A retryable error is tried again after ``backoff`` while the next try
    still starts before the deadline (``timeout_s`` from now). A busy refusal (``ServiceBusyError``)
    is retried whenever ``retries`` > 0 without counting against it: the service is up and will
    take the call once its queue drains, so only the caller's deadline bounds the wait. Every other
    retryable error is retried at most ``retries`` times. ``clock`` and ``rng`` are for tests."""

    timeout_s: float
    retries: int
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = _JITTER
    made: int = 0  # retries of any kind (the call's record; the backoff's exponent)
    others: int = 0  # retries after errors other than busy refusals (bounded by ``retries``)
    refused: int = 0  # busy refusals met, the last included
    last: AnonymixerError | None = None
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    def remaining(self) -> float:
        return max(0.001, self.deadline - self.clock())

    def next_delay(self, error: AnonymixerError) -> float | None:
        """Seconds to wait before trying again, or None: give up (raise ``final(error)``)."""
        busy = isinstance(error, ServiceBusyError)
        self.refused += busy
        spent = self.retries <= 0 if busy else self.others >= self.retries
        if not isinstance(error, RETRYABLE) or spent:
            return None
        delay = backoff(self.made, self.rng)
        if self.clock() + delay >= self.deadline:
            return None
        self.made, self.others, self.last = self.made + 1, self.others + (not busy), error
        return delay

    def final(self, error: AnonymixerError) -> AnonymixerError:
        """What the caller sees. A call whose deadline ran out while retrying another error raises
        that error, saying how often it tried; one that ran out after busy refusals, or on its only
        try, raises ``DeadlineExceededError`` naming the deadline (and how often and over how long
        it was refused)."""
        # a try that got past the queue's door (a refusal comes at once) but was not answered in time
        timed_out = isinstance(error, DeadlineExceededError)
        if timed_out and self.last is not None and not self.refused:
            return type(self.last)(f"{self.last} (tried {self.made + 1} times until the call's deadline)")
        if not timed_out and not (isinstance(error, ServiceBusyError) and self.retries > 0):
            return error
        told = f"no answer within the call's {self.timeout_s:g} s deadline"
        if not self.refused:
            return DeadlineExceededError(f"{told} ({error})")
        elapsed = self.clock() - self.started
        told += f": the service refused it {_times(self.refused)} as busy (queue full) over {elapsed:.1f} s"
        return DeadlineExceededError(told + ("; the last try got in but was not answered in time" if timed_out else ""))

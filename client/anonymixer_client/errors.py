"""Typed errors: what went wrong, mapped from the gRPC status and the server's message."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_ITEM = re.compile(r"\b(IMAGE|KEY|GROUP|STEPS) item (\d+): (.*)", re.S)


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


@dataclass
class RetryBudget:
    """One call's retries: retryable errors are retried with exponential backoff (0.2 s doubling
    to 5 s) while at most ``retries`` were made and the next try still starts before the deadline."""

    deadline: float
    retries: int
    made: int = 0
    delay: float = 0.2
    last: AnonymixerError | None = None

    @classmethod
    def start(cls, timeout_s: float, retries: int) -> RetryBudget:
        return cls(time.monotonic() + timeout_s, retries)

    def final(self, error: AnonymixerError) -> AnonymixerError:
        """What the caller sees: a deadline that ran out while retrying names the retried error."""
        if isinstance(error, DeadlineExceededError) and self.last is not None:
            return type(self.last)(f"{self.last} (tried {self.made + 1} times until the call's deadline)")
        return error

    def remaining(self) -> float:
        return max(0.001, self.deadline - time.monotonic())

    def next_delay(self, error: AnonymixerError) -> float | None:
        """Seconds to wait before trying again, or None: give up and raise ``error``."""
        if not isinstance(error, RETRYABLE) or self.made >= self.retries:
            return None
        if time.monotonic() + self.delay >= self.deadline:
            return None
        delay, self.delay, self.made, self.last = self.delay, min(self.delay * 2, 5.0), self.made + 1, error
        return delay

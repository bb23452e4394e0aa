"""Typed errors: what went wrong, mapped from the gRPC status and the server's message."""

from __future__ import annotations

import re

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
    """No server answered (after the retries)."""


class DeadlineExceededError(AnonymixerError):
    """The call did not finish within its deadline."""


class ModelNotReadyError(AnonymixerError):
    """The server is up but the model is not loaded or not ready."""


class NotServedError(ModelNotReadyError):
    """This server does not serve the model at all (for example a repository without scene mode)."""


def map_error(exc: Exception, index: list[int] | None = None) -> AnonymixerError:
    """A tritonclient exception → a typed error; ``index`` maps a chunk's item numbers to the caller's."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    message = str(getattr(exc, "message", lambda: str(exc))() or exc)
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

"""Client library for the anonymixer cancelable-faces service (gRPC, no torch).

from anonymixer_client import AnonymixerClient, Key
with AnonymixerClient("127.0.0.1:8001") as client:
    client.wait_until_ready()
    faces = client.protect(["alice1.jpg", "alice2.jpg"], Key.from_file("alice.key"))
    faces[0].image.save("alice1.protected.png")
"""

from anonymixer_client.aio import AsyncAnonymixerClient
from anonymixer_client.client import AnonymixerClient
from anonymixer_client.errors import (
    AccessDeniedError,
    AnonymixerError,
    DeadlineExceededError,
    DerivationMismatchError,
    InvalidInputError,
    ModelNotReadyError,
    ModelUnavailableError,
    NotServedError,
    ServerUnavailableError,
    ServiceBusyError,
)
from anonymixer_client.types import (
    CallRecord,
    DetectedFace,
    Key,
    ModelStatistics,
    ProtectedFace,
    ProtectedScene,
    Template,
    Verification,
)

__all__ = [
    "AccessDeniedError",
    "AnonymixerClient",
    "AnonymixerError",
    "AsyncAnonymixerClient",
    "CallRecord",
    "DeadlineExceededError",
    "DerivationMismatchError",
    "DetectedFace",
    "InvalidInputError",
    "Key",
    "ModelNotReadyError",
    "ModelStatistics",
    "ModelUnavailableError",
    "NotServedError",
    "ProtectedFace",
    "ProtectedScene",
    "ServerUnavailableError",
    "ServiceBusyError",
    "Template",
    "Verification",
]

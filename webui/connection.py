"""Where the service is and how to reach it: the client's own options (TLS, API key, deadline).
It holds no user data, so one instance serves every browser session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anonymixer_client import AnonymixerClient, AsyncAnonymixerClient

# A page must answer: an unreachable service or a restarting model is retried this many times
# (about 5 s of backoff) before the user sees the error; a busy service is still waited for until
# the deadline, as every client does.
UI_RETRIES = 5


@dataclass(frozen=True)
class Connection:
    url: str = "127.0.0.1:8001"
    ssl: bool = False
    root_certificates: str | None = None
    certificate_chain: str | None = None
    private_key: str | None = None
    api_key: str | None = field(default=None, repr=False)  # the deployment's secret: never shown
    timeout_s: float = 1800.0  # a real-weight face on a CPU takes about a minute; a photo of several, minutes
    metrics_url: str | None = None  # Triton's Prometheus endpoint, for the Service tab's live queue

    def async_client(self) -> AsyncAnonymixerClient:
        """A client for one call of one session: cancelling the call's task cancels it on the server."""
        return AsyncAnonymixerClient(self.url, **self.options(self.timeout_s))

    def client(self, timeout_s: float = 10.0) -> AnonymixerClient:
        """A client for the Service tab's quick questions."""
        return AnonymixerClient(self.url, **self.options(timeout_s))

    def options(self, timeout_s: float) -> dict[str, Any]:
        """What both clients are made with: TLS, the API key, the deadline and the page's retries."""
        return {
            "ssl": self.ssl,
            "root_certificates": self.root_certificates,
            "certificate_chain": self.certificate_chain,
            "private_key": self.private_key,
            "api_key": self.api_key,
            "timeout_s": timeout_s,
            "retries": UI_RETRIES,
        }

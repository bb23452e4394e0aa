"""Optional client-side Prometheus metrics (``pip install 'anonymixer-client[metrics]'``)."""

from __future__ import annotations

from typing import Any

from anonymixer_client.types import CallRecord


class ClientMetrics:
    """Requests and items by outcome, latency per method, retries, busy refusals, bytes sent and received."""

    def __init__(self, registry: Any = None, namespace: str = "anonymixer_client") -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry if registry is not None else REGISTRY
        self.requests = Counter(
            f"{namespace}_requests", "Requests by method and outcome", ["method", "outcome"], registry=registry
        )
        self.items = Counter(
            f"{namespace}_items", "Items by method and outcome", ["method", "outcome"], registry=registry
        )
        self.latency = Histogram(
            f"{namespace}_latency_seconds",
            "Request latency by method",
            ["method"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.retries = Counter(
            f"{namespace}_retries", "Readiness polls that had to wait and calls tried again", registry=registry
        )
        self.retried_calls = Counter(
            f"{namespace}_retried_calls",
            "Calls that needed at least one retry, by method and final outcome",
            ["method", "outcome"],
            registry=registry,
        )
        self.busy_refusals = Counter(
            f"{namespace}_busy_refusals",
            "Times the service refused a request as busy (its queue full), by method; retried until the deadline",
            ["method"],
            registry=registry,
        )
        self.bytes_sent = Counter(f"{namespace}_bytes_sent", "Payload bytes sent", registry=registry)
        self.bytes_received = Counter(f"{namespace}_bytes_received", "Payload bytes received", registry=registry)

    def observe(self, call: CallRecord) -> None:
        self.requests.labels(call.method, call.outcome).inc()
        if call.retries:
            self.retried_calls.labels(call.method, call.outcome).inc()
        if call.busy_refusals:
            self.busy_refusals.labels(call.method).inc(call.busy_refusals)
        self.items.labels(call.method, call.outcome).inc(call.items)
        self.latency.labels(call.method).observe(call.seconds)
        self.bytes_sent.inc(call.bytes_sent)
        self.bytes_received.inc(call.bytes_received)


def serve_metrics(port: int, registry: Any = None, addr: str = "127.0.0.1") -> None:
    """Expose ``registry`` (default: the global one) on ``http://addr:port/metrics`` in a thread."""
    from prometheus_client import REGISTRY, start_http_server

    start_http_server(port, addr=addr, registry=registry if registry is not None else REGISTRY)

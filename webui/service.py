"""The Service tab: readiness, the models and their versions, and queue and latency — Triton's
per-model statistics through the client, and the requests queued right now from Triton's
Prometheus metrics when the page knows where they are."""

from __future__ import annotations

import re
import urllib.request

from anonymixer_client import AnonymixerError, ModelStatistics
from webui.connection import Connection

PENDING = re.compile(r'^nv_inference_pending_request_count\{[^}]*model="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)', re.M)


def pending_requests(metrics_url: str, timeout_s: float = 5.0) -> dict[str, int]:
    """Requests queued now, per model (Triton's ``nv_inference_pending_request_count``)."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        text = response.read().decode()
    return {model: int(float(value)) for model, value in PENDING.findall(text)}


def mean_time(total_ns: int, count: int) -> str:
    if not count:
        return "–"
    seconds = total_ns / count / 1e9
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds * 1000:.0f} ms"


def statistics_row(stats: ModelStatistics, pending: dict[str, int] | None) -> str:
    compute = stats.compute_input_ns + stats.compute_infer_ns + stats.compute_output_ns
    queued = "–" if pending is None else str(pending.get(stats.model, 0))
    return (
        f"| `{stats.model}` | {stats.success_count} | {stats.inference_count} | {stats.execution_count} "
        f"| {queued} | {mean_time(stats.queue_ns, stats.success_count)} | {mean_time(compute, stats.success_count)} |"
    )


def report(connection: Connection) -> str:
    """The tab's Markdown. An unreachable service is a state to show, with the client's message."""
    try:
        with connection.client() as client:
            health = client.health()
            ready = [name for name, state in health["models"].items() if state == "READY"]
            statistics = [client.statistics(name) for name in ready]
    except AnonymixerError as exc:
        return f"**Not reachable** at `{connection.url}`: {exc}"
    pending, metrics_note = None, ""
    if connection.metrics_url:
        try:
            pending = pending_requests(connection.metrics_url)
        except OSError as exc:
            metrics_note = f"\n\nMetrics at `{connection.metrics_url}` not readable: {exc}"
    lines = [
        f"**{'Ready' if health['ready'] else 'Not ready'}** — `{connection.url}`, "
        f"{health['server']} {health['version']}, max batch {health.get('max_batch_size', '–')}",
        "",
        "| model | state | versions |",
        "| --- | --- | --- |",
    ]
    versions = health.get("model_versions", {})
    for name, state in health["models"].items():
        lines.append(f"| `{name}` | {state} | {', '.join(versions.get(name, [])) or '–'} |")
    lines += [
        "",
        "Since each model loaded (mean per answered request):",
        "",
        "| model | requests | items | batches | queued now | queue | compute |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(statistics_row(s, pending) for s in statistics),
    ]
    return "\n".join(lines) + metrics_note

"""Request metrics per route template and status, bound to a service's registry."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from quart import Quart, Response, g, request

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    """The per-route request counter and latency histogram of one app."""

    requests: Counter
    latency: Histogram


def http_metrics(app: Quart) -> HttpMetrics:
    """The metrics ``instrument`` bound to ``app``, for handlers served outside Quart."""
    metrics: HttpMetrics = app.extensions["telemetry_http_metrics"]
    return metrics


def instrument(app: Quart, registry: CollectorRegistry, service: str) -> HttpMetrics:
    """Count and time every request by method, route template and status."""
    requests = Counter(
        "requests",
        "HTTP requests answered.",
        ["method", "route", "status"],
        namespace="telemetry",
        subsystem=f"{service}_http",
        registry=registry,
    )
    latency = Histogram(
        "request_duration_seconds",
        "HTTP request latency.",
        ["method", "route"],
        namespace="telemetry",
        subsystem=f"{service}_http",
        buckets=_BUCKETS,
        registry=registry,
    )

    app.extensions["telemetry_http_metrics"] = metrics = HttpMetrics(requests, latency)

    @app.before_request
    async def _start() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    async def _record(response: Response) -> Response:
        started = g.get("request_started")
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        requests.labels(request.method, rule, str(response.status_code)).inc()
        if started is not None:
            latency.labels(request.method, rule).observe(time.perf_counter() - started)
        return response

    return metrics

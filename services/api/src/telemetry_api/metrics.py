"""The API's own Prometheus metrics (request metrics come from telemetry-kit)."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ApiMetrics:
    """Metrics bound to one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.db_query_duration = Histogram(
            "db_query_duration_seconds",
            "Database query latency by query.",
            ["query"],
            namespace="telemetry",
            subsystem="api",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.pool_exhausted = Counter(
            "db_pool_exhausted",
            "Requests answered 503 DATABASE_BUSY: no connection came free within API_POOL_TIMEOUT.",
            namespace="telemetry",
            subsystem="api",
            registry=registry,
        )
        self.query_timeouts = Counter(
            "db_query_timeouts",
            "Requests answered 503 QUERY_TIMEOUT: a statement ran past its timeout and was"
            " cancelled on the server.",
            namespace="telemetry",
            subsystem="api",
            registry=registry,
        )

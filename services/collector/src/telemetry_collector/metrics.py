"""The collector's Prometheus metrics, bound to the app's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class CollectorMetrics:
    """Every metric the collector exports."""

    stored: Counter
    duplicates: Counter
    rejected: Counter
    expired: Counter
    late: Counter
    released: Counter
    pauses: Counter
    database_up: Gauge
    batches: Counter
    batch_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CollectorMetrics:
        """Create and register the metrics."""
        ns, sub = "telemetry", "collector"
        return cls(
            stored=Counter(
                "datapoints_stored",
                "Datapoints newly written to PostgreSQL.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            duplicates=Counter(
                "datapoints_duplicate",
                "Redelivered datapoints already stored (ignored).",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            rejected=Counter(
                "datapoints_rejected",
                "Records sent to the dead-letter topic: undecodable, or refused by the database.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            expired=Counter(
                "datapoints_expired",
                "Datapoints refused as older than the raw retention's horizon (acked, not stored).",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            late=Counter(
                "datapoints_late",
                "Datapoints stored into a minute already sealed for the rollups (marked for the"
                " maintenance job to aggregate again).",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            released=Counter(
                "datapoints_released",
                "Records handed back to the broker without spending a delivery (database away).",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            pauses=Counter(
                "database_pauses",
                "Times the workers stopped fetching because the database failed.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            database_up=Gauge(
                "database_up",
                "1 while the workers fetch, 0 while they wait for the database.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            batches=Counter(
                "batches",
                "Fetched batches by outcome (stored, released).",
                ["topic", "consumer_group", "outcome"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            batch_seconds=Histogram(
                "batch_duration_seconds",
                "Time from fetch to ack of one batch.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
        )

"""The collector's Prometheus metrics, bound to the app's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True, slots=True)
class CollectorMetrics:
    """Every metric the collector exports."""

    stored: Counter
    duplicates: Counter
    rejected: Counter
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
                "Invalid records sent to the dead-letter topic.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            batches=Counter(
                "batches",
                "Fetched batches by outcome (stored, failed).",
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

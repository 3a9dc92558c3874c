"""The streamer's Prometheus metrics, bound to the app's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class StreamerMetrics:
    """Every metric the streamer exports."""

    published: Counter
    publish_failures: Counter
    publish_seconds: Histogram
    claims: Counter
    takeovers: Counter
    leases_lost: Counter
    rows_skipped: Counter
    loop: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StreamerMetrics:
        """Create and register the metrics."""
        ns, sub = "telemetry", "streamer"
        return cls(
            published=Counter(
                "datapoints_published",
                "Datapoints acknowledged by the broker.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            publish_failures=Counter(
                "publish_failures",
                "Publish calls that failed after retries.",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            publish_seconds=Histogram(
                "publish_duration_seconds",
                "Publish latency (durable acknowledgement).",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            claims=Counter(
                "claims",
                "Chunks of sequence numbers claimed from the work index.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            takeovers=Counter(
                "chunk_takeovers",
                "Chunks taken over from a streamer whose lease ran out (or that released them).",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            leases_lost=Counter(
                "chunk_leases_lost",
                "Chunks this streamer stopped publishing because another one had taken them over.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            rows_skipped=Counter(
                "csv_rows_skipped",
                "Malformed CSV rows skipped.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            loop=Gauge(
                "csv_loop",
                "CSV loop number of the last published datapoint.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
        )

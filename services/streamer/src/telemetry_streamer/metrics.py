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
    # The scrape source.
    scrape_seconds: Histogram
    scrape_failures: Counter
    scrape_slots: Counter
    slots_missed: Counter
    slots_republished: Counter
    samples: Counter
    samples_dropped: Counter
    bad_lines: Counter
    targets: Gauge
    target_takeovers: Counter
    target_leases_lost: Counter

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
            scrape_seconds=Histogram(
                "scrape_duration_seconds",
                "Time to fetch an exporter's /metrics (successful scrapes).",
                namespace=ns,
                subsystem=sub,
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            ),
            scrape_failures=Counter(
                "scrape_failures",
                "Scrapes that brought no exposition back, by kind (timeout, connection,"
                " http_status, too_large).",
                ["kind"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            scrape_slots=Counter(
                "scrape_slots",
                "Slots this streamer worked on, by outcome: stored, failed (the scrape),"
                " skipped (backoff), refused (claimed already), unclaimed (database away),"
                " aborted (stopping).",
                ["outcome"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            slots_missed=Counter(
                "scrape_slots_missed",
                "Slots no streamer stored, seen at the next slot this streamer stored.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            slots_republished=Counter(
                "scrape_slots_republished",
                "Claimed slots published again from the work index after a takeover.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            samples=Counter(
                "scrape_samples",
                "Samples kept from scrapes (stored slots).",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            samples_dropped=Counter(
                "scrape_samples_dropped",
                "Samples of scrapes not kept, by reason (not_dcgm_field, unknown_field, no_gpu,"
                " blank, out_of_domain).",
                ["reason"],
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            bad_lines=Counter(
                "scrape_bad_lines",
                "Exposition lines the parser refused (each costs that line only).",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            targets=Gauge(
                "scrape_targets",
                "Targets this streamer holds.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            target_takeovers=Counter(
                "scrape_target_takeovers",
                "Targets acquired after their holder's lease ran out.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
            target_leases_lost=Counter(
                "scrape_target_leases_lost",
                "Targets this streamer held until another one took them over.",
                namespace=ns,
                subsystem=sub,
                registry=registry,
            ),
        )

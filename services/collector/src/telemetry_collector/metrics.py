"""The collector's Prometheus metrics, bound to the app's registry."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Freshness, from 10 ms to a minute: dense below one second, where the pipeline's promise lies
# (250 ms and 1 s are bucket bounds, so "p99 under 250 ms / 1 s" is read exactly, not
# interpolated), sparse above it, where only the alert's 5 s matters.
FRESHNESS_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip


class FreshnessHistogram(Collector):
    """``telemetry_collector_freshness_seconds{topic}``: commit time minus each datapoint's
    processing timestamp (the ``ts`` its streamer stamped).

    A histogram observed a whole committed transaction at a time: the times are sorted once and
    each bucket's count is one bisection, so a round of thousands of datapoints costs a few
    bisections instead of one locked ``observe`` per datapoint. An age below zero (a streamer's
    clock ahead of this one's) counts as zero.
    """

    def __init__(self, buckets: Sequence[float] = FRESHNESS_BUCKETS) -> None:
        self._bounds_us = [round(b * 1_000_000) for b in buckets]
        # `le` as prometheus_client's Histogram writes it ("0.01", "1.0", "60.0")
        self._names = [repr(float(b)) for b in buckets]
        # topic -> cumulative count of each bucket, the last one counting all (+Inf)
        self._counts: dict[str, list[int]] = {}
        self._sums_us: dict[str, int] = {}  # topic -> sum of the ages (µs, exact)

    def observe_committed(self, topic: str, ts_us: Iterable[int], commit_us: int) -> None:
        """Count the datapoints stamped ``ts_us`` as committed at ``commit_us`` (µs)."""
        times = sorted(ts_us)
        if not times:
            return
        counts = self._counts.setdefault(topic, [0] * (len(self._bounds_us) + 1))
        n = len(times)
        for i, bound in enumerate(self._bounds_us):
            # age <= bound  <=>  ts >= commit - bound
            counts[i] += n - bisect_left(times, commit_us - bound)
        counts[-1] += n
        past = bisect_right(times, commit_us)  # stamped at or before the commit: age >= 0
        self._sums_us[topic] = self._sums_us.get(topic, 0) + past * commit_us - sum(times[:past])

    def collect(self) -> Iterator[Metric]:
        """The histogram of every topic observed so far."""
        family = HistogramMetricFamily(
            "telemetry_collector_freshness_seconds",
            "Commit time minus the datapoint's processing timestamp (stamped by the streamer).",
            labels=["topic"],
        )
        for topic, counts in self._counts.items():
            buckets = [(name, float(c)) for name, c in zip(self._names, counts, strict=False)]
            buckets.append(("+Inf", float(counts[-1])))
            family.add_metric([topic], buckets, self._sums_us[topic] / 1_000_000)
        yield family


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
    freshness: FreshnessHistogram
    round_oldest_age: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CollectorMetrics:
        """Create and register the metrics."""
        ns, sub = "telemetry", "collector"
        freshness = FreshnessHistogram()
        registry.register(freshness)
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
            freshness=freshness,
            round_oldest_age=Histogram(
                "round_oldest_age_seconds",
                "Age of the oldest datapoint of each committed transaction at its commit (the"
                " worst freshness of the round).",
                ["topic"],
                namespace=ns,
                subsystem=sub,
                buckets=FRESHNESS_BUCKETS,
                registry=registry,
            ),
        )

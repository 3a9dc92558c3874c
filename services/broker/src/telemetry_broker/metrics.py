"""Broker metrics: counters fed by the core's ``Observer`` hooks, gauges computed at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from telemetry_mq import DLQ_SUFFIX, Broker, Observer
from telemetry_mq.disk import disk_usage

_NS = "telemetry"
_SUB = "broker"
_FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class BrokerMetrics(Observer):
    """The broker's counters and fsync histogram, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, namespace=_NS, subsystem=_SUB, registry=registry)

        group = ["topic", "consumer_group"]
        self.published_total = counter("records_published", "Records published.", ["topic"])
        self.fetched_total = counter("records_fetched", "Records leased to consumers.", group)
        self.redelivered_total = counter(
            "records_redelivered", "Records leased again after a nack or expiry.", group
        )
        self.acked_total = counter("records_acked", "Records acked.", group)
        self.nacked_total = counter("records_nacked", "Records nacked.", group)
        self.released_total = counter(
            "records_released",
            "Records handed back without spending a delivery (the consumer could not try).",
            group,
        )
        self.expired_total = counter("lease_expired_records", "Records whose lease expired.", group)
        self.dead_lettered_total = counter(
            "records_dead_lettered", "Records moved to the dead-letter topic.", [*group, "reason"]
        )
        self.refused_total = counter(
            "publishes_refused",
            "Publishes refused with 429 (reason: backlog_full or disk_full).",
            ["topic", "reason"],
        )
        self.retention_deleted_total = counter(
            "retention_deleted_bytes",
            "Bytes of segments retention deleted (reason: age, bytes or disk).",
            ["topic", "reason"],
        )
        self.fsync_seconds = Histogram(
            "fsync_duration_seconds",
            "Duration of one fsync of a log or journal file.",
            namespace=_NS,
            subsystem=_SUB,
            buckets=_FSYNC_BUCKETS,
            registry=registry,
        )

    def published(self, topic: str, records: int) -> None:
        self.published_total.labels(topic).inc(records)

    def fetched(self, topic: str, group: str, records: int, redelivered: int) -> None:
        self.fetched_total.labels(topic, group).inc(records)
        if redelivered:
            self.redelivered_total.labels(topic, group).inc(redelivered)

    def acked(self, topic: str, group: str, records: int) -> None:
        self.acked_total.labels(topic, group).inc(records)

    def nacked(self, topic: str, group: str, records: int) -> None:
        self.nacked_total.labels(topic, group).inc(records)

    def released(self, topic: str, group: str, records: int) -> None:
        self.released_total.labels(topic, group).inc(records)

    def expired(self, topic: str, group: str, records: int) -> None:
        self.expired_total.labels(topic, group).inc(records)

    def dead_lettered(self, topic: str, group: str, records: int, reason: str) -> None:
        self.dead_lettered_total.labels(topic, group, reason).inc(records)

    def fsync(self, seconds: float) -> None:
        self.fsync_seconds.observe(seconds)

    def refused(self, topic: str, reason: str) -> None:
        self.refused_total.labels(topic, reason).inc()

    def retention_deleted(self, topic: str, reason: str, nbytes: int) -> None:
        self.retention_deleted_total.labels(topic, reason).inc(nbytes)


class BacklogCollector(Collector):
    """Backlog, log size, lag, in-flight records, disk and index memory, read from the broker
    at scrape time."""

    def __init__(self, broker: Callable[[], Broker | None]) -> None:
        self._broker = broker

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        broker = self._broker()
        if broker is None:
            return []

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{_NS}_{_SUB}_{name}", doc, labels=labels)

        backlog_bytes = gauge(
            "backlog_bytes", "Unconsumed bytes behind the slowest group (bounded).", ["topic"]
        )
        backlog_records = gauge(
            "backlog_records", "Unconsumed records behind the slowest group.", ["topic"]
        )
        log_bytes = gauge("log_bytes", "Bytes retained on disk.", ["topic"])
        log_records = gauge("log_records", "Records retained on disk.", ["topic"])
        retained_bytes = gauge(
            "retained_bytes",
            "Bytes of records every group has consumed, still on disk (retention deletes them).",
            ["topic"],
        )
        index_bytes = gauge("index_bytes", "Memory of the partitions' position indexes.", ["topic"])
        lag = gauge(
            "consumer_lag_records",
            "Records not yet acked by a group (end offset minus committed offset).",
            ["topic", "consumer_group", "partition"],
        )
        in_flight = gauge(
            "in_flight_records", "Records under a lease.", ["topic", "consumer_group"]
        )
        idle = gauge(
            "consumer_group_idle",
            "1 while the group is idle (it holds back-pressure only if every group is).",
            ["topic", "consumer_group"],
        )
        dead_letters = gauge(
            "dead_letter_records",
            "Records in the topic's dead-letter topic not yet replayed.",
            ["topic"],
        )
        for name in sorted(broker.topics):
            stats = broker.topic_stats(name)
            backlog_bytes.add_metric([name], stats.backlog_bytes)
            backlog_records.add_metric([name], stats.backlog_records)
            log_bytes.add_metric([name], stats.bytes)
            log_records.add_metric([name], stats.records)
            if not name.endswith(DLQ_SUFFIX):
                dead_letters.add_metric([name], broker.dead_letter_depth(name))
            retained_bytes.add_metric([name], stats.retained_bytes)
            index_bytes.add_metric([name], sum(p.index_bytes for p in broker.topic(name).logs))
            for g in stats.groups:
                in_flight.add_metric([name, g.group], g.in_flight)
                idle.add_metric([name, g.group], int(g.idle))
                for p in g.partitions:
                    lag.add_metric([name, g.group, str(p.partition)], p.lag)
        return [
            backlog_bytes,
            backlog_records,
            log_bytes,
            log_records,
            retained_bytes,
            index_bytes,
            lag,
            in_flight,
            idle,
            dead_letters,
            *_disk_metrics(broker),
        ]


def _disk_metrics(broker: Broker) -> list[Metric]:
    """The data volume: bytes used and free, the high watermark and whether it is past it."""
    watch = broker.disk
    usage = watch.usage() if watch is not None else disk_usage(broker.data_dir)
    out: list[Metric] = []
    for name, doc, val in [
        ("disk_used_bytes", "Bytes used on the data volume.", usage.used),
        ("disk_free_bytes", "Bytes the broker can still write on the data volume.", usage.free),
    ]:
        out.append(GaugeMetricFamily(f"{_NS}_{_SUB}_{name}", doc, value=val))
    if watch is not None:
        mark = watch.watermark_bytes(usage)
        out.append(
            GaugeMetricFamily(
                f"{_NS}_{_SUB}_disk_watermark_bytes",
                "Bytes used past which publishes answer 429 DISK_FULL.",
                value=mark,
            )
        )
        out.append(
            GaugeMetricFamily(
                f"{_NS}_{_SUB}_disk_full",
                "1 while the data volume is past its high watermark (publishes refused).",
                value=int(usage.used >= mark),
            )
        )
    return out

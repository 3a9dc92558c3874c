"""Read-only views of topics, partitions and groups (for the admin API and metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """One partition's retained range and size."""

    partition: int
    start_offset: int
    end_offset: int
    bytes: int
    segments: int


@dataclass(frozen=True, slots=True)
class GroupPartitionStats:
    """One group's position on one partition."""

    partition: int
    committed: int
    lag: int
    in_flight: int
    redeliverable: int


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One consumer group on one topic: committed offsets, lag, in-flight records.

    ``idle``: no lease, no waiting fetch and no call for the idle timeout; an idle group holds
    back-pressure and retention only while every group of the topic is idle.
    """

    topic: str
    group: str
    lag: int
    in_flight: int
    backlog_bytes: int
    partitions: list[GroupPartitionStats]
    idle: bool = False


@dataclass(frozen=True, slots=True)
class TopicStats:
    """A topic: partitions, groups, and the backlog that backpressure bounds."""

    name: str
    partitions: int
    records: int
    bytes: int
    retained_bytes: int
    """Bytes of records every group has consumed, still on disk (retention's to delete)."""
    backlog_bytes: int
    backlog_records: int
    max_backlog_bytes: int
    partition_stats: list[PartitionStats]
    groups: list[GroupStats]


class Observer:
    """Hooks the broker calls as it works (the service binds them to Prometheus metrics).

    Every method is a no-op here; ``fsync`` is called from worker threads.
    """

    def published(self, topic: str, records: int) -> None:
        """Records were published (and are durable)."""

    def fetched(self, topic: str, group: str, records: int, redelivered: int) -> None:
        """Records were leased to a consumer; ``redelivered`` of them not for the first time."""

    def acked(self, topic: str, group: str, records: int) -> None:
        """Records were acked."""

    def nacked(self, topic: str, group: str, records: int) -> None:
        """Records were nacked by a consumer."""

    def released(self, topic: str, group: str, records: int) -> None:
        """Records were handed back by a consumer without spending a delivery."""

    def expired(self, topic: str, group: str, records: int) -> None:
        """Records' leases expired."""

    def dead_lettered(self, topic: str, group: str, records: int, reason: str) -> None:
        """Records were moved to the dead-letter topic."""

    def fsync(self, seconds: float) -> None:
        """One fsync took ``seconds``."""

    def refused(self, topic: str, reason: str) -> None:
        """A publish was refused (``reason``: ``backlog_full`` or ``disk_full``)."""

    def retention_deleted(self, topic: str, reason: str, nbytes: int) -> None:
        """Retention deleted a segment (``reason``: ``age``, ``bytes`` or ``disk``)."""

"""The broker core's tunables."""

from __future__ import annotations

from dataclasses import dataclass

from .commit import FsyncPolicy
from .segment import MAX_SEGMENT_BYTES


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Tunables of the broker core (the service fills them from ``BROKER_*`` env vars).

    Sizes are bytes, durations seconds. ``retention_bytes`` counts the consumed records of all
    topics together; ``max_backlog_bytes`` and ``max_dead_letter_bytes`` are per topic;
    ``disk_high_watermark`` is a fraction of the data volume (``None``: no watermark).
    ``max_topics`` counts the topics clients create (a dead-letter topic comes with its topic);
    ``max_in_flight_records`` is per group; ``group_idle_timeout`` None: a group never counts as
    idle.
    """

    default_partitions: int = 16
    fsync: FsyncPolicy = "always"
    fsync_interval: float = 0.05
    segment_bytes: int = 64 * 1024 * 1024
    wal_segment_bytes: int = 64 * 1024 * 1024
    retention_age: float | None = 3600.0
    retention_bytes: int | None = None
    max_backlog_bytes: int = 1024 * 1024 * 1024
    disk_high_watermark: float | None = 0.9
    disk_check_interval: float = 0.1
    max_record_bytes: int = 1024 * 1024
    max_fetch_bytes: int = 4 * 1024 * 1024
    default_ack_wait: float = 30.0
    max_deliveries: int = 5
    dlq_partitions: int = 1
    max_dead_letter_bytes: int = 256 * 1024 * 1024
    max_topics: int = 1000
    max_groups_per_topic: int = 100
    max_in_flight_records: int = 100_000
    max_nack_delay: float = 3600.0
    group_idle_timeout: float | None = 600.0
    journal_compact_bytes: int = 1024 * 1024
    maintenance_interval: float | None = 1.0
    retry_after: float = 1.0
    commit_workers: int = 4
    fsync_helper: bool = True  # fsync in a helper process (see syncer.py), else in threads

    def __post_init__(self) -> None:
        if not 0 < self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}")
        if self.disk_high_watermark is not None and not 0 < self.disk_high_watermark <= 1:
            raise ValueError("disk_high_watermark must be a fraction in (0, 1]")

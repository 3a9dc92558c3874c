"""Broker settings, read once from ``BROKER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from telemetry_kit import ServiceSettings
from telemetry_mq import BrokerConfig

MiB = 1024 * 1024


class BrokerSettings(ServiceSettings):
    """Everything the broker service can be told (env prefix ``BROKER_``)."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", frozen=True, extra="ignore")

    port: int = Field(8001, ge=0, le=65535, description="Port to bind.")
    data_dir: Path = Field(Path("var/broker"), description="Where logs and journals live.")
    partitions: int = Field(16, ge=1, le=1024, description="Default partitions of a new topic.")
    topics: str = Field(
        "", description='Topics to create at start: "name" or "name:partitions", comma-separated.'
    )
    token: SecretStr | None = Field(None, description="Bearer token required on /v1 endpoints.")
    fsync: Literal["always", "interval", "never"] = Field(
        "always", description="always: fsync before every publish/ack answer (group commit)."
    )
    fsync_interval: float = Field(0.05, gt=0, description="Seconds between fsyncs (interval).")
    fsync_helper: bool = Field(
        True, description="fsync in a helper process (false: in worker threads)."
    )
    segment_bytes: int = Field(
        64 * MiB, ge=4096, le=256 * MiB, description="Segment file size before a roll."
    )
    wal_segment_bytes: int = Field(
        64 * MiB,
        ge=4096,
        description="Write-ahead log segment size; each roll checkpoints the partition files.",
    )
    retention_age: float = Field(
        3600.0, ge=0, description="Delete consumed segments older than this (s); 0: never."
    )
    retention_bytes: int = Field(
        0,
        ge=0,
        description="Consumed bytes all topics keep; past it the oldest consumed segments go "
        "(0: no byte bound).",
    )
    max_backlog_bytes: int = Field(
        1024 * MiB, ge=1, description="Unconsumed bytes per topic before publish answers 429."
    )
    disk_high_watermark: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Fraction of the data volume past which publishes answer 429 DISK_FULL and "
        "consumed segments go early (1: off).",
    )
    max_request_bytes: int = Field(16 * MiB, ge=1024, description="Request body limit (413).")
    max_record_bytes: int = Field(1 * MiB, ge=16, description="Largest record value.")
    max_fetch_bytes: int = Field(4 * MiB, ge=1024, description="Largest fetched batch.")
    ack_wait: float = Field(30.0, gt=0, description="Default lease duration in seconds.")
    max_deliveries: int = Field(5, ge=1, description="Deliveries before a record is dead-lettered.")
    max_fetch_wait: float = Field(30.0, ge=0, description="Longest long-poll a fetch may ask.")
    maintenance_interval: float = Field(
        1.0, gt=0, description="Seconds between lease expiry / retention rounds."
    )
    max_topics: int = Field(
        1000, ge=1, description="Topics clients may create (dead-letter topics not counted)."
    )
    max_groups_per_topic: int = Field(100, ge=1, description="Consumer groups per topic.")
    max_in_flight_records: int = Field(
        100_000, ge=1, description="Records a group may hold under leases at once (429 past)."
    )
    max_nack_delay: float = Field(
        3600.0, ge=0, description="Longest delay a nack or release may ask, seconds (400 past)."
    )
    group_idle_timeout: float = Field(
        600.0,
        ge=0,
        description="Seconds without a fetch, ack or lease after which a group stops holding"
        " back-pressure and retention while another group is active; 0: never.",
    )
    max_dead_letter_bytes: int = Field(
        256 * MiB, ge=1, description="Dead letters not yet replayed per topic, bytes."
    )

    def topic_specs(self) -> list[tuple[str, int]]:
        """The topics to create at start with their partition counts."""
        specs: list[tuple[str, int]] = []
        for item in self.topics.split(","):
            name, _, parts = item.strip().partition(":")
            if name:
                specs.append((name, int(parts) if parts else self.partitions))
        return specs

    def broker_config(self) -> BrokerConfig:
        """The broker core's configuration."""
        return BrokerConfig(
            default_partitions=self.partitions,
            fsync=self.fsync,
            fsync_interval=self.fsync_interval,
            fsync_helper=self.fsync_helper,
            segment_bytes=self.segment_bytes,
            wal_segment_bytes=self.wal_segment_bytes,
            retention_age=self.retention_age or None,
            retention_bytes=self.retention_bytes or None,
            max_backlog_bytes=self.max_backlog_bytes,
            disk_high_watermark=self.disk_high_watermark if self.disk_high_watermark < 1 else None,
            max_record_bytes=self.max_record_bytes,
            max_fetch_bytes=self.max_fetch_bytes,
            default_ack_wait=self.ack_wait,
            max_deliveries=self.max_deliveries,
            maintenance_interval=self.maintenance_interval,
            max_topics=self.max_topics,
            max_groups_per_topic=self.max_groups_per_topic,
            max_in_flight_records=self.max_in_flight_records,
            max_nack_delay=self.max_nack_delay,
            group_idle_timeout=self.group_idle_timeout or None,
            max_dead_letter_bytes=self.max_dead_letter_bytes,
        )

"""Streamer settings, read once from ``STREAMER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from telemetry_kit import ServiceSettings
from telemetry_model import MAX_STREAM_BYTES, text_problem


class Settings(ServiceSettings):
    """Where to read, where to publish, how fast."""

    model_config = SettingsConfigDict(env_prefix="STREAMER_", frozen=True, extra="ignore")

    port: int = Field(8002, ge=0, le=65535)
    database_url: SecretStr = Field(description="PostgreSQL DSN of the work index.")
    broker_url: str = Field("http://127.0.0.1:8001", description="Base URL of the broker.")
    broker_token: SecretStr | None = Field(None, description="Bearer token for the broker.")
    topic: str = Field("telemetry", description="Topic to publish to.")
    partitions: int = Field(16, ge=1, description="Partitions if the topic must be created.")
    csv_path: Path = Field(Path("data/dcgm_metrics_20250718_134233.csv"))
    stream: str = Field(
        "dcgm", min_length=1, description="Shared stream name (at most 200 bytes of UTF-8)."
    )
    chunk_size: int = Field(1000, ge=1, description="Sequence numbers claimed per round trip.")
    chunk_lease: float = Field(
        30.0,
        gt=0,
        description="Seconds a claimed chunk stays leased without renewal (renewed every third"
        " of it); a chunk of a streamer that died is taken over after this.",
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Records per publish request.")
    rate: float = Field(
        2470.0, ge=0, description="Datapoints per second for this replica; 0 means unlimited."
    )
    migrate: bool = Field(True, description="Apply database migrations at start.")
    loops: int = Field(0, ge=0, description="Stop after this many CSV loops; 0 means forever.")

    source: Literal["csv", "scrape"] = Field(
        "csv", description="csv: replay the CSV; scrape: scrape dcgm-exporter endpoints."
    )
    scrape_targets: str = Field(
        "", description="Exporters to scrape, comma-separated: host:port or URLs."
    )
    scrape_targets_file: Path | None = Field(
        None, description="A file listing exporters, one per line (read again every refresh)."
    )
    scrape_dns: str = Field(
        "",
        description="DNS names that resolve to every exporter, as name:port, comma-separated"
        " (a headless Service of the exporters' DaemonSet).",
    )
    scrape_path: str = Field("/metrics", description="Path of a target given as host:port.")
    scrape_interval: float = Field(10.0, gt=0, description="Seconds between scrapes of a target.")
    scrape_timeout: float = Field(
        5.0, gt=0, description="Seconds a scrape may take (less than the interval)."
    )
    scrape_refresh: float = Field(
        30.0, gt=0, description="Seconds between two runs of target discovery."
    )
    scrape_lease: float | None = Field(
        None,
        gt=0,
        description="Seconds a target and a streamer's membership stay leased without renewal"
        " (renewed every quarter of it); default: the interval.",
    )
    scrape_target_ttl: float | None = Field(
        None,
        gt=0,
        description="Seconds a target stays after discovery stops listing it; default: three"
        " refreshes.",
    )
    scrape_fields: str = Field(
        "",
        description="DCGM fields outside the catalog to keep, as comma-separated patterns"
        " (DCGM_FI_PROF_*; * keeps every DCGM_FI_ field); empty: the catalog only.",
    )
    scrape_max_backoff: float = Field(
        300.0, gt=0, description="Longest wait before retrying a target that is down."
    )
    scrape_max_bytes: int = Field(
        32 * 2**20, gt=0, description="Largest exposition accepted from one target."
    )
    scrape_history: float = Field(
        3600.0, ge=0, description="Seconds the work index keeps the record of stored slots."
    )

    @model_validator(mode="after")
    def _scrape_timing(self) -> Self:
        if self.source == "scrape" and self.scrape_timeout >= self.scrape_interval:
            raise ValueError("the scrape timeout must be shorter than the scrape interval")
        return self

    @property
    def lease(self) -> float:
        """The scrape source's lease (targets and membership)."""
        return self.scrape_lease if self.scrape_lease is not None else self.scrape_interval

    @property
    def target_ttl(self) -> float:
        """How long an unlisted target stays."""
        ttl = self.scrape_target_ttl
        return ttl if ttl is not None else 3 * self.scrape_refresh

    @field_validator("stream")
    @classmethod
    def _stream_in_domain(cls, value: str) -> str:
        reason = text_problem(value, MAX_STREAM_BYTES)
        if reason is not None:
            raise ValueError(f"the stream name {reason}")
        return value

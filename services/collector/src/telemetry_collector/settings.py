"""Collector settings, read once from ``COLLECTOR_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict
from telemetry_kit import ServiceSettings


class Settings(ServiceSettings):
    """Where to consume from, where to store, how many workers."""

    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", frozen=True, extra="ignore")

    port: int = Field(8003, ge=0, le=65535)
    database_url: SecretStr = Field(description="PostgreSQL DSN to store into.")
    broker_url: str = Field("http://127.0.0.1:8001", description="Base URL of the broker.")
    broker_token: SecretStr | None = Field(None, description="Bearer token for the broker.")
    topic: str = Field("telemetry", description="Topic to consume.")
    group: str = Field("collectors", description="Consumer group shared by all collectors.")
    workers: int = Field(4, ge=1, le=64, description="Concurrent fetch-store-ack loops.")
    batch_size: int = Field(1000, ge=1, le=10_000, description="Records per fetch.")
    max_wait: float = Field(1.0, gt=0, le=30, description="Long-poll wait per fetch (s).")
    ack_wait: float = Field(30.0, gt=0, description="Lease length per fetched batch (s).")
    migrate: bool = Field(True, description="Apply database migrations at start.")
    statement_timeout: float = Field(
        10.0,
        gt=0,
        description="Server-side limit per statement (s); a store past it is a transient fault"
        " (leases released, workers paused). Keep it well under ack_wait.",
    )
    max_backoff: float = Field(
        5.0, gt=0, description="Longest wait between probes of an unavailable database (s)."
    )
    max_future_skew: float = Field(
        86_400.0,
        ge=0,
        description="A datapoint stamped further than this into the future (s) is refused and"
        " dead-lettered (0: only the year-9999 ceiling).",
    )

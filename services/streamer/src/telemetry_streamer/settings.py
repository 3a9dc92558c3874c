"""Streamer settings, read once from ``STREAMER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
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

    @field_validator("stream")
    @classmethod
    def _stream_in_domain(cls, value: str) -> str:
        reason = text_problem(value, MAX_STREAM_BYTES)
        if reason is not None:
            raise ValueError(f"the stream name {reason}")
        return value

"""The API's settings, read once from ``API_*`` environment variables."""

from __future__ import annotations

from typing import Final, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from telemetry_kit import ServiceSettings

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000


class Settings(ServiceSettings):
    """Serving options plus the database, its bounds and the paging limits."""

    model_config = SettingsConfigDict(env_prefix="API_", frozen=True, extra="ignore")

    database_url: SecretStr = Field(description="libpq DSN (URI or key=value) of the database.")
    pool_min_size: int = Field(1, ge=0, description="Connections opened at start.")
    pool_max_size: int = Field(10, ge=1, description="Most connections the pool holds.")
    pool_timeout: float = Field(
        2.0,
        gt=0,
        description="Seconds a request waits for a free connection before a 503 DATABASE_BUSY.",
    )
    statement_timeout: float = Field(
        5.0, gt=0, description="Server-side statement_timeout of every query (seconds)."
    )
    query_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a database call may take before it is cancelled on the server and"
        " the request gets a 503.",
    )
    ready_timeout: float = Field(
        2.0, gt=0, description="Seconds /readyz waits for the database to answer."
    )
    default_limit: int = Field(
        DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Page size when a request sets no limit."
    )
    max_limit: int = Field(
        MAX_LIMIT, ge=1, le=MAX_LIMIT, description="Largest page size a request may ask for."
    )
    max_buckets: int = Field(
        10_000, ge=1, description="Most time buckets a step query's window may span."
    )
    max_scan_rows: int = Field(
        1_000_000, ge=1, description="Most datapoints one step query may aggregate."
    )
    fleet_stale_after: float = Field(
        120.0,
        gt=0,
        description="Seconds without a datapoint after which the fleet view marks a GPU stale.",
    )
    token: SecretStr | None = Field(
        None,
        min_length=1,
        description="Bearer token required on /api routes when set (control routes stay open).",
    )

    maintenance_interval: float = Field(
        0,
        ge=0,
        description="Run the maintenance job (partitions, rollups, retention; MAINTENANCE_*"
        " settings) in this process every this many seconds; 0 never (a CronJob runs it).",
    )

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Self:
        if self.default_limit > self.max_limit:
            raise ValueError("default_limit must not exceed max_limit")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        return self

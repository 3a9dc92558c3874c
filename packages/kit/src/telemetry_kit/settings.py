"""Settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Serving and logging options common to all services."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    port_file: Path | None = Field(
        None,
        description="Once listening, write the bound port here (how a parent that asked for"
        " port 0 learns it).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json for containers, text for a terminal; auto picks by TTY."
    )
    graceful_timeout: float = Field(
        10.0, gt=0, description="Seconds Hypercorn waits for open requests on shutdown."
    )
    shutdown_timeout: float = Field(
        8.0, gt=0, description="Seconds background workers get to finish on shutdown."
    )

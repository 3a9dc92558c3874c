"""telemetry-collector: stores telemetry from the broker in PostgreSQL, idempotently."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]

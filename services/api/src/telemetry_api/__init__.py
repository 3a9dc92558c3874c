"""telemetry-api: the REST API over the stored GPU telemetry (Quart + quart-schema)."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]

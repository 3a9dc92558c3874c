"""telemetry-streamer: replays DCGM telemetry into the broker."""

from .app import create_app
from .settings import Settings
from .source import SourceError

__all__ = ["Settings", "SourceError", "create_app"]

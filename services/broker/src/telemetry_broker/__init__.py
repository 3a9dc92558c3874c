"""telemetry-broker: the HTTP service over the durable log of telemetry-mq."""

from .app import create_app
from .settings import BrokerSettings

__all__ = ["BrokerSettings", "create_app"]

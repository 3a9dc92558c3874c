"""Run the broker: ``python -m telemetry_broker`` (configured by ``BROKER_*`` env vars)."""

from __future__ import annotations

from telemetry_kit import run

from .app import create_app
from .settings import BrokerSettings


def main() -> None:
    """Serve the broker until SIGTERM, then drain, fsync and exit 0."""
    settings = BrokerSettings()
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()

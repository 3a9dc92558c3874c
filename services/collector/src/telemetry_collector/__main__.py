"""``python -m telemetry_collector``: serve the collector with settings from the environment."""

from __future__ import annotations

from telemetry_kit import run

from .app import create_app
from .settings import Settings


def main() -> None:
    """Entry point."""
    settings = Settings()  # required fields come from the environment
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()

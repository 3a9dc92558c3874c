"""``python -m telemetry_api``: serve the API until SIGTERM (settings from ``API_*``)."""

from __future__ import annotations

from telemetry_kit import run

from .app import create_app
from .settings import Settings


def main() -> None:
    """Read the settings, build the app and serve it."""
    settings = Settings()  # database_url comes from the environment
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()

"""``python -m telemetry_api``: serve the API until SIGTERM (settings from ``API_*``)."""

from __future__ import annotations

from telemetry_kit import run

from .app import create_app
from .maintenance import MaintenanceSettings
from .settings import Settings


def main() -> None:
    """Read the settings, build the app and serve it."""
    settings = Settings()  # database_url comes from the environment
    upkeep = MaintenanceSettings() if settings.maintenance_interval else None
    run(create_app(settings, maintenance=upkeep), settings)


if __name__ == "__main__":
    main()

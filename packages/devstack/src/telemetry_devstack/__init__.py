"""telemetry-devstack: run the whole pipeline on one machine (embedded PostgreSQL + services)."""

from .postgres import create_database, drop_database, embedded_server, with_database

__all__ = ["create_database", "drop_database", "embedded_server", "with_database"]

"""telemetry-devstack: run the whole pipeline on one machine (embedded PostgreSQL + services)."""

from .postgres import (
    create_database,
    drop_database,
    embedded_server,
    start_server,
    stop_server,
    with_database,
)
from .procs import ServiceProcess, die_with_parent, free_port, print_sink, process_alive
from .stack import Stack, StackConfig

__all__ = [
    "ServiceProcess",
    "Stack",
    "StackConfig",
    "create_database",
    "die_with_parent",
    "drop_database",
    "embedded_server",
    "free_port",
    "print_sink",
    "process_alive",
    "start_server",
    "stop_server",
    "with_database",
]

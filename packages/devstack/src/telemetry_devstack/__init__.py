"""telemetry-devstack: run the whole pipeline on one machine (embedded PostgreSQL + services)."""

from .postgres import (
    create_database,
    drop_database,
    embedded_server,
    start_server,
    stop_server,
    with_database,
)
from .procs import (
    ServiceProcess,
    die_with_parent,
    free_port,
    print_sink,
    process_alive,
    refused_port,
)
from .prometheus import Prometheus, find_prometheus, scrape_config
from .stack import Stack, StackConfig

__all__ = [
    "Prometheus",
    "ServiceProcess",
    "Stack",
    "StackConfig",
    "create_database",
    "die_with_parent",
    "drop_database",
    "embedded_server",
    "find_prometheus",
    "free_port",
    "print_sink",
    "process_alive",
    "refused_port",
    "scrape_config",
    "start_server",
    "stop_server",
    "with_database",
]

"""The common skeleton of every service app."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from quart import Quart
from quart_schema import Info, QuartSchema

from .control import ReadinessCheck, ScrapeHook, control_blueprint
from .errors import register_error_handlers
from .httpmetrics import instrument


def base_app(
    service: str,
    *,
    title: str,
    version: str,
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    on_scrape: ScrapeHook | None = None,
    **schema: Any,
) -> Quart:
    """A Quart app with OpenAPI, problem errors, request and process metrics, control routes.

    ``on_scrape`` runs before each scrape of ``/metrics`` (``control_blueprint``).
    """
    app = Quart(f"telemetry_{service}")
    app.config["QUART_SCHEMA_CONVERT_CASING"] = False
    QuartSchema(app, info=Info(title=title, version=version), **schema)
    register_error_handlers(app)
    instrument(app, registry, service)
    # process_cpu_seconds_total, process_resident_memory_bytes, ...: the registry is the app's own,
    # so the default registry's process metrics would not reach /metrics.
    ProcessCollector(registry=registry)
    app.register_blueprint(
        control_blueprint(registry, readiness, service=service, on_scrape=on_scrape)
    )
    return app

"""The common skeleton of every service app."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from quart import Quart
from quart_schema import Info, QuartSchema

from .control import ReadinessCheck, control_blueprint
from .errors import register_error_handlers
from .httpmetrics import instrument


def base_app(
    service: str,
    *,
    title: str,
    version: str,
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    **schema: Any,
) -> Quart:
    """A Quart app with OpenAPI, problem errors, request metrics and the control routes."""
    app = Quart(f"telemetry_{service}")
    app.config["QUART_SCHEMA_CONVERT_CASING"] = False
    QuartSchema(app, info=Info(title=title, version=version), **schema)
    register_error_handlers(app)
    instrument(app, registry, service)
    app.register_blueprint(control_blueprint(registry, readiness))
    return app

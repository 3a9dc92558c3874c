"""The control routes every service has: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Blueprint, Response
from quart_schema import hide

from .errors import problem

ReadinessCheck = Callable[[], Awaitable[str | None]]


def control_blueprint(registry: CollectorRegistry, readiness: ReadinessCheck) -> Blueprint:
    """Build the control blueprint.

    ``readiness`` returns ``None`` when the service can do its work, or the reason it cannot.
    """
    bp = Blueprint("control", __name__)

    @bp.get("/healthz")
    @hide
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @bp.get("/readyz")
    @hide
    async def readyz() -> Response | dict[str, str]:
        reason = await readiness()
        if reason is not None:
            return problem(503, "NOT_READY", reason)
        return {"status": "ready"}

    @bp.get("/metrics")
    @hide
    async def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return bp

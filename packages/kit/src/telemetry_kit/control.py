"""The control routes every service has: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from quart import Blueprint, Response
from quart_schema import hide

from .errors import problem

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
ScrapeHook = Callable[[], Awaitable[None]]

# Longest a scrape waits for the readiness check (well inside Prometheus' scrape timeout).
READY_CHECK_TIMEOUT: Final = 3.0


def control_blueprint(
    registry: CollectorRegistry,
    readiness: ReadinessCheck,
    *,
    service: str | None = None,
    on_scrape: ScrapeHook | None = None,
) -> Blueprint:
    """Build the control blueprint.

    ``readiness`` returns ``None`` when the service can do its work, or the reason it cannot.
    With ``service``, every scrape of ``/metrics`` runs it and exports the answer as the gauge
    ``telemetry_<service>_ready``, so Prometheus sees what the readiness probe sees.
    ``on_scrape`` runs before each scrape too (refresh what a collector exports); it bounds
    its own work, and what it raises is logged, never the scrape's failure.
    """
    bp = Blueprint("control", __name__)
    ready = (
        None
        if service is None
        else Gauge(
            "ready",
            "1 while /readyz would answer 200 (checked at each scrape).",
            namespace="telemetry",
            subsystem=service,
            registry=registry,
        )
    )

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
        if ready is not None:
            try:
                async with asyncio.timeout(READY_CHECK_TIMEOUT):
                    reason = await readiness()
            except TimeoutError:
                reason = "the readiness check timed out"
            ready.set(reason is None)
        if on_scrape is not None:
            try:
                await on_scrape()
            except Exception:
                log.warning("refreshing metrics before a scrape failed", exc_info=True)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return bp

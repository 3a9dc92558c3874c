"""The broker service: the HTTP API over the durable log of ``telemetry_mq``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from importlib.metadata import version
from typing import Final

from prometheus_client import CollectorRegistry
from quart import Quart
from telemetry_kit import base_app, draining, stop
from telemetry_mq import Broker

from .blueprints.deadletters import dead_letters_blueprint
from .blueprints.groups import groups_blueprint
from .blueprints.records import records_blueprint
from .blueprints.topics import topics_blueprint
from .fastpath import FastPath
from .metrics import BacklogCollector, BrokerMetrics
from .runtime import Runtime, register_mq_errors
from .settings import BrokerSettings
from .spec import SECURITY, SECURITY_SCHEMES, TAGS, BrokerOpenAPIProvider

log = logging.getLogger(__name__)

EXIT_OPEN_FAILED: Final = 1
"""Exit code when the broker cannot open its data (a corrupt log, an I/O error at recovery)."""
EXIT_STORAGE_FAILED: Final = 74
"""Exit code after a storage error failed a topic (``EX_IOERR``): restart, recovery replays."""
FAILED_GRACE: Final = 2.0
"""Seconds open requests get to finish after a storage failure or a failed open (the answers
are quick 503s)."""


def create_app(settings: BrokerSettings) -> Quart:
    """Build the broker app; the broker opens (recovering its data) when serving starts."""
    registry = CollectorRegistry()
    metrics = BrokerMetrics(registry)
    runtime = Runtime()

    async def readiness() -> str | None:
        broker = runtime.broker_or_none
        return runtime.not_ready_reason() if broker is None else broker.healthy

    app = base_app(
        "broker",
        title="Telemetry broker",
        version=version("telemetry-broker"),
        registry=registry,
        readiness=readiness,
        tags=TAGS,
        security_schemes=SECURITY_SCHEMES,
        security=SECURITY if settings.token is None else [{"bearer": []}],
        openapi_provider_class=BrokerOpenAPIProvider,
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    register_mq_errors(app)
    registry.register(BacklogCollector(lambda: runtime.broker_or_none))
    token = settings.token.get_secret_value() if settings.token else None
    # The hot routes (publish, fetch, lease outcomes) bypass Quart: see fastpath.py.
    fast = FastPath(app, token=token, max_body=settings.max_request_bytes)
    app.register_blueprint(topics_blueprint(runtime, token))
    app.register_blueprint(records_blueprint(runtime, fast))
    app.register_blueprint(
        groups_blueprint(runtime, token, fast, settings.max_fetch_wait, settings.max_nack_delay)
    )
    app.register_blueprint(dead_letters_blueprint(runtime, token))
    app.extensions["telemetry_broker"] = runtime

    @app.while_serving
    async def broker_lifespan() -> AsyncGenerator[None]:
        # Recovery reads every segment, which takes a while on a full volume: it runs while the
        # app serves, so /healthz answers (the startup and liveness probes pass) and /readyz
        # answers 503 until the broker is open.
        runtime.opening = asyncio.create_task(_open_broker(app, settings, metrics, runtime))
        watching = asyncio.create_task(_watch(app, runtime.opening))
        try:
            yield
        finally:
            watching.cancel()
            broker = await runtime.opening  # a recovery in progress runs to its end
            runtime.broker_or_none = None
            if broker is not None:
                await broker.close()
                if broker.failure is not None:  # also when it came during the close itself
                    stop(app, exit_code=EXIT_STORAGE_FAILED)

    return app


async def _open_broker(
    app: Quart, settings: BrokerSettings, metrics: BrokerMetrics, runtime: Runtime
) -> Broker | None:
    """Open (recover) the broker and create the configured topics; on failure, stop the app
    (exit non-zero rather than answer /healthz while unable to work)."""
    started = time.perf_counter()
    try:
        broker = await Broker.open(settings.data_dir, settings.broker_config(), observer=metrics)
        try:
            for name, partitions in settings.topic_specs():
                await broker.create_topic(name, partitions)
        except BaseException:
            await broker.close()
            raise
    except Exception as e:
        log.critical(
            "the broker cannot open %s (exit %d): %s",
            settings.data_dir,
            EXIT_OPEN_FAILED,
            e,
            exc_info=e,
        )
        runtime.failure = e
        stop(app, exit_code=EXIT_OPEN_FAILED, grace=FAILED_GRACE)
        return None
    if draining(app).is_set():  # a stop signal came during recovery
        broker.drain()
    runtime.broker_or_none = broker
    log.info("broker open in %s after %.1f s", settings.data_dir, time.perf_counter() - started)
    return broker


async def _watch(app: Quart, opening: asyncio.Task[Broker | None]) -> None:
    """Once the broker is open: drain it on a stop signal, stop the app on a storage error."""
    broker = await asyncio.shield(opening)
    if broker is not None:
        await asyncio.gather(_drain_when(draining(app), broker), _exit_when_failed(app, broker))


async def _drain_when(stopping: asyncio.Event, broker: Broker) -> None:
    """On SIGTERM, end the long-polls at once (204) rather than at their max_wait."""
    await stopping.wait()
    broker.drain()


async def _exit_when_failed(app: Quart, broker: Broker) -> None:
    """A storage error failed a topic: stop serving and exit non-zero, so the supervisor
    restarts the broker and recovery replays the durable log (docs/broker.md)."""
    error = await broker.wait_failed()
    log.critical(
        "stopping the broker after a storage error (exit %d): %s", EXIT_STORAGE_FAILED, error
    )
    stop(app, exit_code=EXIT_STORAGE_FAILED, grace=FAILED_GRACE)

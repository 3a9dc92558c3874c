"""The broker service: the HTTP API over the durable log of ``telemetry_mq``."""

from __future__ import annotations

import asyncio
import logging
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

EXIT_STORAGE_FAILED: Final = 74
"""Exit code after a storage error failed a topic (``EX_IOERR``): restart, recovery replays."""
FAILED_GRACE: Final = 2.0
"""Seconds open requests get to finish after a storage failure (the answers are quick 503s)."""


def create_app(settings: BrokerSettings) -> Quart:
    """Build the broker app; the broker opens (recovering its data) when serving starts."""
    registry = CollectorRegistry()
    metrics = BrokerMetrics(registry)
    runtime = Runtime()

    async def readiness() -> str | None:
        broker = runtime.broker_or_none
        return "the broker is not open" if broker is None else broker.healthy

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
        broker = await Broker.open(settings.data_dir, settings.broker_config(), observer=metrics)
        for name, partitions in settings.topic_specs():
            await broker.create_topic(name, partitions)
        runtime.broker_or_none = broker
        log.info("broker open in %s", settings.data_dir)
        # On SIGTERM, end the long-polls at once (204) rather than at their max_wait.
        drain = asyncio.create_task(_drain_when(draining(app), broker))
        failed = asyncio.create_task(_exit_when_failed(app, broker))
        try:
            yield
        finally:
            drain.cancel()
            failed.cancel()
            runtime.broker_or_none = None
            await broker.close()
            if broker.failure is not None:  # also when it came during the close itself
                stop(app, exit_code=EXIT_STORAGE_FAILED)

    return app


async def _drain_when(stopping: asyncio.Event, broker: Broker) -> None:
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

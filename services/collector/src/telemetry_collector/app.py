"""The collector app: a Quart service whose background workers move batches into PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from prometheus_client import CollectorRegistry
from quart import Quart
from telemetry_kit import base_app
from telemetry_mq import BrokerClient
from telemetry_store import create_pool, ping

from .consume import Consumer
from .metrics import CollectorMetrics
from .settings import Settings


def create_app(settings: Settings) -> Quart:
    """Build the collector app; workers start with serving and drain on shutdown."""
    registry = CollectorRegistry()
    metrics = CollectorMetrics.create(registry)
    state: dict[str, object] = {}

    async def readiness() -> str | None:
        consumer = state.get("consumer")
        if not isinstance(consumer, Consumer):
            return "starting"
        try:
            await ping(app.config["TELEMETRY_POOL"])
        except Exception:
            return "database unreachable"  # no driver text: it names the host, port and user
        return None if consumer.healthy else "broker unreachable"

    app = base_app(
        "collector",
        title="Telemetry collector",
        version="0.1.0",
        registry=registry,
        readiness=readiness,
    )

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None]:
        # minsize=0: start (and report not-ready) even while PostgreSQL is away.
        pool = await create_pool(
            settings.database_url.get_secret_value(), minsize=0, maxsize=settings.workers + 1
        )
        app.config["TELEMETRY_POOL"] = pool
        token = settings.broker_token.get_secret_value() if settings.broker_token else None
        try:
            async with BrokerClient(settings.broker_url, token=token) as broker:
                consumer = Consumer(
                    broker=broker,
                    pool=pool,
                    metrics=metrics,
                    topic=settings.topic,
                    group=settings.group,
                    batch_size=settings.batch_size,
                    max_wait=settings.max_wait,
                    ack_wait=settings.ack_wait,
                )
                state["consumer"] = consumer
                app.add_background_task(
                    consumer.run, app.shutdown_event, settings.workers, settings.migrate
                )
                yield
        finally:
            pool.close()
            await pool.wait_closed()

    return app

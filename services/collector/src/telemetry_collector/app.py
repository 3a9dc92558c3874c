"""The collector app: a Quart service whose background workers move batches into PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from prometheus_client import CollectorRegistry
from quart import Quart
from telemetry_kit import base_app
from telemetry_mq import BrokerClient
from telemetry_store import Probe, create_pool

from .consume import Consumer
from .metrics import CollectorMetrics
from .settings import Settings


def create_app(settings: Settings) -> Quart:
    """Build the collector app; workers start with serving and drain on shutdown."""
    registry = CollectorRegistry()
    metrics = CollectorMetrics.create(registry)
    state: dict[str, object] = {}
    dsn = settings.database_url.get_secret_value()

    async def readiness() -> str | None:
        consumer = state.get("consumer")
        probe = state.get("probe")
        if not isinstance(consumer, Consumer) or not isinstance(probe, Probe):
            return "starting"
        # No driver text: it names the host, port and user. The consumer logs why it pauses.
        if consumer.unavailable is not None:
            return "database unavailable"
        if await probe.check() is not None:
            return "database unreachable"
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
        # Connections: one per worker plus one (recovery probe) in the pool, and one for
        # /readyz. minsize=0: start (and report not-ready) even while PostgreSQL is away. The client
        # timeout backs up the server's statement_timeout (a store past either is transient).
        pool = await create_pool(
            dsn,
            minsize=0,
            maxsize=settings.workers + 1,
            timeout=settings.statement_timeout + 5.0,
            statement_timeout=settings.statement_timeout,
        )
        probe = Probe(dsn)
        app.config["TELEMETRY_POOL"] = pool
        state["probe"] = probe
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
                    max_backoff=settings.max_backoff,
                    max_future_skew=settings.max_future_skew or None,
                )
                state["consumer"] = consumer
                app.add_background_task(
                    consumer.run, app.shutdown_event, settings.workers, settings.migrate
                )
                yield
        finally:
            probe.close()
            pool.close()
            await pool.wait_closed()

    return app

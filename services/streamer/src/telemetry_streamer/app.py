"""The streamer app: a Quart service whose background task replays the DCGM CSV."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from prometheus_client import CollectorRegistry
from quart import Quart
from telemetry_kit import base_app
from telemetry_mq import BrokerClient
from telemetry_store import create_pool

from .metrics import StreamerMetrics
from .replay import Replayer
from .settings import Settings
from .source import load

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Quart:
    """Build the streamer app; replay starts when serving starts and stops on shutdown.

    Raises ``SourceError`` when the CSV cannot be replayed at all.
    """
    registry = CollectorRegistry()
    metrics = StreamerMetrics.create(registry)
    state: dict[str, Replayer] = {}

    async def readiness() -> str | None:
        replayer = state.get("replayer")
        if replayer is None:
            return "starting"
        # A streamer whose configured loops are done has nothing left to reach for: ready.
        return None if replayer.healthy or replayer.finished else "broker or work index unreachable"

    app = base_app(
        "streamer",
        title="Telemetry streamer",
        version="0.1.0",
        registry=registry,
        readiness=readiness,
    )

    rows = load(settings.csv_path, metrics)  # SourceError: __main__ exits with one line

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None]:
        # minsize=0: start (and report not-ready) even while PostgreSQL is away.
        pool = await create_pool(settings.database_url.get_secret_value(), minsize=0, maxsize=2)
        token = settings.broker_token.get_secret_value() if settings.broker_token else None
        try:
            async with BrokerClient(settings.broker_url, token=token) as broker:
                replayer = Replayer(
                    rows=rows,
                    stream=settings.stream,
                    topic=settings.topic,
                    partitions=settings.partitions,
                    pool=pool,
                    broker=broker,
                    metrics=metrics,
                    chunk_size=settings.chunk_size,
                    batch_size=settings.batch_size,
                    rate=settings.rate,
                    loops=settings.loops,
                    lease=settings.chunk_lease,
                )
                state["replayer"] = replayer
                app.add_background_task(replayer.run, app.shutdown_event, settings.migrate)
                yield
        finally:
            pool.close()
            await pool.wait_closed()

    return app

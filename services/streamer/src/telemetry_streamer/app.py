"""The streamer app: a Quart service whose background task replays the DCGM CSV or scrapes
the fleet's dcgm-exporters (``STREAMER_SOURCE``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Protocol

from prometheus_client import CollectorRegistry
from quart import Quart
from telemetry_kit import base_app
from telemetry_model import FieldFilter
from telemetry_mq import BrokerClient
from telemetry_store import create_pool

from .health import TargetHealth, TargetHealthCollector
from .metrics import StreamerMetrics
from .replay import Replayer
from .scraper import ScrapeConfig, Scraper
from .settings import Settings
from .source import discovery, load

log = logging.getLogger(__name__)


class _Worker(Protocol):
    healthy: bool


def create_app(settings: Settings) -> Quart:
    """Build the streamer app; its source starts when serving starts and stops on shutdown.

    Raises ``SourceError`` when the source cannot work at all (see ``source``).
    """
    registry = CollectorRegistry()
    metrics = StreamerMetrics.create(registry)
    health: dict[int, TargetHealth] = {}
    registry.register(TargetHealthCollector(health))
    state: dict[str, _Worker] = {}

    async def readiness() -> str | None:
        worker = state.get("worker")
        if worker is None:
            return "starting"
        # A streamer whose configured loops are done has nothing left to reach for: ready.
        if worker.healthy or (isinstance(worker, Replayer) and worker.finished):
            return None
        return "broker or work index unreachable"

    app = base_app(
        "streamer",
        title="Telemetry streamer",
        version="0.1.0",
        registry=registry,
        readiness=readiness,
    )

    # SourceError: __main__ exits with one line.
    scraping = settings.source == "scrape"
    if scraping:
        found = discovery(
            targets=settings.scrape_targets,
            targets_file=settings.scrape_targets_file,
            dns=settings.scrape_dns,
            path=settings.scrape_path,
        )
        config = ScrapeConfig(
            interval=settings.scrape_interval,
            timeout=settings.scrape_timeout,
            lease=settings.lease,
            refresh=settings.scrape_refresh,
            target_ttl=settings.target_ttl,
            max_backoff=settings.scrape_max_backoff,
            history=settings.scrape_history,
            max_bytes=settings.scrape_max_bytes,
            batch_size=settings.batch_size,
            fields=FieldFilter.parse(settings.scrape_fields),
        )
    else:
        rows = load(settings.csv_path, metrics)

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None]:
        # minsize=0: start (and report not-ready) even while PostgreSQL is away.
        dsn = settings.database_url.get_secret_value()
        pool = await create_pool(dsn, minsize=0, maxsize=2)
        # The scrape source's membership and leases get a connection of their own.
        control = await create_pool(dsn, minsize=0, maxsize=1) if scraping else None
        token = settings.broker_token.get_secret_value() if settings.broker_token else None
        try:
            async with BrokerClient(settings.broker_url, token=token) as broker:
                worker: Replayer | Scraper
                if scraping:
                    worker = Scraper(
                        discovery=found,
                        pool=pool,
                        control_pool=control,
                        broker=broker,
                        metrics=metrics,
                        stream=settings.stream,
                        topic=settings.topic,
                        partitions=settings.partitions,
                        config=config,
                        health=health,
                    )
                else:
                    worker = Replayer(
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
                state["worker"] = worker
                app.add_background_task(worker.run, app.shutdown_event, settings.migrate)
                yield
        finally:
            for p in (pool, control):
                if p is not None:
                    p.close()
                    await p.wait_closed()

    return app

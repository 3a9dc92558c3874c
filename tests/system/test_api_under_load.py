"""Fifty slow API requests in flight: health and readiness answer, ingestion goes on.

The API is served over real HTTP (Hypercorn on loopback, its own thread and event loop); its
slow requests are real slow queries (``pg_sleep`` through a route only this test adds, on
the API's own pool and bounds). A collector with a real broker stores records meanwhile.

"Answer at once" is an ordering here, not a time: health and readiness answer 200 while every
slow request is still in flight and every pooled connection still sleeps. Waiting behind the
slow queries for a connection would take until one came free, which happens only as those
requests end (the queued ones after ``pool_timeout``, the sleeping ones at their timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import psycopg2
import pytest
from quart import Blueprint
from telemetry_api import create_app
from telemetry_api.db import db
from telemetry_collector import Settings as CollectorSettings
from telemetry_collector import create_app as create_collector
from telemetry_mq import BrokerClient

from services.api.tests.conftest import LiveServer, settings_for
from services.collector.tests.test_consume import count, records
from tests.helpers import wait_for

pytestmark = pytest.mark.system

SLOW = 50
POOL = 10


async def _sleep(cur: Any) -> None:
    await cur.execute("SELECT pg_sleep(60)")


def slow_api(dsn: str) -> Any:
    """The API with one more route: a query that sleeps (until its timeout cancels it)."""
    app = create_app(
        settings_for(
            dsn,
            pool_max_size=POOL,
            pool_timeout=15,  # the queued requests stay in flight for 15 s
            statement_timeout=20,
            query_timeout=30,
        )
    )
    bp = Blueprint("slow", __name__)

    @bp.get("/test/slow")
    async def slow() -> dict[str, str]:
        async with db() as q:
            await q.run("sleep", _sleep)
        return {"status": "slept"}

    app.register_blueprint(bp)
    return app


def sleeping(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND query LIKE '%%pg_sleep(60)%%'"
                " AND pid <> pg_backend_pid()"
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


async def get_status(http: aiohttp.ClientSession, url: str) -> int:
    # No client timeout: how long the answer takes is the ordering below's business.
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
        await r.read()
        return r.status


async def test_fifty_slow_requests_leave_health_readiness_and_ingestion_alone(
    broker, db, fresh_database_url
):
    collector = create_collector(
        CollectorSettings(
            database_url=fresh_database_url,
            broker_url=broker.url,
            topic="t",
            workers=2,
            batch_size=100,
            max_wait=0.2,
        )
    )
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic("t", partitions=4)
    with LiveServer(slow_api(fresh_database_url)) as api:
        async with collector.test_app(), aiohttp.ClientSession() as http:
            ready = collector.test_client()

            async def collector_ready() -> bool:
                return (await ready.get("/readyz")).status_code == 200

            await wait_for(collector_ready, timeout=30, what="the collector")
            slow = [
                asyncio.create_task(http.get(f"{api.url}/test/slow", timeout=None))
                for _ in range(SLOW)
            ]
            try:

                async def pool_full() -> bool:
                    return await asyncio.to_thread(sleeping, fresh_database_url) == POOL

                await wait_for(pool_full, timeout=30, what=f"{POOL} sleeping queries")
                assert not any(t.done() for t in slow)
                # With every connection busy and 40 more requests queued for one, both
                # answer 200 before any slow request ends or any sleeping query is let go.
                for path in ("/healthz", "/readyz"):
                    status = await get_status(http, f"{api.url}{path}")
                    done = sum(t.done() for t in slow)
                    assert (status, done) == (200, 0), (path, status, f"{done} slow ones done")
                    still = await asyncio.to_thread(sleeping, fresh_database_url)
                    assert still == POOL, (path, f"{still} queries still sleeping")
                async with BrokerClient(broker.url) as mq:
                    await mq.publish("t", records(500))

                async def ingested() -> bool:
                    return await count(db) == 500

                await wait_for(ingested, timeout=12, what="500 stored datapoints")
                assert not all(t.done() for t in slow), "stored while the requests were slow"
            finally:
                answers = []
                for response in await asyncio.gather(*slow):
                    answers.append(
                        (response.status, response.content_type, (await response.json())["code"])
                    )
                    response.release()
    # Every slow request ends as a documented 503: the queued ones when no connection came
    # free in time, the sleeping ones when their statement timed out (cancelled on the server).
    assert {a[:2] for a in answers} == {(503, "application/problem+json")}, answers
    codes = [a[2] for a in answers]
    assert set(codes) == {"DATABASE_BUSY", "QUERY_TIMEOUT"}, codes
    assert codes.count("QUERY_TIMEOUT") >= POOL
    assert await asyncio.to_thread(sleeping, fresh_database_url) == 0

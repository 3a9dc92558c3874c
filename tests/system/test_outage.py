"""PostgreSQL down under load: the whole pipeline as processes, the database stopped for real.

The outage outlasts what ``BROKER_MAX_DELIVERIES`` x the old nack delay survived (five
deliveries, about a second apart). During it the API answers 503 problem+json
(``DATABASE_UNAVAILABLE``, with ``Retry-After``); afterwards it answers 200, every datapoint is
stored exactly once, nothing is dead-lettered, and no process was restarted. ``task chaos``
runs the same fault for 120 s (its default ``--outage-seconds``).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiopg
import pytest
from telemetry_devstack import (
    Stack,
    StackConfig,
    create_database,
    embedded_server,
    start_server,
    stop_server,
)
from telemetry_mq import BrokerClient
from telemetry_store import create_pool, migrate

from conftest import CSV_PATH
from tests.helpers import scrape, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]

ROWS = 2470
OUTAGE_SECONDS = 25.0


@pytest.fixture
async def own_server() -> AsyncIterator[tuple[Path, str]]:
    """An embedded PostgreSQL of this test's own (it is stopped and started again).

    Not under pytest's tmp_path: other pytest sessions reset that tree to mode 0700, and the
    server runs as another user when the tests run as root.
    """
    with tempfile.TemporaryDirectory(prefix="telemetry-pg-") as tmp:
        data = Path(tmp) / "pgdata"
        with embedded_server(data, keep=False) as admin:
            yield data, create_database(admin, "outage")


async def stored(db: aiopg.Pool) -> tuple[int, int, int]:
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*), coalesce(min(seq), -1), coalesce(max(seq), -1) FROM telemetry"
        )
        count, low, high = await cur.fetchone()
        return int(count), int(low), int(high)


async def status(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=15)) as r:
        await r.read()
        return r.status, r.content_type


async def api_answer(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str | None]:
    """The API's status, content type and problem code (None for a body that is not one)."""
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=15)) as r:
        body = await r.json(content_type=None)
        code = body.get("code") if isinstance(body, dict) else None
        if r.status == 503:  # a 503 tells the client when to come back
            assert int(r.headers["Retry-After"]) > 0, dict(r.headers)
        return r.status, r.content_type, code


UNAVAILABLE = (503, "application/problem+json", "DATABASE_UNAVAILABLE")


async def test_postgres_outage_under_load_dead_letters_nothing(own_server, tmp_path: Path):
    data, dsn = own_server
    pool = await create_pool(dsn, maxsize=2)
    await migrate(pool)
    pool.close()
    await pool.wait_closed()
    loops = 12
    total = loops * ROWS
    stack = Stack(
        StackConfig(
            database_url=dsn,
            data_dir=tmp_path,
            csv_path=CSV_PATH,
            streamers=1,
            collectors=2,
            api_port=0,
            rate=800,
            log_format="json",
            extra_env={
                "STREAMER_LOOPS": str(loops),
                # Big chunks: the streamer keeps publishing claimed rows into the outage, so
                # the collectors face records they cannot store.
                "STREAMER_CHUNK_SIZE": "3000",
                "STREAMER_BATCH_SIZE": "100",
                "COLLECTOR_BATCH_SIZE": "200",
                "COLLECTOR_MAX_BACKOFF": "2",
            },
        ),
        sink=None,
    )
    try:
        await stack.start()
        assert stack.api is not None and stack.broker is not None
        gpus_url = f"{stack.api.url}/api/v1/gpus"
        async with aiohttp.ClientSession() as http:
            db = await create_pool(dsn, minsize=0, maxsize=1)
            try:

                async def some_stored() -> bool:
                    return (await stored(db))[0] >= 3000

                await wait_for(some_stored, timeout=60, what="the first stored datapoints")
            finally:
                db.close()
                await db.wait_closed()

            down_at = time.monotonic()
            await asyncio.to_thread(stop_server, data)

            # During the outage: the API answers 503 problem+json, the collectors are not
            # ready, and every process keeps running.
            async def api_unavailable() -> bool:
                return await api_answer(http, gpus_url) == UNAVAILABLE

            await wait_for(api_unavailable, timeout=20, what="the API's 503")

            async def collectors_not_ready() -> bool:
                codes = [(await status(http, f"{c.url}/readyz"))[0] for c in stack.collectors]
                return codes == [503] * len(codes)

            await wait_for(collectors_not_ready, timeout=20, what="collectors not ready")
            while (left := OUTAGE_SECONDS - (time.monotonic() - down_at)) > 0:
                answer = await api_answer(http, gpus_url)
                assert answer == UNAVAILABLE, answer
                await asyncio.sleep(min(left, 2.0))  # the outage's length, not a synchronization
            assert all(p.returncode is None for p in stack.processes)
            await asyncio.to_thread(start_server, data)

            # After: everything recovers on its own and every datapoint is stored once.
            db = await create_pool(dsn, minsize=0, maxsize=1)
            try:

                async def all_stored() -> bool:
                    count, _, _ = await stored(db)
                    assert count <= total
                    return count == total

                await wait_for(all_stored, timeout=180, what=f"{total} stored datapoints")
                assert await stored(db) == (total, 0, total - 1)
            finally:
                db.close()
                await db.wait_closed()

            async def api_ok() -> bool:
                return (await api_answer(http, gpus_url))[0] == 200

            await wait_for(api_ok, timeout=30, what="the API's 200")
            async with http.get(gpus_url) as r:  # and the answer is the fleet, not an error
                assert (r.status, r.content_type) == (200, "application/json")
                assert len((await r.json())["items"]) > 0
            for c in stack.collectors:
                assert (await status(http, f"{c.url}/readyz"))[0] == 200
                assert await scrape(c.url, "telemetry_collector_datapoints_rejected_total") == 0
            pauses = [
                await scrape(c.url, "telemetry_collector_database_pauses_total")
                for c in stack.collectors
            ]
            assert all(n >= 1 for n in pauses), pauses
            released = [
                await scrape(c.url, "telemetry_collector_datapoints_released_total")
                for c in stack.collectors
            ]
            assert sum(released) > 0, "the collectors met records they could not store"
        async with BrokerClient(stack.broker.url) as mq:
            topics = {t["name"]: t for t in await mq.topics()}
        assert "telemetry.dlq" not in topics or topics["telemetry.dlq"]["records"] == 0
        assert all(p.returncode is None for p in stack.processes), "no process restarted"
    finally:
        codes = await stack.stop()
    assert set(codes.values()) == {0}, codes

"""Bounded database work: statement timeouts that cancel on the server, a pool that answers
503 instead of queueing forever, limits on what one step query may aggregate, and stored
times no request can turn into a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg2
import pytest
from quart import Quart
from telemetry_api import create_app

from tests.helpers import wait_for

from .conftest import Dataset, settings_for

GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
# The day's partition for rows inserted by hand (the write path creates what it needs).
_PARTITION = (
    "SELECT telemetry_create_partition('telemetry', 'telemetry_p20250718',"
    " '2025-07-18 00:00+00', '2025-07-19 00:00+00');"
)


@pytest.fixture
async def small(db, fresh_database_url) -> str:
    """A migrated database of its own with one GPU and a few datapoints."""
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO streams (name) VALUES ('s');"
            " INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen)"
            " VALUES ('GPU-1', 'host-1', 0, 'nvidia0', 'H100', '2025-07-18 20:00+00',"
            " '2025-07-18 20:00:30+00');"
            f" {_PARTITION}"
            " INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
            " SELECT g.id, '2025-07-18 20:00+00'::timestamptz + i * interval '10 s', 1, i, s.id, i"
            " FROM gpus g, streams s, generate_series(0, 3) i"
        )
    return fresh_database_url


async def serving(dsn: str, **settings: Any) -> AsyncIterator[Quart]:
    app = create_app(settings_for(dsn, **settings))
    async with app.test_app():
        yield app


@pytest.fixture
def locked(small: str) -> Iterator[psycopg2.extensions.connection]:
    """The gpus table locked by another session: every read of it waits, for real."""
    holder = psycopg2.connect(small)
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE gpus IN ACCESS EXCLUSIVE MODE")
    try:
        yield holder
    finally:
        holder.rollback()
        holder.close()


async def running(dsn: str) -> list[str]:
    """Queries other sessions are running on this database right now."""
    conn = await asyncio.to_thread(psycopg2.connect, dsn)
    try:
        with conn.cursor() as cur:
            await asyncio.to_thread(
                cur.execute,
                "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND state = 'active'",
            )
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


async def test_every_connection_has_the_statement_timeout(small):
    async for app in serving(small, statement_timeout=1.5, pool_min_size=2):
        pool = app.extensions["telemetry_api"].pool
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SHOW statement_timeout")
            assert (await cur.fetchone())[0] == "1500ms"
            await cur.execute("SHOW DateStyle")
            assert (await cur.fetchone())[0] == "ISO, YMD"


@pytest.mark.parametrize(
    "bounds",
    [
        {"statement_timeout": 60, "query_timeout": 0.5},  # the client's deadline cancels
        {"statement_timeout": 0.5, "query_timeout": 60},  # the server's statement_timeout
    ],
    ids=["client-deadline", "statement-timeout"],
)
async def test_a_query_past_its_timeout_leaves_no_backend_running(small, locked, bounds):
    async for app in serving(small, **bounds):
        response = await app.test_client().get("/api/v1/gpus/GPU-1")
        body = await response.get_json()
        assert (response.status_code, body["code"]) == (503, "QUERY_TIMEOUT"), body
        assert response.content_type == "application/problem+json"
        assert response.headers["Retry-After"] == "1"
        # Cancelled on the server before the answer: no backend still waits for the lock.
        assert await running(small) == []
        sample = app.extensions["telemetry_api"].metrics.registry.get_sample_value
        assert sample("telemetry_api_db_query_timeouts_total") == 1
    locked.rollback()
    async for app in serving(small, **bounds):
        assert (await app.test_client().get("/api/v1/gpus/GPU-1")).status_code == 200


async def test_a_client_that_goes_away_cancels_its_query(small, locked):
    async for app in serving(small, statement_timeout=60, query_timeout=60):
        request = asyncio.create_task(app.test_client().get("/api/v1/gpus/GPU-1"))

        async def waiting() -> bool:
            return len(await running(small)) == 1

        await wait_for(waiting, timeout=10, what="the query to wait on the lock")
        request.cancel()  # as Hypercorn does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await request
        assert await running(small) == []


async def test_a_busy_pool_answers_503_with_retry_after(small, locked):
    async for app in serving(small, pool_max_size=1, pool_timeout=0.3, statement_timeout=30):
        client = app.test_client()
        first = asyncio.create_task(client.get("/api/v1/gpus/GPU-1"))

        async def waiting() -> bool:
            return len(await running(small)) == 1

        await wait_for(waiting, timeout=10, what="the first request to hold the connection")
        response = await client.get("/api/v1/gpus/GPU-1")
        body = await response.get_json()
        assert (response.status_code, body["code"]) == (503, "DATABASE_BUSY"), body
        assert response.content_type == "application/problem+json"
        assert response.headers["Retry-After"] == "1"
        # Readiness has a connection of its own: the busy pool does not make it lie or wait.
        assert (await client.get("/readyz")).status_code == 200
        locked.rollback()
        assert (await first).status_code == 200


async def test_bucket_and_row_limits(dataset: Dataset):
    url = f"/api/v1/gpus/{GPU}/telemetry"
    async for app in serving(dataset.dsn, max_buckets=10, max_scan_rows=30):
        client = app.test_client()
        # 40 datapoints over ~50 s: 1 s buckets span 51 > 10; 10 s buckets span 6.
        response = await client.get(f"{url}?step=1s&metric=DCGM_FI_DEV_GPU_UTIL")
        body = await response.get_json()
        assert (response.status_code, body["code"]) == (400, "TOO_MANY_BUCKETS"), body
        assert body["max_buckets"] == 10 and response.content_type == "application/problem+json"
        # All 40 datapoints are more than 30 to aggregate; one metric's 4 are not.
        response = await client.get(f"{url}?step=10s")
        body = await response.get_json()
        assert (response.status_code, body["code"]) == (400, "TOO_MANY_ROWS"), body
        assert body["max_rows"] == 30
        response = await client.get(f"{url}?step=10s&metric=DCGM_FI_DEV_GPU_UTIL")
        assert response.status_code == 200
        assert sum(b["count"] for b in (await response.get_json())["items"]) == 4
        # A narrow window holds few enough.
        narrow = "start_time=2025-07-18T20:42:34Z&end_time=2025-07-18T20:42:36Z"
        assert (await client.get(f"{url}?step=10s&{narrow}")).status_code == 200


async def test_stored_times_outside_python_s_years_never_answer_500(db, fresh_database_url):
    # Rows as a collector stored them before ingestion checked the time's domain (year 20983,
    # which LEAST/GREATEST then kept as last_seen), and as only a hand-written INSERT could
    # (44 BC, infinity).
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO streams (name) VALUES ('s');"
            " INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen)"
            " VALUES ('GPU-odd', 'host-odd', 0, 'nvidia0', 'H100', '2025-07-18 20:00+00',"
            " '20983-03-01 12:00:00.5+00');"
            f" {_PARTITION}"
            " INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
            " SELECT g.id, t, 1, 1.5, s.id, n FROM gpus g, streams s,"
            " unnest(ARRAY['0044-03-15 10:00+00 BC', '2025-07-18 20:00+00',"
            " '20983-03-01 12:00:00.5+00', 'infinity']::timestamptz[]) WITH ORDINALITY AS u(t, n)"
        )
    async for app in serving(fresh_database_url):
        client = app.test_client()
        show = await client.get("/api/v1/gpus/GPU-odd")
        assert show.status_code == 200
        state = await show.get_json()
        assert state["last_seen"] == "+20983-03-01T12:00:00.500000Z"
        assert state["metrics"][0]["time"] == "infinity"
        listed = await client.get("/api/v1/gpus")
        assert listed.status_code == 200
        assert (await listed.get_json())["items"][0]["last_seen"] == state["last_seen"]
        times, url = [], "/api/v1/gpus/GPU-odd/telemetry?limit=1"
        while url:
            page = await client.get(url)
            assert page.status_code == 200, await page.get_data(as_text=True)
            body = await page.get_json()
            times += [i["time"] for i in body["items"]]
            url = body["next"]
        assert times == [
            "-0043-03-15T10:00:00Z",
            "2025-07-18T20:00:00Z",
            "+20983-03-01T12:00:00.500000Z",
            "infinity",
        ]
        # Buckets cover the years the time parameters take (0001-9999).
        step = await client.get(
            "/api/v1/gpus/GPU-odd/telemetry?step=1d"
            "&start_time=2025-07-18T00:00:00Z&end_time=2025-07-20T00:00:00Z"
        )
        assert step.status_code == 200, await step.get_data(as_text=True)
        assert [b["count"] for b in (await step.get_json())["items"]] == [1]
        wide = await client.get("/api/v1/gpus/GPU-odd/telemetry?step=1d")
        assert wide.status_code == 400  # its data spans the years to 9999: too many days
        assert (await wide.get_json())["code"] == "TOO_MANY_BUCKETS"

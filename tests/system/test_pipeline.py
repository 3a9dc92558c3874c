"""The whole pipeline as processes: CSV, streamers, broker, collectors, PostgreSQL, API."""

from __future__ import annotations

import os
import signal
import time

import aiohttp
import pytest
from telemetry_model import read_samples

from conftest import CSV_PATH
from tests.helpers import scrape, wait_for

pytestmark = pytest.mark.system

ROWS = 2470


async def stored(db) -> tuple[int, int, int]:
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*), coalesce(min(seq), -1), coalesce(max(seq), -1) FROM telemetry"
        )
        return tuple(await cur.fetchone())


async def test_every_datapoint_is_stored_exactly_once(make_stack, db):
    started_us = time.time_ns() // 1000
    loops = 2
    stack = await make_stack(
        streamers=2,
        collectors=2,
        rate=0,
        env={
            "STREAMER_LOOPS": str(loops),
            "STREAMER_CHUNK_SIZE": "300",
            "STREAMER_BATCH_SIZE": "100",
            "COLLECTOR_BATCH_SIZE": "200",
        },
    )
    total = loops * ROWS
    await wait_for(lambda: _count_is(db, total), timeout=60, what=f"{total} stored datapoints")

    # No lost write, no skip, nothing twice: exactly the sequence numbers 0..total-1.
    assert await stored(db) == (total, 0, total - 1)
    samples = read_samples(CSV_PATH)
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT t.seq, g.uuid, g.hostname, g.gpu_index, m.name, t.value,"
            " (extract(epoch FROM t.ts) * 1e6)::bigint"
            " FROM telemetry t JOIN gpus g ON g.id = t.gpu_id JOIN metrics m ON m.id = t.metric_id"
        )
        rows = await cur.fetchall()
    now_us = time.time_ns() // 1000
    for seq, uuid, host, index, metric, value, ts_us in rows:
        sample = samples[seq % ROWS]
        assert (uuid, host, index, metric, value) == (
            sample.gpu.uuid,
            sample.gpu.hostname,
            sample.gpu.index,
            sample.metric,
            sample.value,
        )
        assert started_us - 1_000_000 <= ts_us <= now_us  # processing time, not 2025
    # Both streamers took part (the work index shares the stream between them).
    published = [
        await scrape(p.url, "telemetry_streamer_datapoints_published_total")
        for p in stack.streamers
    ]
    assert sum(published) == total and all(n > 0 for n in published)

    # The API serves what was stored.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.api.url}/api/v1/gpus", params={"limit": "1000"}) as r:
            assert r.status == 200
            body = await r.json()
    assert len(body["items"]) == 247 and body["next"] is None

    codes = await stack.stop()
    assert set(codes.values()) == {0}, codes  # every service shut down gracefully


async def _count_is(db, n: int) -> bool:
    count, _, _ = await stored(db)
    assert count <= n, f"more rows than published: {count} > {n}"
    return count == n


async def test_crash_and_scaling_mid_stream_lose_nothing(make_stack, db):
    loops = 3
    total = loops * ROWS
    stack = await make_stack(
        streamers=1,
        collectors=2,
        rate=400,  # about 18 s of streaming: the streamer added below joins long before the end
        env={
            "STREAMER_LOOPS": str(loops),
            "STREAMER_CHUNK_SIZE": "200",
            "STREAMER_BATCH_SIZE": "100",
            "COLLECTOR_BATCH_SIZE": "100",
            "COLLECTOR_ACK_WAIT": "2",
        },
    )

    async def some_stored() -> bool:
        count, _, _ = await stored(db)
        return count >= 500

    await wait_for(some_stored, timeout=30, what="the first datapoints")
    assert stack.broker is not None
    broker = stack.broker.url

    async def expired() -> float:
        return await scrape(broker, "telemetry_broker_lease_expired_records_total")

    await stack.add_streamer()  # scale out while streaming: the work index shares the stream

    # Frozen, the collector still gets records for the fetches it had sent (the streamer goes
    # on publishing) and never acks them: leases in flight, whatever it was doing a moment ago.
    os.kill(stack.collectors[0].pid, signal.SIGSTOP)
    await wait_for(expired, timeout=60, what="the frozen collector's leases to expire")
    stack.collectors[0].kill()  # then it crashes
    await stack.add_collector()
    await wait_for(lambda: _count_is(db, total), timeout=90, what=f"{total} stored datapoints")
    assert await stored(db) == (total, 0, total - 1)
    # What expired went to the other collectors (nothing was lost, and nothing stored twice).
    assert await scrape(broker, "telemetry_broker_records_redelivered_total") > 0
    published = [
        await scrape(p.url, "telemetry_streamer_datapoints_published_total")
        for p in stack.streamers
    ]
    assert sum(published) == total
    assert published[1] > 0, "the streamer added mid-stream took part"

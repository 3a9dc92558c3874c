"""A streamer killed with SIGKILL mid-stream leaves no gap: its chunk is taken over."""

from __future__ import annotations

import pytest
from telemetry_model import read_samples

from conftest import CSV_PATH
from tests.helpers import scrape, wait_for

pytestmark = pytest.mark.system

ROWS = 2470


async def test_a_killed_streamer_leaves_no_gap(make_stack, db):
    loops = 2
    total = loops * ROWS
    stack = await make_stack(
        streamers=2,
        collectors=2,
        rate=500,  # a chunk of 500 takes about a second: a kill lands in one
        env={
            "STREAMER_LOOPS": str(loops),
            "STREAMER_CHUNK_SIZE": "500",
            "STREAMER_BATCH_SIZE": "50",
            "STREAMER_CHUNK_LEASE": "2",
            "COLLECTOR_BATCH_SIZE": "200",
        },
    )

    async def some_stored() -> bool:
        async with db.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM telemetry")
            return int((await cur.fetchone())[0]) >= 300

    await wait_for(some_stored, timeout=60, what="the first datapoints")
    victim, survivor = stack.streamers
    # Ready means it has published, so it has claimed: from its first claim on, a streamer
    # always holds one chunk (the claim that deletes the finished one inserts the next).
    victim.kill()
    await victim.wait()

    async def all_stored() -> bool:
        async with db.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM telemetry")
            return int((await cur.fetchone())[0]) == total

    await wait_for(all_stored, timeout=120, what=f"{total} stored datapoints")
    samples = read_samples(CSV_PATH)
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT t.seq, g.uuid, m.name, t.value FROM telemetry t"
            " JOIN gpus g ON g.id = t.gpu_id JOIN metrics m ON m.id = t.metric_id ORDER BY t.seq"
        )
        rows = await cur.fetchall()
        await cur.execute("SELECT count(*) FROM stream_chunks")
        assert (await cur.fetchone())[0] == 0  # every chunk finished and deleted
    # Every sequence number once (the primary key allows one row, and so one time, per seq),
    # each with its CSV row's values.
    assert [r[0] for r in rows] == list(range(total))
    for seq, uuid, metric, value in rows:
        sample = samples[seq % ROWS]
        assert (uuid, metric, value) == (sample.gpu.uuid, sample.metric, sample.value)
    takeovers = await scrape(survivor.url, "telemetry_streamer_chunk_takeovers_total")
    assert takeovers == 1  # the chunk the victim held when it died
    codes = await stack.stop()
    assert codes.pop(victim.name) == -9
    assert set(codes.values()) == {0}, codes

from __future__ import annotations

import asyncio

import pytest
from telemetry_model import METRICS, WireTemplate, read_samples
from telemetry_store import (
    GpuSighting,
    claim,
    create_pool,
    ensure_streams,
    insert_datapoints,
    load_migrations,
    migrate,
    next_seq,
    transaction,
    upsert_gpus,
)

from conftest import CSV_PATH


def sightings(samples, ts_us):
    seen = {}
    for s in samples:
        g = s.gpu
        seen[g.uuid] = GpuSighting(
            g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, ts_us, ts_us
        )
    return list(seen.values())


def test_migrations_are_numbered_without_gaps():
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_is_applied_once_even_concurrently(fresh_database_url):
    pools = [await create_pool(fresh_database_url, maxsize=1) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in load_migrations()]
        assert await migrate(pools[0]) == []
        async with transaction(pools[0]) as cur:
            await cur.execute("SELECT count(*) FROM metrics")
            assert (await cur.fetchone())[0] == len(METRICS)
    finally:
        for p in pools:
            p.close()
            await p.wait_closed()


async def test_claims_never_overlap(db):
    pool = db  # a database of its own: the exact 0..799 holds on every run of the session

    async def one() -> list[int]:
        async with transaction(pool) as cur:
            c = await claim(cur, "claims-test", 100)
            return list(range(c.start, c.stop))

    chunks = await asyncio.gather(*(one() for _ in range(8)))
    flat = sorted(s for chunk in chunks for s in chunk)
    assert flat == list(range(800))
    async with transaction(pool) as cur:
        assert await next_seq(cur, "claims-test") == 800
        assert await next_seq(cur, "no-such-stream") is None
    with pytest.raises(ValueError):
        async with transaction(pool) as cur:
            await claim(cur, "claims-test", 0)


async def test_batch_insert_is_idempotent(cur):
    samples = read_samples(CSV_PATH)
    await ensure_streams(cur, ["s1"])
    ts = 1_800_000_000_000_000
    await upsert_gpus(cur, sightings(samples, ts))
    encoded = [WireTemplate(s).encode(b'"s1"', i, ts + i) for i, s in enumerate(samples)]
    assert await insert_datapoints(cur, encoded) == len(samples)
    assert await insert_datapoints(cur, encoded[:100]) == 0
    assert await insert_datapoints(cur, []) == 0
    await cur.execute("SELECT count(*), count(DISTINCT gpu_id) FROM telemetry")
    assert await cur.fetchone() == (len(samples), 247)
    await cur.execute(
        "SELECT t.value, t.ts FROM telemetry t JOIN gpus g ON g.id = t.gpu_id"
        " JOIN metrics m ON m.id = t.metric_id WHERE t.seq = 5"
    )
    value, stamped = await cur.fetchone()
    assert value == samples[5].value
    assert stamped.timestamp() == pytest.approx((ts + 5) / 1e6)


async def test_gpu_upsert_widens_the_seen_range(cur):
    samples = read_samples(CSV_PATH)[:1]
    await upsert_gpus(cur, sightings(samples, 2_000))
    await upsert_gpus(cur, sightings(samples, 1_000))
    await upsert_gpus(cur, sightings(samples, 3_000))
    await cur.execute(
        "SELECT extract(epoch FROM first_seen) * 1e6, extract(epoch FROM last_seen) * 1e6"
        " FROM gpus WHERE uuid = %s",
        (samples[0].gpu.uuid,),
    )
    assert tuple(round(float(x)) for x in await cur.fetchone()) == (1_000, 3_000)


def test_public_surface():
    import telemetry_store

    modules = {"errors", "pool", "reads", "streams", "writes"}  # "migrate" is the function
    assert sorted(telemetry_store.__all__) == sorted(
        n for n in dir(telemetry_store) if not n.startswith("_") and n not in modules
    )

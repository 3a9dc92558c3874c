from __future__ import annotations

import asyncio
import dataclasses

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
    pending_chunks,
    transaction,
    upsert_gpus,
)

from conftest import CSV_PATH, insert_old_schema


def sightings(samples, ts_us):
    seen = {}
    for s in samples:
        g = s.gpu
        seen[g.uuid] = GpuSighting(
            g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, ts_us, ts_us
        )
    return list(seen.values())


def test_migrations_have_unique_ascending_versions_from_one():
    versions = [m.version for m in load_migrations()]
    assert versions[0] == 1
    assert versions == sorted(set(versions))


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

    async def one(i: int) -> list[int]:
        async with transaction(pool) as cur:
            c = await claim(cur, "claims-test", 100, owner=f"o{i}")
            assert c is not None and not c.takeover and c.owner == f"o{i}"
            return list(range(c.start, c.stop))

    chunks = await asyncio.gather(*(one(i) for i in range(8)))
    flat = sorted(s for chunk in chunks for s in chunk)
    assert flat == list(range(800))
    async with transaction(pool) as cur:
        assert await next_seq(cur, "claims-test") == 800
        assert await next_seq(cur, "no-such-stream") is None
    with pytest.raises(ValueError):
        async with transaction(pool) as cur:
            await claim(cur, "claims-test", 0, owner="o")


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

    # "migrate" is the function
    modules = {
        "errors",
        "pool",
        "reads",
        "streams",
        "writes",
        "timesql",
        "partitions",
        "rollups",
        "maintenance",
    }
    assert sorted(telemetry_store.__all__) == sorted(
        n for n in dir(telemetry_store) if not n.startswith("_") and n not in modules
    )


SMALLINT_MAX = 2**15 - 1
INTEGER_MAX = 2**31 - 1


async def _sequence_next(cur, table: str, value: int) -> None:
    """Make ``value`` the next id the table's identity sequence hands out."""
    await cur.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)", (table, value))


async def test_claims_go_on_past_the_last_stream_id(db):
    async with transaction(db) as cur:
        await _sequence_next(cur, "streams", SMALLINT_MAX)  # one id left
        c = await claim(cur, "near-the-limit", 10, owner="me")
    assert c is not None and (c.stream_id, c.start) == (SMALLINT_MAX, 0)
    # Each claim used to draw (and waste) an id: the next one failed with
    # 'nextval: reached maximum value of sequence "streams_id_seq" (32767)'.
    for i in range(1, 2001):
        async with transaction(db) as cur:
            c = await claim(cur, "near-the-limit", 10, owner="me", done=c)
        assert c is not None and (c.stream_id, c.start) == (SMALLINT_MAX, 10 * i)
    async with transaction(db) as cur:
        for _ in range(200):
            await ensure_streams(cur, ["near-the-limit"])
        assert await next_seq(cur, "near-the-limit") == 20_010
        await cur.execute("SELECT count(*) FROM streams")
        assert (await cur.fetchone())[0] == 1
        # Each claim deleted the chunk finished before it: only the last one is left.
        assert await pending_chunks(cur, "near-the-limit") == 1


async def test_gpu_upserts_go_on_past_the_last_gpu_id(db):
    every = read_samples(CSV_PATH)
    uuids = sorted({s.gpu.uuid for s in every})[:3]
    samples = [s for s in every if s.gpu.uuid in uuids]  # three GPUs, ten metrics each
    async with transaction(db) as cur:
        await _sequence_next(cur, "gpus", INTEGER_MAX - 2)  # exactly three ids left
        await upsert_gpus(cur, sightings(samples, 1_000))
    for i in range(1, 501):
        async with transaction(db) as cur:
            await upsert_gpus(cur, sightings(samples, 1_000 + i))
    async with transaction(db) as cur:
        await cur.execute(
            "SELECT uuid, id, extract(epoch FROM last_seen) * 1e6 FROM gpus ORDER BY uuid"
        )
        rows = await cur.fetchall()
    assert [(u, i) for u, i, _ in rows] == list(
        zip(uuids, range(INTEGER_MAX - 2, INTEGER_MAX + 1), strict=True)
    )
    assert {round(float(last)) for _, _, last in rows} == {1_500}


async def test_migration_restarts_the_sequences_past_the_ids_in_use(fresh_database_url):
    pool = await create_pool(fresh_database_url, maxsize=2)
    try:
        assert await migrate(pool, target=2) == [1, 2]
        samples = read_samples(CSV_PATH)[:10]
        async with transaction(pool) as cur:
            # An older schema's data: two streams, ten GPUs, and sequences that ran ahead.
            await cur.execute("INSERT INTO streams (name, next_seq) VALUES ('a', 10), ('b', 0)")
            await upsert_gpus(cur, sightings(samples, 1_000))
            await cur.execute(
                "SELECT setval(pg_get_serial_sequence('streams', 'id'), 30000),"
                " setval(pg_get_serial_sequence('gpus', 'id'), 2000000000)"
            )
            encoded = [WireTemplate(s).encode(b'"a"', i, 1_000) for i, s in enumerate(samples)]
            assert await insert_old_schema(cur, encoded) == 10
        applied = await migrate(pool)
        assert applied[0] == 3
        async with transaction(pool) as cur:
            c = await claim(cur, "c", 5, owner="me")
            assert c is not None and c.stream_id == 3
            a = await claim(cur, "a", 5, owner="me")
            assert a is not None and a.start == 10
            await upsert_gpus(cur, sightings(read_samples(CSV_PATH)[10:20], 2_000))  # ten more
            await cur.execute("SELECT max(id) FROM gpus")
            assert (await cur.fetchone())[0] == 20
            await cur.execute(
                "SELECT count(*) FROM telemetry t JOIN streams s ON s.id = t.stream_id"
                " JOIN gpus g ON g.id = t.gpu_id WHERE s.name = 'a'"
            )
            assert (await cur.fetchone())[0] == 10
    finally:
        pool.close()
        await pool.wait_closed()


async def test_concurrent_gpu_upserts_neither_deadlock_nor_duplicate(db):
    every = sightings(read_samples(CSV_PATH), 0)
    rounds = []
    for i in range(8):
        # Overlapping sets in different orders; half of the GPUs are new to the first rounds.
        mine = every[: 120 + 16 * i] if i % 2 else every[-(120 + 16 * i) :]
        rounds.append([dataclasses.replace(s, last_us=i) for s in reversed(mine)])

    async def one(batch) -> None:
        async with transaction(db) as cur:
            await upsert_gpus(cur, batch)

    async def counts() -> tuple[int, int, int]:
        async with transaction(db) as cur:
            await cur.execute("SELECT count(*), count(DISTINCT uuid), max(id) FROM gpus")
            return tuple(await cur.fetchone())

    await asyncio.wait_for(asyncio.gather(*(one(b) for _ in range(2) for b in rounds)), 60)
    rows, distinct, top = await counts()
    assert rows == distinct == 247
    # Two first inserts of one GPU racing spend an id once; known GPUs spend none.
    await asyncio.wait_for(asyncio.gather(*(one(b) for _ in range(2) for b in rounds)), 60)
    assert await counts() == (247, 247, top)

"""Streamer replicas sharing one stream, against a real broker process and PostgreSQL."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from prometheus_client import CollectorRegistry
from telemetry_devstack import ServiceProcess
from telemetry_model import decode, read_samples
from telemetry_mq import BrokerClient
from telemetry_store import (
    GpuSighting,
    claim,
    ensure_streams,
    insert_datapoints,
    pending_chunks,
    transaction,
    upsert_gpus,
)
from telemetry_streamer.metrics import StreamerMetrics
from telemetry_streamer.replay import Replayer, prepare

from conftest import CSV_PATH
from tests.helpers import wait_for

ROWS = 2470


async def test_two_replicas_publish_every_sequence_number_once(broker, db):
    rows = prepare(read_samples(CSV_PATH))
    registry = CollectorRegistry()
    metrics = StreamerMetrics.create(registry)
    stop = asyncio.Event()
    async with BrokerClient(broker.url) as mq:
        replicas = [
            Replayer(
                rows=rows,
                stream="shared",
                topic="t",
                partitions=4,
                pool=db,
                broker=mq,
                metrics=metrics,
                chunk_size=250,
                batch_size=100,
                rate=0,
                loops=1,
            )
            for _ in range(2)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.run(stop) for r in replicas)), timeout=60)
        assert all(r.finished and r.healthy for r in replicas)

        seen: list[int] = []
        while batch := await mq.fetch("t", "check", max_records=1000, max_wait=0.5):
            for record in batch.records:
                dp = decode(record.value)
                assert record.key == dp.gpu.uuid
                seen.append(dp.seq)
            await mq.ack(batch)
    assert sorted(seen) == list(range(ROWS))
    assert (
        registry.get_sample_value("telemetry_streamer_datapoints_published_total", {"topic": "t"})
        == ROWS
    )
    assert registry.get_sample_value("telemetry_streamer_claims_total") >= ROWS / 250


async def test_a_stopped_replica_finishes_its_claimed_chunk(broker, db):
    rows = prepare(read_samples(CSV_PATH))
    metrics = StreamerMetrics.create(CollectorRegistry())
    stop = asyncio.Event()
    async with BrokerClient(broker.url) as mq:
        replica = Replayer(
            rows=rows,
            stream="s",
            topic="t",
            partitions=2,
            pool=db,
            broker=mq,
            metrics=metrics,
            chunk_size=500,
            batch_size=100,
            rate=2000,
        )
        await mq.create_topic("t", partitions=2)
        task = asyncio.create_task(replica.run(stop))
        first = await mq.fetch("t", "g", max_records=1, max_wait=10)
        assert first is not None
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        seqs = []
        while batch := await mq.fetch("t", "g2", max_records=1000, max_wait=0.5):
            seqs += [orjson.loads(r.value)["seq"] for r in batch.records]
            await mq.ack(batch)
    # Whole chunks only: the stream has no hole below what was published.
    assert sorted(seqs) == list(range(len(seqs)))
    assert len(seqs) % 500 == 0


async def test_a_chunk_left_by_a_killed_streamer_is_taken_over_without_a_gap(
    broker, db, fresh_database_url
):
    samples = read_samples(CSV_PATH)
    dead = ServiceProcess(
        "streamer",
        "telemetry_streamer",
        prefix="STREAMER",
        env={
            "STREAMER_DATABASE_URL": fresh_database_url,
            "STREAMER_BROKER_URL": broker.url,
            "STREAMER_TOPIC": "t",
            "STREAMER_PARTITIONS": "2",
            "STREAMER_STREAM": "s",
            "STREAMER_RATE": "400",  # 2.5 ms between the datapoints of a chunk
            "STREAMER_CHUNK_SIZE": "1000",
            "STREAMER_BATCH_SIZE": "50",
            "STREAMER_CHUNK_LEASE": "2",
            "STREAMER_LOOPS": "1",
            "STREAMER_MIGRATE": "false",
            "STREAMER_LOG_FORMAT": "json",
        },
        sink=None,
    )
    registry = CollectorRegistry()
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic("t", partitions=2)
        await dead.start()
        try:
            first = await mq.fetch("t", "probe", max_records=1, max_wait=30)
            assert first is not None, "\n".join(dead.lines[-20:])
        finally:
            dead.kill()  # SIGKILL: no release, no cleanup; the lease has to run out
            await dead.wait()
        async with db.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT start, count, owner FROM stream_chunks")
            [(start, count, owner)] = await cur.fetchall()
        assert (start, count) == (0, 1000) and str(dead.pid) in owner

        replica = Replayer(
            rows=prepare(samples),
            stream="s",
            topic="t",
            partitions=2,
            pool=db,
            broker=mq,
            metrics=StreamerMetrics.create(registry),
            chunk_size=1000,
            batch_size=100,
            rate=0,  # no tick: this replica's own chunks have one time each
            loops=1,
            lease=2,
        )
        await asyncio.wait_for(replica.run(asyncio.Event()), timeout=60)
        assert replica.finished

        records: dict[int, set[bytes]] = {}
        while batch := await mq.fetch("t", "check", max_records=1000, max_wait=0.5):
            for record in batch.records:
                records.setdefault(decode(record.value).seq, set()).add(record.value)
            await mq.ack(batch)

    # Every seq once: the dead streamer's chunk was published again by the live one, and
    # each seq it had sent already came again byte for byte (same time, same everything).
    assert sorted(records) == list(range(ROWS))
    assert all(len(versions) == 1 for versions in records.values())
    points = {seq: decode(next(iter(v))) for seq, v in records.items()}
    assert all(
        (p.metric, p.value, p.gpu) == (samples[s].metric, samples[s].value, samples[s].gpu)
        for s, p in points.items()
    )
    # The taken-over chunk kept the dead streamer's times: 2.5 ms apart from its claim on.
    base = points[0].ts_us
    assert [points[s].ts_us - base for s in range(0, 1000, 250)] == [
        0,
        625_000,
        1_250_000,
        1_875_000,
    ]
    assert len({points[s].ts_us for s in range(1000, ROWS)}) == 2  # two chunks, one time each
    assert registry.get_sample_value("telemetry_streamer_chunk_takeovers_total") == 1

    # Stored through the collector's write path, duplicates included: one row per seq.
    encoded = [value for versions in records.values() for value in versions]
    encoded += [value for seq, versions in records.items() if seq < 1000 for value in versions]
    async with transaction(db) as cur:
        await ensure_streams(cur, ["s"])
        await upsert_gpus(
            cur,
            [
                GpuSighting(
                    g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, base, base
                )
                for g in {p.gpu for p in points.values()}
            ],
        )
        assert await insert_datapoints(cur, encoded) == ROWS
        await cur.execute("SELECT count(*), count(DISTINCT seq) FROM telemetry")
        assert await cur.fetchone() == (ROWS, ROWS)
        assert await pending_chunks(cur, "s") == 0


def replayer(db, mq, registry, **overrides) -> Replayer:
    options = {
        "rows": prepare(read_samples(CSV_PATH)),
        "stream": "s",
        "topic": "t",
        "partitions": 2,
        "pool": db,
        "broker": mq,
        "metrics": StreamerMetrics.create(registry),
        "chunk_size": 1000,
        "batch_size": 50,
        "rate": 200,
        "lease": 30,
    }
    return Replayer(**(options | overrides))


async def chunks(db) -> list[tuple[int, str, bool]]:
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT start, owner, lease_until = '-infinity' FROM stream_chunks ORDER BY start"
        )
        return list(await cur.fetchall())


async def test_a_graceful_stop_with_the_broker_away_hands_the_chunk_on_at_once(broker, db):
    registry = CollectorRegistry()
    stop = asyncio.Event()
    async with BrokerClient(broker.url, max_retries=1) as mq:
        await mq.create_topic("t", partitions=2)
        replica = replayer(db, mq, registry)
        task = asyncio.create_task(replica.run(stop))
        assert await mq.fetch("t", "probe", max_records=1, max_wait=30) is not None
        broker.kill()  # the broker is gone through the whole shutdown
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    assert await chunks(db) == [(0, replica.owner, True)]  # released, not finished
    async with transaction(db) as cur:
        taken = await claim(cur, "s", 1000, owner="next")
    assert taken is not None and (taken.start, taken.takeover) == (0, True)


async def test_a_replica_whose_chunk_was_taken_over_leaves_it_to_the_new_owner(broker, db):
    registry = CollectorRegistry()
    stop = asyncio.Event()
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic("t", partitions=2)
        replica = replayer(db, mq, registry, lease=0.6)  # renewed every 0.2 s
        task = asyncio.create_task(replica.run(stop))
        assert await mq.fetch("t", "probe", max_records=1, max_wait=30) is not None
        # As if this replica had been cut off for longer than its lease: another takes over.
        async with transaction(db) as cur:
            await cur.execute("UPDATE stream_chunks SET lease_until = now() - interval '1 s'")
            taken = await claim(cur, "s", 1000, owner="thief", lease=60)
        assert taken is not None and (taken.start, taken.takeover) == (0, True)

        async def lost() -> bool:
            return registry.get_sample_value("telemetry_streamer_chunk_leases_lost_total") == 1

        await wait_for(lost, timeout=30, what="the replica to notice the lost lease")
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    # The thief's chunk is the thief's; the replica went on with (and finished) the next one.
    assert await chunks(db) == [(0, "thief", False)]
    assert registry.get_sample_value("telemetry_streamer_claims_total") >= 2


async def test_a_replica_cancelled_mid_chunk_hands_it_on(broker, db):
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic("t", partitions=2)
        replica = replayer(db, mq, CollectorRegistry())
        task = asyncio.create_task(replica.run(asyncio.Event()))
        assert await mq.fetch("t", "probe", max_records=1, max_wait=30) is not None
        task.cancel()  # what the shutdown does to a task past its timeout
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await chunks(db) == [(0, replica.owner, True)]

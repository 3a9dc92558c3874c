"""Records outside the data's domain never reach PostgreSQL through the collector: the decoder
refuses them (to the dead-letter topic, with the reason) and the good records are stored."""

from __future__ import annotations

import time

import orjson
from prometheus_client import CollectorRegistry
from telemetry_collector.consume import Consumer
from telemetry_collector.metrics import CollectorMetrics
from telemetry_model import WireTemplate, read_samples
from telemetry_mq import BrokerClient

from conftest import CSV_PATH

TOPIC = "telemetry"


async def test_a_far_future_timestamp_is_dead_lettered_not_stored(broker, db):
    samples = read_samples(CSV_PATH)[:20]
    now_us = time.time_ns() // 1000
    stream = orjson.dumps("domain")
    records = [
        (s.gpu.uuid, WireTemplate(s).encode(stream, seq, now_us)) for seq, s in enumerate(samples)
    ]
    year_20983 = 600_000_000_000_000_000
    two_days = now_us + 2 * 86_400_000_000
    records[5] = (records[5][0], WireTemplate(samples[5]).encode(stream, 5, year_20983))
    records[9] = (records[9][0], WireTemplate(samples[9]).encode(stream, 9, two_days))
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic(TOPIC, partitions=1)
        await mq.publish(TOPIC, records)
        consumer = Consumer(
            broker=mq,
            pool=db,
            metrics=CollectorMetrics.create(CollectorRegistry()),
            topic=TOPIC,
            group="collectors",
            batch_size=100,
            max_wait=0.5,
            ack_wait=30.0,
        )
        batch = await mq.fetch(TOPIC, "collectors", max_records=100, max_wait=5.0)
        assert batch is not None and len(batch.records) == 20
        assert await consumer.handle(batch)
        dead = await mq.fetch(f"{TOPIC}.dlq", "inspect", max_records=10, max_wait=5.0)
    assert dead is not None
    letters = sorted((orjson.loads(r.value) for r in dead.records), key=lambda d: d["value"]["seq"])
    assert [d["value"]["seq"] for d in letters] == [5, 9]
    assert "'ts' must be an integer from 0 to" in letters[0]["error"]
    assert "s ahead of the clock (at most 86400 s)" in letters[1]["error"]
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT seq FROM telemetry ORDER BY seq")
        assert [row[0] for row in await cur.fetchall()] == [s for s in range(20) if s not in (5, 9)]
        await cur.execute("SELECT max(last_seen) < now() + interval '1 day' FROM gpus")
        assert (await cur.fetchone())[0] is True


async def test_the_collector_s_future_skew_is_its_setting(broker, db):
    samples = read_samples(CSV_PATH)[:2]
    stream = orjson.dumps("skew")
    two_days = time.time_ns() // 1000 + 2 * 86_400_000_000
    records = [
        (s.gpu.uuid, WireTemplate(s).encode(stream, i, two_days)) for i, s in enumerate(samples)
    ]
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic(TOPIC, partitions=1)
        await mq.publish(TOPIC, records)
        consumer = Consumer(
            broker=mq,
            pool=db,
            metrics=CollectorMetrics.create(CollectorRegistry()),
            topic=TOPIC,
            group="collectors",
            batch_size=100,
            max_wait=0.5,
            ack_wait=30.0,
            max_future_skew=3 * 86_400.0,  # COLLECTOR_MAX_FUTURE_SKEW=259200
        )
        batch = await mq.fetch(TOPIC, "collectors", max_records=100, max_wait=5.0)
        assert batch is not None
        assert await consumer.handle(batch)
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM telemetry")
        assert (await cur.fetchone())[0] == 2

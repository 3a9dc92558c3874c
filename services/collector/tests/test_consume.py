"""The collector's worker against a real broker process and a real PostgreSQL."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry
from telemetry_collector.consume import Consumer
from telemetry_collector.metrics import CollectorMetrics
from telemetry_model import WireTemplate, read_samples
from telemetry_mq import BrokerClient

from conftest import CSV_PATH

TOPIC = "telemetry"
GROUP = "collectors"


@pytest.fixture
async def mq(broker):
    async with BrokerClient(broker.url) as client:
        await client.create_topic(TOPIC, partitions=1)
        yield client


@pytest.fixture
def consumer_factory(mq, db):
    def make() -> tuple[Consumer, CollectorRegistry]:
        registry = CollectorRegistry()
        consumer = Consumer(
            broker=mq,
            pool=db,
            metrics=CollectorMetrics.create(registry),
            topic=TOPIC,
            group=GROUP,
            batch_size=1000,
            max_wait=0.5,
            ack_wait=30.0,
        )
        return consumer, registry

    return make


def records(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    samples = read_samples(CSV_PATH)
    stream = orjson.dumps("test")
    out = []
    for seq in range(start, start + n):
        s = samples[seq % len(samples)]
        out.append((s.gpu.uuid, WireTemplate(s).encode(stream, seq, 1_700_000_000_000_000 + seq)))
    return out


async def count(db) -> int:
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM telemetry")
        return int((await cur.fetchone())[0])


async def test_batch_is_stored_then_acked(mq, db, consumer_factory):
    consumer, registry = consumer_factory()
    await mq.publish(TOPIC, records(300))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and len(batch.records) == 300
    assert await consumer.handle(batch)
    assert await count(db) == 300
    assert (
        registry.get_sample_value("telemetry_collector_datapoints_stored_total", {"topic": TOPIC})
        == 300
    )
    # Stored and committed; the ack rides on the next fetch, which then finds nothing left.
    assert await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=0.2, ack=batch) is None


async def test_invalid_records_go_to_the_dead_letter_topic(mq, db, consumer_factory):
    consumer, registry = consumer_factory()
    good = records(10)
    bad = [("GPU-x", b'{"not": "a datapoint"}'), ("GPU-y", b'"just a string"')]
    await mq.publish(TOPIC, good[:5] + bad + good[5:])
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None
    assert await consumer.handle(batch)
    assert await count(db) == 10
    assert (
        registry.get_sample_value("telemetry_collector_datapoints_rejected_total", {"topic": TOPIC})
        == 2
    )
    dead = await mq.fetch(f"{TOPIC}.dlq", "inspect", max_records=10, max_wait=2.0)
    assert dead is not None and len(dead.records) == 2
    assert await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=0.2, ack=batch) is None


async def test_redelivered_datapoints_are_not_stored_twice(mq, db, consumer_factory):
    consumer, registry = consumer_factory()
    await mq.publish(TOPIC, records(40))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert await consumer.handle(batch)
    await mq.publish(TOPIC, records(40))  # the same datapoints published again
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0, ack=batch)
    assert batch is not None and len(batch.records) == 40
    assert await consumer.handle(batch)
    assert await count(db) == 40
    assert (
        registry.get_sample_value(
            "telemetry_collector_datapoints_duplicate_total", {"topic": TOPIC}
        )
        == 40
    )


async def test_batches_of_several_partitions_are_stored_together(mq, db):
    registry = CollectorRegistry()
    consumer = Consumer(
        broker=mq,
        pool=db,
        metrics=CollectorMetrics.create(registry),
        topic="multi",
        group=GROUP,
        batch_size=1000,
        max_wait=0.5,
        ack_wait=30.0,
    )
    await mq.create_topic("multi", partitions=4)
    await mq.publish("multi", records(200))
    batches = await mq.fetch_many("multi", GROUP, max_records=1000, max_wait=2.0)
    assert len(batches) > 1 and sum(len(b.records) for b in batches) == 200
    assert await consumer.handle(*batches)
    assert await count(db) == 200
    assert registry.get_sample_value(
        "telemetry_collector_batches_total",
        {"topic": "multi", "consumer_group": GROUP, "outcome": "stored"},
    ) == len(batches)
    assert await mq.fetch_many("multi", GROUP, max_wait=0.2, ack=batches) == []


async def test_datapoints_past_the_horizon_are_acked_not_stored_and_late_ones_marked(
    mq, db, consumer_factory
):
    # records() stamps times from 1_700_000_000 s on: put the raw retention's horizon after the
    # first 100 and the rollups' sealed minute after all of them.
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "UPDATE telemetry_bounds SET accept_from = 'epoch'::timestamptz"
            " + (1700000000000000 + 100) * interval '1 microsecond',"
            " sealed_to = 'epoch'::timestamptz + 1800000000 * interval '1 second'"
        )
    consumer, registry = consumer_factory()
    await mq.publish(TOPIC, records(300))
    batch = await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=2.0)
    assert batch is not None and await consumer.handle(batch)
    assert await count(db) == 200

    def sample(name: str) -> float | None:
        return registry.get_sample_value(
            f"telemetry_collector_datapoints_{name}_total", {"topic": TOPIC}
        )

    assert (sample("stored"), sample("expired"), sample("duplicate"), sample("late")) == (
        200, 100, 0, 200,
    )  # fmt: skip
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(DISTINCT minute) FROM telemetry_late")
        assert (await cur.fetchone())[0] == 1  # 200 datapoints a microsecond apart: one minute
    # Acked like any stored batch: nothing comes back.
    assert await mq.fetch(TOPIC, GROUP, max_records=1000, max_wait=0.2, ack=batch) is None

"""Streamer replicas sharing one stream, against a real broker process and PostgreSQL."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import CollectorRegistry
from telemetry_model import decode, read_samples
from telemetry_mq import BrokerClient
from telemetry_streamer.metrics import StreamerMetrics
from telemetry_streamer.replay import Replayer, prepare

from conftest import CSV_PATH

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

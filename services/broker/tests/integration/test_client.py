"""The client against a real broker process: the API, typed errors, retries, SIGTERM."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import orjson
import pytest
from telemetry_devstack import refused_port
from telemetry_mq import (
    BacklogFullError,
    Batch,
    BrokerClient,
    BrokerUnavailableError,
    LeaseExpiredError,
    MQError,
    ProtocolError,
    RequestTooLargeError,
    TopicNotFoundError,
    UnauthorizedError,
)

from .conftest import StartBroker


async def test_client_api_end_to_end(start_broker: StartBroker) -> None:
    proc = await start_broker(BROKER_TOKEN="s3cret", BROKER_MAX_REQUEST_BYTES="65536")
    async with BrokerClient(proc.url, token="s3cret") as mq:
        assert (await mq.create_topic("jobs", partitions=2))["partitions"] == 2
        assert (await mq.create_topic("jobs", partitions=16))["partitions"] == 2  # idempotent
        values = [orjson.dumps({"n": i, "s": "é\n"}) for i in range(6)]
        positions = await mq.publish("jobs", [(f"k{i}", v) for i, v in enumerate(values)])
        assert len(positions) == 6 and {p for p, _ in positions} <= {0, 1}

        got: dict[bytes, int] = {}
        while (batch := await mq.fetch("jobs", "workers", max_records=2, max_wait=0)) is not None:
            assert batch.topic == "jobs" and batch.group == "workers"
            first = batch.records[0]
            if first.delivery_count == 1:
                assert await mq.extend(batch, ack_wait=60) == 60
                assert await mq.nack(batch, offsets=[first.offset], error="retry me") == 1
            if first.delivery_count == 1 and len(batch.records) > 1:
                await mq.reject(batch, offsets=[batch.records[1].offset], error="invalid")
            if first.delivery_count == 1 and len(batch.records) > 2:
                released = batch.records[2].offset
                assert await mq.release(batch, offsets=[released], delay=0) == 1
            acked = await mq.ack(batch)
            for d in batch.records:
                got[d.value] = max(got.get(d.value, 0), d.delivery_count)
            assert acked <= len(batch.records)
            with pytest.raises(LeaseExpiredError):
                await mq.ack(replace(batch, lease="x-1"))
        assert set(got) == set(values)
        stats = await mq.topic_stats("jobs")
        assert stats["groups"][0]["lag"] == 0
        dead = await mq.fetch("jobs.dlq", "ops", max_wait=0)
        assert dead is not None and orjson.loads(dead.records[0].value)["error"] == "invalid"

        with pytest.raises(TopicNotFoundError):
            await mq.publish("nope", [("k", b"1")])
        with pytest.raises(RequestTooLargeError):
            await mq.publish("jobs", [("k", orjson.dumps("x" * 70_000))])
        with pytest.raises(ProtocolError):
            await mq.fetch("jobs", "bad group")

    async with BrokerClient(proc.url) as anonymous:
        with pytest.raises(UnauthorizedError):
            await anonymous.publish("jobs", [("k", b"1")])

    assert await proc.stop() == 0  # SIGTERM: drain, fsync, exit 0
    assert any('"broker closed"' in line for line in proc.lines)


async def test_publish_retries_429_after_retry_after(start_broker: StartBroker) -> None:
    proc = await start_broker(BROKER_MAX_BACKLOG_BYTES="4096")
    big = [(f"k{i}", orjson.dumps("x" * 200)) for i in range(30)]
    async with BrokerClient(proc.url, max_retries=0) as strict:
        await strict.publish("telemetry", big)
        with pytest.raises(BacklogFullError) as info:
            await strict.publish("telemetry", big)
        assert info.value.retry_after == 1.0 and info.value.limit == 4096

    async with BrokerClient(proc.url, max_retries=5, backoff=0.01) as mq:
        started = time.monotonic()
        retrying = asyncio.create_task(mq.publish("telemetry", big[:1]))
        drained = 0
        while drained < 30:  # consuming makes room; the retried publish then gets through
            batch = await mq.fetch("telemetry", "g", max_wait=1)
            if batch is not None:
                await mq.ack(batch)
                drained += len(batch.records)
        assert len(await asyncio.wait_for(retrying, 30)) == 1
        assert time.monotonic() - started >= 0.9  # it honoured Retry-After: 1


async def test_unreachable_broker_raises_after_retries() -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        async with BrokerClient(url, max_retries=2, backoff=0.01, max_backoff=0.02) as mq:
            with pytest.raises(BrokerUnavailableError):
                await mq.publish("telemetry", [("k", b"1")])
            with pytest.raises(BrokerUnavailableError):
                await mq.fetch("telemetry", "g", max_wait=0)


async def test_fetch_acks_the_previous_batch_in_the_same_round_trip(
    start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    proc = await start_broker(BROKER_ACK_WAIT="30")
    async with BrokerClient(proc.url) as mq:
        await mq.publish("telemetry", [(f"k{i}", orjson.dumps(i)) for i in range(20)])
        seen: list[int] = []
        batch = await mq.fetch("telemetry", "g", max_records=3, max_wait=0)
        while batch is not None:
            seen.extend(orjson.loads(d.value) for d in batch.records)
            batch = await mq.fetch("telemetry", "g", max_records=3, max_wait=0, ack=batch)
        assert sorted(seen) == list(range(20))
        stats = await mq.topic_stats("telemetry")
        assert stats["groups"][0]["lag"] == 0 and stats["groups"][0]["in_flight"] == 0

        await mq.publish("telemetry", [("k", b"1")])
        gone = replace(await _fetch(mq), lease="gone-1")
        with caplog.at_level("WARNING", "telemetry_mq.client"):
            assert await mq.fetch("telemetry", "g", max_wait=0, ack=gone) is None  # not raised
        assert "gone-1" in caplog.text
        with pytest.raises(ValueError, match="cannot ack"):
            await mq.fetch("telemetry", "other", ack=gone)


async def test_fetch_many_leases_several_partitions(start_broker: StartBroker) -> None:
    proc = await start_broker(BROKER_ACK_WAIT="30")
    async with BrokerClient(proc.url) as mq:
        values = [orjson.dumps({"n": i, "s": "é\n"}) for i in range(40)]
        await mq.publish("telemetry", [(f"k{i}", v) for i, v in enumerate(values)])
        batches = await mq.fetch_many("telemetry", "g", max_records=15, max_wait=0)
        assert len(batches) >= 2 and sum(len(b.records) for b in batches) == 15
        assert len({b.partition for b in batches}) == len(batches)
        assert len({b.lease for b in batches}) == len(batches)
        # Each batch is its own lease: nack one, ack the others with the next fetch.
        assert await mq.nack(batches[0]) == len(batches[0].records)
        seen = [d.value for b in batches[1:] for d in b.records]
        done = batches[1:]
        while batches := await mq.fetch_many(
            "telemetry", "g", max_records=15, max_wait=0, ack=done
        ):
            seen.extend(d.value for b in batches for d in b.records)
            done = batches
        assert sorted(seen, key=lambda v: orjson.loads(v)["n"]) == values  # the exact bytes
        stats = await mq.topic_stats("telemetry")
        assert stats["groups"][0]["lag"] == 0 and stats["groups"][0]["in_flight"] == 0

        started = time.monotonic()
        assert await mq.fetch_many("telemetry", "g", max_wait=0.2) == []
        assert time.monotonic() - started >= 0.15
        with pytest.raises(ValueError, match="cannot ack"):
            await mq.fetch_many("telemetry", "other", ack=done)


async def _fetch(mq: BrokerClient) -> Batch:
    batch = await mq.fetch("telemetry", "g", max_wait=5)
    assert batch is not None
    return batch


async def test_sigterm_ends_open_long_polls_at_once(start_broker: StartBroker) -> None:
    # Without draining, Hypercorn would wait up to 30 s for the 25 s long-poll to end.
    proc = await start_broker(BROKER_GRACEFUL_TIMEOUT="30")
    async with BrokerClient(proc.url, max_retries=0) as mq:
        waiting = asyncio.create_task(mq.fetch("telemetry", "g", max_wait=25))
        async with asyncio.timeout(10):
            while True:  # the group exists once the fetch is inside the broker, waiting
                try:
                    if (await mq.topic_stats("telemetry"))["groups"]:
                        break
                except MQError:
                    pass
                await asyncio.sleep(0.05)
        assert await proc.stop(timeout=10) == 0  # exits on its own, not killed after 10 s
        assert await asyncio.wait_for(waiting, 5) is None  # the long-poll answered 204

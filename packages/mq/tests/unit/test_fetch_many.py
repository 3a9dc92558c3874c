"""``Broker.fetch_many``: one lease per partition, round robin, within the record/byte budget."""

from __future__ import annotations

import asyncio
import time

import orjson
from telemetry_mq import Batch, Broker

from ..conftest import Clock, OpenBroker


def value(i: int) -> bytes:
    return orjson.dumps({"i": i})


def ids(batches: list[Batch]) -> list[int]:
    return sorted(orjson.loads(d.value)["i"] for b in batches for d in b.records)


async def four_partitions(open_broker: OpenBroker, per_partition: int = 3) -> Broker:
    """A topic ``t`` of 4 partitions with ``per_partition`` records in each (ids 0..)."""
    b = await open_broker()
    await b.create_topic("t", 4)
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < 4:  # one key per partition
        keys.setdefault((await b.publish("t", [(f"k{i}", value(-1))]))[0][0], f"k{i}")
        i += 1
    g = await b.fetch_many("t", "g", max_records=100)  # consume the probes
    assert len(g) == 4
    for batch in g:
        await b.ack("t", "g", batch.lease)
    records = [
        (keys[p], value(p * per_partition + j)) for p in range(4) for j in range(per_partition)
    ]
    await b.publish("t", records)
    return b


async def test_fetch_many_takes_from_several_partitions(open_broker: OpenBroker) -> None:
    b = await four_partitions(open_broker)
    batches = await b.fetch_many("t", "g", max_records=100)
    assert sorted(batch.partition for batch in batches) == [0, 1, 2, 3]
    assert len({batch.lease for batch in batches}) == 4
    assert ids(batches) == list(range(12))
    assert all(d.delivery_count == 1 for batch in batches for d in batch.records)
    assert await b.fetch_many("t", "g", max_records=100) == []
    assert b.group_stats("t", "g").in_flight == 12


async def test_fetch_many_is_round_robin_from_where_fetch_left_off(
    open_broker: OpenBroker,
) -> None:
    b = await four_partitions(open_broker)
    first = await b.fetch("t", "g", max_records=100)
    assert first is not None
    batches = await b.fetch_many("t", "g", max_records=100)
    expected = [(first.partition + i) % 4 for i in range(1, 4)]
    assert [batch.partition for batch in batches] == expected


async def test_fetch_many_respects_max_records(open_broker: OpenBroker) -> None:
    b = await four_partitions(open_broker)
    batches = await b.fetch_many("t", "g", max_records=5)
    assert [len(batch.records) for batch in batches] == [3, 2]
    rest = await b.fetch_many("t", "g", max_records=100)
    assert ids(batches + rest) == list(range(12))


async def test_fetch_many_respects_max_bytes(open_broker: OpenBroker) -> None:
    b = await four_partitions(open_broker)
    # A frame here is 26 bytes of header + a 2-byte key + a ~8-byte value: ~36 bytes.
    batches = await b.fetch_many("t", "g", max_records=100, max_bytes=150)
    assert 1 <= len(batches) < 4
    assert sum(len(batch.records) for batch in batches) <= 5  # about 150 bytes (+1 record)
    rest = await b.fetch_many("t", "g", max_records=100)
    assert ids(batches + rest) == list(range(12))


async def test_each_batch_is_acked_or_nacked_on_its_own(
    open_broker: OpenBroker, clock: Clock
) -> None:
    b = await four_partitions(open_broker)
    batches = await b.fetch_many("t", "g", max_records=100)
    acked, nacked, expiring, extended = batches
    assert await b.ack("t", "g", acked.lease) == 3
    assert await b.nack("t", "g", nacked.lease) == 3
    await b.extend("t", "g", extended.lease, 120)
    clock.advance(60)  # past the default ack_wait: ``expiring`` expires, ``extended`` not
    again = await b.fetch_many("t", "g", max_records=100)
    assert sorted(batch.partition for batch in again) == sorted(
        [nacked.partition, expiring.partition]
    )
    assert all(d.delivery_count == 2 for batch in again for d in batch.records)
    n, expired = await b.ack_leases("t", "g", [batch.lease for batch in again])
    assert (n, expired) == (6, [])
    assert await b.ack("t", "g", extended.lease) == 3
    assert b.group_stats("t", "g").lag == 0


async def test_fetch_many_long_poll(open_broker: OpenBroker) -> None:
    b = await four_partitions(open_broker, per_partition=0)
    started = time.monotonic()
    assert await b.fetch_many("t", "g", max_wait=0.1) == []
    assert time.monotonic() - started >= 0.09
    waiting = asyncio.create_task(b.fetch_many("t", "g", max_wait=5))
    await asyncio.sleep(0.05)
    await b.publish("t", [("x", value(7))])
    assert ids(await asyncio.wait_for(waiting, 2)) == [7]
    waiting = asyncio.create_task(b.fetch_many("t", "g", max_wait=5))
    await asyncio.sleep(0.05)
    b.drain()
    assert await asyncio.wait_for(waiting, 2) == []
    assert await b.fetch_many("t", "g") == []

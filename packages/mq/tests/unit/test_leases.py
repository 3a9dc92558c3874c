"""Leases under faults: dead-lettering that fails or is cancelled, ack durability, the byte
budget of redeliveries, committed offsets at recovery, a closed broker, the waiter queue."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import orjson
import pytest
from telemetry_mq import (
    DLQ_SUFFIX,
    Batch,
    Broker,
    BrokerUnavailableError,
    DeadLetterError,
    StorageError,
)
from telemetry_mq.protocol import FRAME_OVERHEAD, partition_for
from telemetry_mq.topic import ROUTE_CACHE_BYTES, Waiters

from ..conftest import Clock, OpenBroker


def value(i: int, pad: int = 0) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * pad})


def ids(batch: Batch | None) -> list[int]:
    assert batch is not None
    return [orjson.loads(d.value)["i"] for d in batch.records]


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def two_partitions(open_broker: OpenBroker, n: int, **config: object) -> Broker:
    """A topic "t" of 2 partitions with records in both."""
    b = await open_broker(**config)
    await b.create_topic("t", 2)
    positions = await b.publish("t", [(f"k{i}", value(i)) for i in range(n)])
    assert {p for p, _ in positions} == {0, 1}
    return b


def redeliverable(b: Broker) -> int:
    return sum(p.redeliverable for p in b.group_stats("t", "g").partitions)


def block_dead_letter_topic(tmp_path: Path) -> Path:
    """A file where the dead-letter topic's directory must go: creating it fails (ENOTDIR)."""
    blocker = data_dir(tmp_path) / "topics" / f"t{DLQ_SUFFIX}"
    blocker.write_bytes(b"not a directory")
    return blocker


# -- defect 4: dead-lettering strands nothing ---------------------------------------------------


async def test_a_cancelled_dead_letter_publish_strands_no_batch(
    open_broker: OpenBroker, clock: Clock
) -> None:
    b = await two_partitions(open_broker, 10, max_deliveries=1)
    leased = await b.fetch_many("t", "g", ack_wait=1)
    assert len(leased) == 2  # a lease on each partition
    clock.advance(2)  # both expire past max deliveries: two dead batches
    fetching = asyncio.create_task(b.fetch("t", "g"))
    await asyncio.sleep(0)  # the fetch is dead-lettering now (creating the dead-letter topic)
    fetching.cancel()  # its client went away
    with pytest.raises(asyncio.CancelledError):
        await fetching
    # Every record of both batches is ready again: none left ready, leased and done.
    assert redeliverable(b) == 10
    again = await b.fetch_many("t", "g", ack_wait=1)
    assert sorted(i for batch in again for i in ids(batch)) == list(range(10))
    # The next delivery is the last one again, not one past the maximum.
    assert {d.delivery_count for batch in again for d in batch.records} == {1}
    clock.advance(2)
    await b.maintain()
    assert b.group_stats("t", "g").lag == 0  # all dead-lettered now
    dead = await b.fetch(f"t{DLQ_SUFFIX}", "ops", max_records=100)
    assert dead is not None
    assert sorted(orjson.loads(d.value)["value"]["i"] for d in dead.records) == list(range(10))


async def test_a_failed_dead_letter_publish_restores_every_batch(
    open_broker: OpenBroker, clock: Clock, tmp_path: Path
) -> None:
    b = await two_partitions(open_broker, 10, max_deliveries=2)
    for _ in range(2):
        assert len(await b.fetch_many("t", "g", ack_wait=1)) == 2
        clock.advance(2)
    blocker = block_dead_letter_topic(tmp_path)
    await b.maintain()  # the second expiry dead-letters: the topic cannot be created
    assert redeliverable(b) == 10
    again = await b.fetch_many("t", "g", ack_wait=1)
    assert sorted(i for batch in again for i in ids(batch)) == list(range(10))
    assert {d.delivery_count for batch in again for d in batch.records} == {2}  # not 3
    blocker.unlink()
    clock.advance(2)
    await b.maintain()
    assert b.group_stats("t", "g").lag == 0


async def test_reject_reports_a_failed_dead_letter_and_wakes_waiting_fetches(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(3)])
    batch = await b.fetch("t", "g")
    assert batch is not None
    waiting = asyncio.create_task(b.fetch("t", "g", max_wait=30))
    await asyncio.sleep(0)  # it found nothing and waits
    assert not waiting.done()
    block_dead_letter_topic(tmp_path)
    with pytest.raises(DeadLetterError):
        await b.reject("t", "g", batch.lease, [1], error="bad record")
    got = await asyncio.wait_for(waiting, 5)  # woken by the restore, not after 30 s
    assert ids(got) == [1]
    assert b.group_stats("t", "g").partitions[0].committed == 0


# -- defect 9: an ack answers once it is durable ------------------------------------------------


async def test_a_repeated_ack_answers_after_the_first_ack_is_committed(
    open_broker: OpenBroker,
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(4)])
    first, second = await b.fetch("t", "g", max_records=2), await b.fetch("t", "g")
    assert first is not None and second is not None
    acking = asyncio.create_task(b.ack("t", "g", first.lease))
    await asyncio.sleep(0)  # applied, its journal commit under way
    assert not acking.done()
    assert await b.ack("t", "g", first.lease) == 0  # the retry
    assert acking.done()  # the retry did not answer before the first ack was durable
    acking = asyncio.create_task(b.ack("t", "g", second.lease))
    await asyncio.sleep(0)
    assert await b.ack_leases("t", "g", [second.lease]) == (0, [])  # piggybacked retry
    assert acking.done()
    assert await acking == 2


async def test_an_ack_whose_commit_failed_is_not_answered_as_done(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    # Every journal commit rewrites the journal (compaction): a directory in the way of its
    # temporary file makes the rewrite fail, a real failing open().
    b = await open_broker(journal_compact_bytes=1)
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(3)])
    batch = await b.fetch("t", "g")
    assert batch is not None
    blocker = data_dir(tmp_path) / "topics" / "t" / "groups" / "g.tmp"
    blocker.mkdir()
    with pytest.raises(StorageError):
        await b.ack("t", "g", batch.lease)
    for _ in range(2):  # retries answer the failure: the topic failed (docs: Storage errors)
        with pytest.raises(StorageError):
            await b.ack("t", "g", batch.lease)
        with pytest.raises(StorageError):
            await b.ack_leases("t", "g", [batch.lease])
    blocker.rmdir()
    with pytest.raises(StorageError):  # never retried on the same file, even once it would work
        await b.ack("t", "g", batch.lease)
    await b.close()
    b = await open_broker()  # the restart: the ack was never answered as done, so it comes again
    again = await b.fetch("t", "g")
    assert ids(again) == [0, 1, 2]


# -- defect 10: redeliveries keep to max_bytes --------------------------------------------------


async def test_redelivered_records_keep_to_max_bytes(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i, pad=900)) for i in range(10)])
    batch = await b.fetch("t", "g", max_records=100)
    assert ids(batch) == list(range(10)) and batch is not None
    await b.nack("t", "g", batch.lease)
    got: list[int] = []
    while (again := await b.fetch("t", "g", max_records=100, max_bytes=2000)) is not None:
        size = sum(FRAME_OVERHEAD + len(d.key) + len(d.value) for d in again.records)
        one = FRAME_OVERHEAD + len(again.records[-1].key) + len(again.records[-1].value)
        assert size <= 2000 + one, size  # at most one record past the bound
        assert len(again.records) <= 2
        got += ids(again)
        await b.ack("t", "g", again.lease)
    assert got == list(range(10))


# -- defect 11: committed offsets at recovery, one lease per partition --------------------------


async def test_a_log_that_came_back_shorter_delivers_new_records(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(3)])
    await b.close()
    topic_dir = data_dir(tmp_path) / "topics" / "t"
    saved = tmp_path / "saved"
    for part in ("partitions", "wal", "checkpoint.json"):
        src = topic_dir / part
        if src.is_dir():
            shutil.copytree(src, saved / part)
        else:
            saved.mkdir(exist_ok=True)
            shutil.copy2(src, saved / part)
    b = await open_broker()
    await b.publish("t", [("k", value(i)) for i in range(3, 5)])
    got: list[int] = []
    while (batch := await b.fetch("t", "g")) is not None:
        got += ids(batch)
        await b.ack("t", "g", batch.lease)
    assert got == [0, 1, 2, 3, 4]  # the group's journal says: done below 5
    await b.close()
    # The log comes back holding 3 records only (what a power loss under fsync=never can do).
    for part in ("partitions", "wal"):
        shutil.rmtree(topic_dir / part)
        shutil.copytree(saved / part, topic_dir / part)
    shutil.copy2(saved / "checkpoint.json", topic_dir / "checkpoint.json")
    b = await open_broker()
    assert b.group_stats("t", "g").partitions[0].committed == 3
    await b.publish("t", [("k", value(i)) for i in range(100, 102)])  # offsets 3 and 4 again
    assert ids(await b.fetch("t", "g")) == [100, 101]


async def test_fetch_many_leases_each_partition_once(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 2)
    positions = await b.publish("t", [("k", value(i)) for i in range(10)])  # one partition
    p = positions[0][0]
    batch = await b.fetch("t", "g", max_records=3)
    assert batch is not None
    await b.nack("t", "g", batch.lease)  # 0-2 ready for redelivery, 3-9 never delivered
    batches = await b.fetch_many("t", "g", max_records=100)
    assert [x.partition for x in batches] == [p]
    assert ids(batches[0]) == [0, 1, 2]
    assert ids((await b.fetch_many("t", "g", max_records=100))[0]) == list(range(3, 10))


# -- review 15, 13, 12: a closed broker, the routing memo, the waiter queue ---------------------


async def test_lease_outcomes_after_close_raise_instead_of_hanging(
    open_broker: OpenBroker,
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(4)])
    first, second = await b.fetch("t", "g", max_records=2), await b.fetch("t", "g")
    assert first is not None and second is not None
    await b.close()
    with pytest.raises(BrokerUnavailableError):
        await asyncio.wait_for(b.ack("t", "g", first.lease), 5)
    with pytest.raises(BrokerUnavailableError):
        await asyncio.wait_for(b.reject("t", "g", second.lease), 5)


async def test_the_key_routing_memo_is_bounded_in_bytes(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 4)
    keys = [f"{i:04d}" + "k" * 1020 for i in range(5000)]  # 10 MB of keys and their bytes
    for start in range(0, len(keys), 500):
        await b.publish("t", [(k, b"1") for k in keys[start : start + 500]])
    t = b.topic("t")
    held = sum(len(k) + len(kb) for k, (kb, _) in t._routes.items())
    assert held <= ROUTE_CACHE_BYTES
    assert t.route("x") == (b"x", partition_for(b"x", 4))


async def test_a_wake_goes_to_one_waiter_and_passes_on_when_it_is_cancelled() -> None:
    waiters = Waiters()
    tasks = [asyncio.create_task(waiters.wait(30)) for _ in range(10)]
    await asyncio.sleep(0)
    assert len(waiters) == 10
    waiters.wake_one()
    await asyncio.sleep(0)
    assert [t.done() for t in tasks] == [True] + [False] * 9  # the longest waiting only
    assert tasks[0].result() is True
    waiters.wake_one()
    tasks[1].cancel()  # woken, then cancelled before it could take: the next one goes
    await asyncio.wait_for(tasks[2], 5)
    assert tasks[1].cancelled() and all(not t.done() for t in tasks[3:])
    assert await waiters.wait(0.01) is False  # a timeout
    waiters.wake_all()
    assert await asyncio.gather(*tasks[3:]) == [True] * 7
    assert len(waiters) == 0


async def test_a_cancelled_topic_creation_still_completes(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    # What a dead-letter publish does when its fetch's client goes away mid-creation.
    b = await open_broker()
    creating = asyncio.create_task(b.create_topic("u", 1))
    for _ in range(2):  # until the directory is written in a thread
        await asyncio.sleep(0)
    # Hold the event loop (a blocking wait, on purpose) until that thread is done, so the
    # task is still waiting for it when it is cancelled.
    meta = data_dir(tmp_path) / "topics" / "u" / "topic.json"
    deadline = time.monotonic() + 10
    while not meta.exists():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    creating.cancel()
    try:
        await creating
    except asyncio.CancelledError:
        pass
    topic, _ = await b.create_topic("u", 1)
    assert topic.partitions == 1
    assert await b.publish("u", [("k", value(1))]) == [(0, 0)]

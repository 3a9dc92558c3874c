"""Group lifecycle: deletion, idle groups, limits, the expiry heap, retention racing a new group.

No client can stall everyone: a group nobody uses stops holding back-pressure and retention,
an operator can delete one, and every resource a client can make the broker hold is bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from telemetry_mq import (
    DLQ_SUFFIX,
    BacklogFullError,
    Batch,
    Broker,
    GroupNotFoundError,
    LeaseExpiredError,
    LeaseLimitError,
    LimitExceededError,
    ProtocolError,
)

from ..conftest import Clock, OpenBroker


def value(i: int) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * 40})


def ids(batch: Batch | None) -> list[int]:
    assert batch is not None
    return [orjson.loads(d.value)["i"] for d in batch.records]


async def consume_all(b: Broker, group: str) -> list[int]:
    got: list[int] = []
    while (batch := await b.fetch("t", group, max_records=1000)) is not None:
        got += ids(batch)
        await b.ack("t", group, batch.lease)
    return got


# -- defect 5: retention and a group created meanwhile ------------------------------------------


async def test_retention_keeps_what_a_group_created_during_it_needs(
    open_broker: OpenBroker, wall: Clock
) -> None:
    b = await open_broker(segment_bytes=300, retention_age=1.0)
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(50)])
    assert await consume_all(b, "a") == list(range(50))
    wall.advance(10)  # every closed segment is old enough and consumed by the only group
    maintaining = asyncio.create_task(b.maintain())
    await asyncio.sleep(0)  # retention waits for the journals to be synced
    fresh = await b.fetch("t", "late", max_records=1000)  # a new group, created meanwhile
    await maintaining
    got = ids(fresh)
    assert fresh is not None
    await b.ack("t", "late", fresh.lease)
    got += await consume_all(b, "late")
    assert got == list(range(50))  # from the earliest offset: nothing deleted under it
    assert b.group_stats("t", "late").lag == 0
    await b.maintain()  # now both groups consumed everything: segments go
    assert b.topic("t").logs[0].start_offset > 0


# -- defect 6: deleting a group -------------------------------------------------------------------


async def test_deleting_a_group_frees_what_it_held(open_broker: OpenBroker, tmp_path: Path) -> None:
    b = await open_broker(max_backlog_bytes=500)
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(10)])
    assert await consume_all(b, "live") == list(range(10))
    stale = await b.fetch("t", "stale", max_records=1000)  # leases all ten, never acks
    assert stale is not None
    waiting = asyncio.create_task(b.fetch("t", "stale", max_wait=30))
    await asyncio.sleep(0)
    with pytest.raises(BacklogFullError):  # the stale group holds the backlog
        await b.publish("t", [("k", value(10))])
    journal = tmp_path / "data" / "topics" / "t" / "groups" / "stale.journal"
    assert journal.exists()

    await b.delete_group("t", "stale")
    assert await asyncio.wait_for(waiting, 5) is None  # its long-poll ends at once
    assert not journal.exists()
    with pytest.raises(GroupNotFoundError):
        b.group_stats("t", "stale")
    assert [g.group for g in b.topic_stats("t").groups] == ["live"]
    with pytest.raises(LeaseExpiredError):
        await b.ack("t", "stale", stale.lease)
    with pytest.raises(GroupNotFoundError):
        await b.delete_group("t", "stale")
    await b.publish("t", [("k", value(10))])  # the backlog is the live group's now
    await b.close()

    b = await open_broker(max_backlog_bytes=500)
    assert set(b.topic("t").groups) == {"live"}  # gone durably
    again = await b.fetch("t", "stale", max_records=1000)  # a new group of that name
    assert ids(again) == list(range(11)) and again is not None
    assert {d.delivery_count for d in again.records} == {1}


async def test_the_brokers_own_groups_are_reserved(open_broker: OpenBroker) -> None:
    b = await open_broker(max_deliveries=1)
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(0))])
    batch = await b.fetch("t", "g")
    assert batch is not None
    await b.reject("t", "g", batch.lease)
    with pytest.raises(ProtocolError):
        await b.fetch("t", "_broker-replay")
    with pytest.raises(ProtocolError):
        await b.delete_group(f"t{DLQ_SUFFIX}", "_broker-replay")


# -- defect 6: idle groups ------------------------------------------------------------------------


async def test_an_idle_group_stops_holding_backpressure_and_retention(
    open_broker: OpenBroker, clock: Clock, wall: Clock
) -> None:
    b = await open_broker(
        group_idle_timeout=10.0, max_backlog_bytes=2000, segment_bytes=300, retention_age=1.0
    )
    await b.create_topic("t", 1)
    assert await b.fetch("t", "away") is None  # a group that fetched once, then went away
    await b.publish("t", [("k", value(i)) for i in range(30)])
    assert await consume_all(b, "live") == list(range(30))
    with pytest.raises(BacklogFullError):  # "away" has read nothing
        await b.publish("t", [("k", value(30))])

    clock.advance(11)
    wall.advance(10)
    await b.maintain()  # nobody called: both are idle, and then the slowest holds still
    assert b.group_stats("t", "away").idle and b.group_stats("t", "live").idle
    assert b.topic("t").logs[0].start_offset == 0
    with pytest.raises(BacklogFullError):
        await b.publish("t", [("k", value(30))])

    assert await consume_all(b, "live") == []  # "live" calls again: it alone holds now
    assert not b.group_stats("t", "live").idle
    await b.publish("t", [("k", value(i)) for i in range(30, 35)])
    await b.maintain()
    start = b.topic("t").logs[0].start_offset
    assert start > 0  # retention went past what "away" never read
    assert await consume_all(b, "live") == list(range(30, 35))

    # "away" comes back where retention left it: the records deleted meanwhile are skipped,
    # everything retained is delivered, its committed offset advances as usual.
    assert await consume_all(b, "away") == list(range(start, 35))
    stats = b.group_stats("t", "away")
    assert (stats.idle, stats.lag, stats.partitions[0].committed) == (False, 0, 35)


async def test_a_group_with_a_lease_or_a_long_poll_is_never_idle(
    open_broker: OpenBroker, clock: Clock
) -> None:
    b = await open_broker(group_idle_timeout=10.0)
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(0))])
    batch = await b.fetch("t", "slow", ack_wait=1000)
    assert batch is not None
    got = await b.fetch("t", "polling")
    assert got is not None
    await b.ack("t", "polling", got.lease)
    polling = asyncio.create_task(b.fetch("t", "polling", max_wait=30))
    await asyncio.sleep(0)
    assert not polling.done()  # it waits for records
    clock.advance(100)
    await b.maintain()
    assert not b.group_stats("t", "slow").idle  # holds a lease
    assert not b.group_stats("t", "polling").idle  # waits in a long-poll
    await b.ack("t", "slow", batch.lease)
    clock.advance(11)
    await b.maintain()
    assert b.group_stats("t", "slow").idle
    polling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await polling


# -- defect 6: limits -------------------------------------------------------------------------


async def test_groups_per_topic_are_limited(open_broker: OpenBroker) -> None:
    b = await open_broker(max_groups_per_topic=2)
    await b.create_topic("t", 1)
    await b.fetch("t", "g1")
    await b.fetch("t", "g2")
    with pytest.raises(LimitExceededError) as e:
        await b.fetch("t", "g3")
    assert e.value.code == "TOO_MANY_GROUPS"
    await b.delete_group("t", "g1")
    await b.fetch("t", "g3")


async def test_topics_are_limited_but_not_their_dead_letter_topics(
    open_broker: OpenBroker,
) -> None:
    b = await open_broker(max_topics=2, max_deliveries=1)
    await b.create_topic("t", 1)
    await b.create_topic("u", 1)
    with pytest.raises(LimitExceededError) as e:
        await b.create_topic("v", 1)
    assert e.value.code == "TOO_MANY_TOPICS"
    await b.publish("t", [("k", value(0))])
    batch = await b.fetch("t", "g")
    assert batch is not None
    assert await b.reject("t", "g", batch.lease) == 1  # t.dlq is created all the same
    assert f"t{DLQ_SUFFIX}" in b.topics


async def test_records_in_flight_are_limited_per_group(open_broker: OpenBroker) -> None:
    b = await open_broker(max_in_flight_records=5)
    await b.create_topic("t", 4)
    await b.publish("t", [(f"k{i}", value(i)) for i in range(40)])
    batches = await b.fetch_many("t", "g", max_records=100)
    assert sum(len(x.records) for x in batches) == 5
    with pytest.raises(LeaseLimitError):
        await b.fetch("t", "g", max_records=100)
    assert await b.fetch("t", "other", max_records=100) is not None  # per group
    await b.ack("t", "g", batches[0].lease)
    again = await b.fetch("t", "g", max_records=100)
    assert again is not None and len(again.records) == len(batches[0].records)


async def test_nack_and_release_delays_are_limited(open_broker: OpenBroker) -> None:
    b = await open_broker(max_nack_delay=60.0)
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(2)])
    batch = await b.fetch("t", "g")
    assert batch is not None
    for settle in (b.nack, b.release):
        with pytest.raises(LimitExceededError) as e:
            await settle("t", "g", batch.lease, [0], delay=61)
        assert e.value.code == "NACK_DELAY_TOO_LONG"
    assert await b.nack("t", "g", batch.lease, [0], delay=60) == 1
    assert await b.release("t", "g", batch.lease, [1], delay=60) == 1


async def test_the_expiry_heap_is_bounded_by_live_leases(
    open_broker: OpenBroker, clock: Clock
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await b.publish("t", [("k", value(i)) for i in range(600)])
    batch = await b.fetch("t", "g", max_records=1, ack_wait=10)
    assert batch is not None
    g = b.topic("t").groups["g"]
    for _ in range(1000):  # a consumer extending in a loop
        await b.extend("t", "g", batch.lease, 10)
    assert g.timers == 1
    clock.advance(9)
    await b.maintain()  # the first deadline passes: the entry moves to the extended one
    assert await b.ack("t", "g", batch.lease) == 1
    for _ in range(500):  # leases with a day's ack_wait, acked at once
        leased = await b.fetch("t", "g", max_records=1, ack_wait=86_400)
        assert leased is not None
        await b.ack("t", "g", leased.lease)
    assert g.timers <= 2 * len(g.leases) + 64

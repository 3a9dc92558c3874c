"""Consumer groups: leases, expiry, redelivery, dead letters, restarts, retention, backpressure."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from telemetry_mq import (
    DLQ_SUFFIX,
    BacklogFullError,
    Batch,
    Broker,
    LeaseExpiredError,
    ProtocolError,
    TopicNotFoundError,
)

from tests.helpers import parked_fetches, until

from ..conftest import Clock, OpenBroker


def value(i: int) -> bytes:
    return orjson.dumps({"i": i})


def ids(batch: Batch | None) -> list[int]:
    assert batch is not None
    return [orjson.loads(d.value)["i"] for d in batch.records]


def crash_copy(tmp_path: Path, name: str) -> Path:
    """What a crash right now would leave on disk: a copy of the data directory.

    Taken with no await since the last call returned, so nothing the broker merely scheduled
    (a commit it did not wait for) can reach the files before the copy.
    """
    snapshot = tmp_path / name
    shutil.copytree(tmp_path / "data", snapshot)
    return snapshot


async def parked(topic: str) -> None:
    """Return once a fetch of ``topic`` waits for records at its wait point."""
    await until(lambda: parked_fetches(topic), timeout=10, what="a fetch waiting for records")


async def one_partition(open_broker: OpenBroker, n: int = 5, **config: object) -> Broker:
    b = await open_broker(**config)
    await b.create_topic("t", 1)
    if n:
        await b.publish("t", [("k", value(i)) for i in range(n)])
    return b


async def test_create_topic_is_idempotent(open_broker: OpenBroker) -> None:
    b = await open_broker()
    topic, created = await b.create_topic("t", 4)
    again, created_again = await b.create_topic("t", 8)
    assert (created, created_again, again.partitions) == (True, False, 4)
    assert (await b.create_topic("u"))[0].partitions == 16


async def test_unknown_topic(open_broker: OpenBroker) -> None:
    b = await open_broker()
    with pytest.raises(TopicNotFoundError):
        await b.publish("nope", [("k", b"1")])
    with pytest.raises(TopicNotFoundError):
        await b.fetch("nope", "g")


async def test_keys_keep_order_within_their_partition(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 16)
    records = [(f"gpu-{i % 7}", value(i)) for i in range(200)]
    positions = await b.publish("t", records)
    by_key: dict[str, set[int]] = {}
    for (key, _), (p, _) in zip(records, positions, strict=True):
        by_key.setdefault(key, set()).add(p)
    assert all(len(ps) == 1 for ps in by_key.values())
    for p in {p for p, _ in positions}:
        offsets = [o for q, o in positions if q == p]
        assert offsets == list(range(len(offsets)))


async def test_fetch_is_round_robin_across_partitions(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 4)
    await b.publish("t", [(f"k{i}", value(i)) for i in range(100)])
    seen = []
    for _ in range(4):
        batch = await b.fetch("t", "g", max_records=1)
        assert batch is not None
        seen.append(batch.partition)
    assert sorted(seen) == [0, 1, 2, 3]


async def test_ack_commits_and_nothing_is_redelivered(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker)
    batch = await b.fetch("t", "g", max_records=3)
    assert ids(batch) == [0, 1, 2] and batch is not None
    assert [d.delivery_count for d in batch.records] == [1, 1, 1]
    assert await b.ack("t", "g", batch.lease) == 3
    assert await b.ack("t", "g", batch.lease) == 0  # a retried ack is harmless
    assert b.group_stats("t", "g").partitions[0].committed == 3
    assert ids(await b.fetch("t", "g")) == [3, 4]
    assert await b.fetch("t", "g") is None


async def test_partial_ack_keeps_the_rest_leased(open_broker: OpenBroker, clock: Clock) -> None:
    b = await one_partition(open_broker)
    batch = await b.fetch("t", "g", ack_wait=10)
    assert batch is not None
    assert await b.ack("t", "g", batch.lease, offsets=[1, 3, 99]) == 2
    stats = b.group_stats("t", "g")
    assert (stats.partitions[0].committed, stats.in_flight) == (0, 3)
    clock.advance(11)
    again = await b.fetch("t", "g")
    assert ids(again) == [0, 2, 4] and again is not None
    assert [d.delivery_count for d in again.records] == [2, 2, 2]


async def test_expired_lease_is_redelivered_with_a_higher_count(
    open_broker: OpenBroker, clock: Clock
) -> None:
    b = await one_partition(open_broker)
    first = await b.fetch("t", "g", ack_wait=5)
    assert first is not None
    assert await b.fetch("t", "g") is None  # all five are leased
    clock.advance(5)
    second = await b.fetch("t", "g")
    assert ids(second) == [0, 1, 2, 3, 4] and second is not None
    assert {d.delivery_count for d in second.records} == {2}
    with pytest.raises(LeaseExpiredError):
        await b.ack("t", "g", first.lease)
    assert await b.ack("t", "g", second.lease) == 5


async def test_extend_keeps_the_lease(open_broker: OpenBroker, clock: Clock) -> None:
    b = await one_partition(open_broker)
    batch = await b.fetch("t", "g", ack_wait=5)
    assert batch is not None
    clock.advance(4)
    assert await b.extend("t", "g", batch.lease, 5) == 5
    clock.advance(4)
    assert await b.fetch("t", "g") is None
    assert await b.ack("t", "g", batch.lease) == 5
    with pytest.raises(ProtocolError):
        await b.extend("t", "g", batch.lease, 0)


async def test_nack_with_delay(open_broker: OpenBroker, clock: Clock) -> None:
    b = await one_partition(open_broker, 2)
    batch = await b.fetch("t", "g")
    assert batch is not None
    assert await b.nack("t", "g", batch.lease, [0], delay=3, error="db down") == 1
    assert await b.fetch("t", "g") is None
    clock.advance(3)
    again = await b.fetch("t", "g")
    assert ids(again) == [0] and again is not None
    assert again.records[0].delivery_count == 2


async def test_release_never_spends_a_delivery(
    tmp_path: Path, open_broker: OpenBroker, clock: Clock
) -> None:
    b = await one_partition(open_broker, 3, max_deliveries=2)
    for _ in range(5):  # far more often than max_deliveries: nothing is dead-lettered
        batch = await b.fetch("t", "g")
        assert ids(batch) == [0, 1, 2] and batch is not None
        assert [d.delivery_count for d in batch.records] == [1, 1, 1]
        assert await b.release("t", "g", batch.lease) == 3
    batch = await b.fetch("t", "g")
    assert batch is not None
    assert await b.release("t", "g", batch.lease, [1], delay=5) == 1
    assert await b.release("t", "g", batch.lease, [1]) == 0  # already released
    assert await b.fetch("t", "g") is None  # 0 and 2 still leased, 1 waits out its delay
    clock.advance(5)
    again = await b.fetch("t", "g")
    assert ids(again) == [1] and again is not None
    assert again.records[0].delivery_count == 1
    await b.nack("t", "g", again.lease)  # a real failure does count: 1 is now at 1
    assert await b.release("t", "g", batch.lease) == 2  # 0 and 2 go back at count 0
    assert "t.dlq" not in b.topics
    with pytest.raises(LeaseExpiredError):
        await b.release("t", "g", "no-such-lease")
    # The taken-back deliveries are durable: a crash (no clean close) keeps the counts.
    snapshot = tmp_path / "crashed"
    shutil.copytree(tmp_path / "data", snapshot)
    b2 = await Broker.open(snapshot, b.config, clock=clock)
    try:
        got = await b2.fetch("t", "g")
        assert got is not None
        assert {d.offset: d.delivery_count for d in got.records} == {0: 1, 1: 2, 2: 1}
    finally:
        await b2.close()


async def test_dead_letter_after_max_deliveries(
    open_broker: OpenBroker, clock: Clock, wall: Clock
) -> None:
    b = await one_partition(open_broker, 2, max_deliveries=3)
    published_us = int(wall.now * 1_000_000)  # the publish stamps the wall clock's time
    stamps: list[int] = []
    for attempt in range(3):
        batch = await b.fetch("t", "g", ack_wait=1)
        assert ids(batch) == [0, 1] and batch is not None
        assert {d.delivery_count for d in batch.records} == {attempt + 1}
        stamps = [d.timestamp_us for d in batch.records]
        assert stamps == [published_us, published_us]
        wall.advance(7)  # later deliveries keep the publish time
        if attempt == 1:
            await b.nack("t", "g", batch.lease, error="boom")
        else:
            clock.advance(1)
    assert await b.fetch("t", "g") is None  # both expired a third time: dead-lettered
    stats = b.group_stats("t", "g")
    assert (stats.lag, stats.partitions[0].committed) == (0, 2)
    dead = await b.fetch("t" + DLQ_SUFFIX, "ops")
    assert dead is not None
    envelopes = [orjson.loads(d.value) for d in dead.records]
    assert [e["value"] for e in envelopes] == [{"i": 0}, {"i": 1}]
    assert envelopes[0]["reason"] == "max_deliveries"
    assert envelopes[0]["error"] == "lease expired"
    assert envelopes[0]["origin"] == {
        "topic": "t",
        "group": "g",
        "partition": 0,
        "offset": 0,
        "timestamp_us": stamps[0],  # the original record's, not the dead letter's own
        "delivery_count": 3,
    }
    assert dead.records[0].timestamp_us == published_us + 3 * 7 * 1_000_000


async def test_reject_goes_to_the_dead_letter_topic_now(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 3)
    batch = await b.fetch("t", "g")
    assert batch is not None
    assert await b.reject("t", "g", batch.lease, [1], error="invalid record") == 1
    assert await b.ack("t", "g", batch.lease) == 2
    assert b.group_stats("t", "g").partitions[0].committed == 3
    dead = await b.fetch("t.dlq", "ops")
    assert dead is not None
    envelope = orjson.loads(dead.records[0].value)
    assert (envelope["reason"], envelope["error"], envelope["origin"]["offset"]) == (
        "rejected",
        "invalid record",
        1,
    )


async def test_group_state_survives_a_restart(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 6)
    acked = await b.fetch("t", "g", max_records=2)
    leased = await b.fetch("t", "g", max_records=2)
    assert acked is not None and leased is not None
    await b.ack("t", "g", acked.lease)
    partial = await b.fetch("t", "g", max_records=2)
    assert partial is not None
    await b.ack("t", "g", partial.lease, [5])
    await b.close()  # leases [2, 3] and offset 4 were never acked

    b = await open_broker()
    with pytest.raises(LeaseExpiredError):
        await b.ack("t", "g", leased.lease)
    again = await b.fetch("t", "g")
    assert ids(again) == [2, 3, 4] and again is not None
    assert [d.delivery_count for d in again.records] == [2, 2, 2]
    await b.ack("t", "g", again.lease)
    assert await b.fetch("t", "g") is None
    assert b.group_stats("t", "g").partitions[0].committed == 6


async def test_ack_leases_acks_durably_and_reports_expired_leases(
    tmp_path: Path, open_broker: OpenBroker, clock: Clock
) -> None:
    b = await one_partition(open_broker, 6, default_ack_wait=10.0)
    first = await b.fetch("t", "g", max_records=2)
    late = await b.fetch("t", "g", max_records=2)
    assert first is not None and late is not None
    clock.advance(5)
    second = await b.fetch("t", "g", max_records=2, ack_wait=60.0)
    assert second is not None
    clock.advance(6)  # first and late expire; second is still leased
    acked, expired = await b.ack_leases("t", "g", [second.lease, late.lease, "nope"])
    assert (acked, expired) == (2, [late.lease, "nope"])
    assert await b.ack_leases("t", "g", [second.lease]) == (0, [])  # a retry: nothing new
    assert await b.ack_leases("t", "other", [second.lease]) == (0, [second.lease])
    snapshot = crash_copy(tmp_path, "crashed")  # a crash, not a clean close (that flushes all)

    b = await Broker.open(snapshot, b.config, clock=clock)
    try:  # the acks were durable when ack_leases returned: only 0-3 come again
        again = await b.fetch("t", "g")
        assert ids(again) == [0, 1, 2, 3]
    finally:
        await b.close()


async def test_an_ack_is_durable_when_it_returns(
    tmp_path: Path, open_broker: OpenBroker, clock: Clock
) -> None:
    b = await one_partition(open_broker, 6)
    leases = [await b.fetch("t", "g", max_records=2) for _ in range(3)]
    first, second, third = leases
    assert first is not None and second is not None and third is not None
    assert await b.ack("t", "g", first.lease) == 2
    after_ack = crash_copy(tmp_path, "after-ack")
    assert await b.ack("t", "g", second.lease, [3]) == 1
    after_partial_ack = crash_copy(tmp_path, "after-partial-ack")
    for snapshot, unacked in ((after_ack, [2, 3, 4, 5]), (after_partial_ack, [2, 4, 5])):
        crashed = await Broker.open(snapshot, b.config, clock=clock)
        try:
            again = await crashed.fetch("t", "g", max_records=100)
            assert ids(again) == unacked
        finally:
            await crashed.close()


async def test_drain_ends_long_polls_and_stops_leasing(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 0)
    waiting = asyncio.create_task(b.fetch("t", "g", max_wait=30))
    await parked("t")
    b.drain()
    assert await asyncio.wait_for(waiting, 5) is None
    await b.publish("t", [("k", value(1))])  # publishing still works
    assert await b.fetch("t", "g", max_wait=30) is None  # at once, records or not
    assert b.healthy == "draining"


async def test_journal_compaction_keeps_the_state(open_broker: OpenBroker, tmp_path: Path) -> None:
    b = await one_partition(open_broker, 0, journal_compact_bytes=512)
    for i in range(40):
        await b.publish("t", [("k", value(i))])
        batch = await b.fetch("t", "g")
        assert batch is not None
        if i % 2 == 0:
            await b.ack("t", "g", batch.lease)
    journal = tmp_path / "data" / "topics" / "t" / "groups" / "g.journal"
    assert journal.stat().st_size < 2048
    await b.close()
    b = await open_broker()
    again = await b.fetch("t", "g", max_records=100)
    assert ids(again) == list(range(1, 40, 2))


async def test_retention_deletes_only_consumed_old_segments(
    open_broker: OpenBroker, tmp_path: Path, wall: Clock
) -> None:
    b = await one_partition(open_broker, 0, segment_bytes=256, retention_age=60.0)
    for i in range(50):
        await b.publish("t", [("k", value(i))])
    b.topic("t").logs[0].write_out()  # frames reach the files in large writes: now
    part = tmp_path / "data" / "topics" / "t" / "partitions" / "0000"
    segments = len(list(part.iterdir()))
    assert segments > 5
    wall.advance(120)
    await b.maintain()
    assert len(list(part.iterdir())) == segments  # no group yet: kept for the first one

    consumed = 0
    while consumed < 20:  # a fetch stops at a segment boundary
        batch = await b.fetch("t", "slow", max_records=20 - consumed)
        assert batch is not None
        await b.ack("t", "slow", batch.lease)
        consumed += len(batch.records)
    await b.maintain()
    kept = b.topic_stats("t").partition_stats[0]
    assert 0 < kept.start_offset <= 20
    assert len(list(part.iterdir())) < segments
    rest: list[int] = []
    while (batch := await b.fetch("t", "slow", max_records=100)) is not None:
        rest.extend(ids(batch))
    assert rest == list(range(20, 50))


async def test_retention_waits_for_every_group(
    open_broker: OpenBroker, tmp_path: Path, wall: Clock
) -> None:
    b = await one_partition(open_broker, 0, segment_bytes=256, retention_age=60.0)
    assert await b.fetch("t", "slow") is None  # two groups from the start
    for i in range(50):
        await b.publish("t", [("k", value(i))])
    b.topic("t").logs[0].write_out()
    part = tmp_path / "data" / "topics" / "t" / "partitions" / "0000"
    segments = len(list(part.iterdir()))
    assert segments > 5
    while (batch := await b.fetch("t", "fast", max_records=100)) is not None:
        await b.ack("t", "fast", batch.lease)
    assert b.group_stats("t", "fast").partitions[0].committed == 50
    wall.advance(120)
    await b.maintain()
    # "fast" is done with every segment, "slow" with none: all of them stay.
    assert b.topic_stats("t").partition_stats[0].start_offset == 0
    assert len(list(part.iterdir())) == segments

    consumed = 0
    while consumed < 20:  # a fetch stops at a segment boundary
        batch = await b.fetch("t", "slow", max_records=20 - consumed)
        assert batch is not None
        await b.ack("t", "slow", batch.lease)
        consumed += len(batch.records)
    await b.maintain()
    assert 0 < b.topic_stats("t").partition_stats[0].start_offset <= 20  # the slowest's bound
    rest: list[int] = []
    while (batch := await b.fetch("t", "slow", max_records=100)) is not None:
        rest.extend(ids(batch))
    assert rest == list(range(20, 50))


async def test_retention_by_size(open_broker: OpenBroker, wall: Clock) -> None:
    b = await one_partition(open_broker, 0, segment_bytes=512, retention_bytes=1024)
    for i in range(50):
        await b.publish("t", [("k", value(i))])
    while (batch := await b.fetch("t", "g")) is not None:
        await b.ack("t", "g", batch.lease)
    await b.maintain()
    assert b.topic_stats("t").bytes <= 1024 + 512


async def test_backpressure_refuses_publish_past_the_backlog_bound(
    open_broker: OpenBroker,
) -> None:
    b = await one_partition(open_broker, 0, max_backlog_bytes=1000, retry_after=2.0)
    big = [("k", orjson.dumps({"pad": "x" * 200})) for _ in range(5)]
    await b.publish("t", big)  # 5 x ~230 bytes: over the bound now
    with pytest.raises(BacklogFullError) as info:
        await b.publish("t", big)
    assert info.value.retry_after == 2.0 and info.value.limit == 1000
    assert b.topic_stats("t").records == 5  # nothing of the refused batch was appended
    batch = await b.fetch("t", "g", max_records=4)
    assert batch is not None
    await b.ack("t", "g", batch.lease)
    await b.publish("t", big[:1])  # consuming made room (slowest group decides)
    assert b.topic_stats("t").records == 6


async def test_backpressure_the_slowest_group_decides(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 0, max_backlog_bytes=1000)
    assert await b.fetch("t", "slow") is None  # two groups from the start
    big = [("k", orjson.dumps({"pad": "x" * 200})) for _ in range(5)]
    await b.publish("t", big)  # 5 x ~230 bytes: over the bound
    while (batch := await b.fetch("t", "fast")) is not None:
        await b.ack("t", "fast", batch.lease)
    assert b.group_stats("t", "fast").lag == 0
    with pytest.raises(BacklogFullError) as info:  # "slow" is still over the bound behind
        await b.publish("t", big[:1])
    assert info.value.backlog_bytes == b.group_stats("t", "slow").backlog_bytes > 1000
    while (batch := await b.fetch("t", "slow")) is not None:
        await b.ack("t", "slow", batch.lease)
    await b.publish("t", big[:1])  # both caught up: room again
    assert b.topic_stats("t").records == 6


async def test_the_backlog_bound_is_inclusive(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 3)
    backlog = b.topic_stats("t").backlog_bytes
    await b.close()
    at_bound = await open_broker(max_backlog_bytes=backlog)
    assert at_bound.topic_stats("t").backlog_bytes == backlog
    with pytest.raises(BacklogFullError) as info:  # a backlog exactly at the bound is full
        await at_bound.publish("t", [("k", value(3))])
    assert (info.value.backlog_bytes, info.value.limit) == (backlog, backlog)
    await at_bound.close()
    below = await open_broker(max_backlog_bytes=backlog + 1)
    assert await below.publish("t", [("k", value(3))]) == [(0, 3)]  # one byte of room is room


async def test_long_poll_wakes_up_on_publish(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 0)
    waiting = asyncio.create_task(b.fetch("t", "g", max_wait=30))
    await parked("t")  # the publish must wake it, not be there before it looks
    await b.publish("t", [("k", value(7))])
    batch = await asyncio.wait_for(waiting, 5)
    assert ids(batch) == [7]


async def test_long_poll_ends_empty_when_the_broker_closes(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 0)
    waiting = asyncio.create_task(b.fetch("t", "g", max_wait=30))
    await parked("t")
    await b.close()
    assert await asyncio.wait_for(waiting, 5) is None


async def test_closed_broker_refuses_publishes(open_broker: OpenBroker) -> None:
    from telemetry_mq import BrokerUnavailableError

    b = await one_partition(open_broker, 0)
    await b.close()
    with pytest.raises(BrokerUnavailableError):
        await b.publish("t", [("k", value(0))])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_records": 0}, "max_records"), ({"ack_wait": 0}, "ack_wait")],
)
async def test_fetch_argument_checks(
    open_broker: OpenBroker, kwargs: dict[str, float], match: str
) -> None:
    b = await one_partition(open_broker, 0)
    with pytest.raises(ProtocolError, match=match):
        await b.fetch("t", "g", **kwargs)  # type: ignore[arg-type]


async def test_oversized_value_is_refused(open_broker: OpenBroker) -> None:
    b = await one_partition(open_broker, 0, max_record_bytes=100)
    with pytest.raises(ProtocolError):
        await b.publish("t", [("k", b"1" * 101)])
    assert b.topic_stats("t").records == 0


def test_mark_done_commits_only_a_contiguous_run_from_the_committed_offset() -> None:
    from telemetry_mq.groups import Cursor

    cur = Cursor(committed=0, next=10)
    cur.mark_done([0, 2])  # starts at committed, but 1 is not done: not the fast path
    assert (cur.committed, cur.done) == (1, {2})
    cur.mark_done([4, 5])  # a gap before it: nothing moves
    assert (cur.committed, cur.done) == (1, {2, 4, 5})
    cur.mark_done([1])  # fills the gap: committed runs on over every done offset
    assert (cur.committed, cur.done) == (3, {4, 5})
    cur.mark_done([3])  # contiguous from committed, with done offsets past it still to join
    assert (cur.committed, cur.done) == (6, set())
    cur.mark_done([6, 7, 8])  # the common case: the oldest batch acked in full
    assert (cur.committed, cur.done) == (9, set())
    cur.mark_done([11, 10])  # as many offsets as the run needs, but 9 is not among them
    assert (cur.committed, cur.done) == (9, {10, 11})
    cur.mark_done([9])
    assert (cur.committed, cur.done) == (12, set())

"""Dead letters: names that can always dead-letter, listing, replay, and their own bound."""

from __future__ import annotations

import orjson
import pytest
from telemetry_mq import (
    DLQ_SUFFIX,
    BacklogFullError,
    Broker,
    DeadLetterError,
    ProtocolError,
    Selection,
)

from ..conftest import Clock, OpenBroker

DLQ = f"t{DLQ_SUFFIX}"


def value(i: int) -> bytes:
    return orjson.dumps({"i": i})


async def dead_letter(b: Broker, n: int, *, error: str = "bad", group: str = "g") -> None:
    """Publish ``n`` records to "t" and reject them all (with ``error``)."""
    start = b.topic("t").logs[0].next_offset
    await b.publish("t", [(f"k{i}", value(i)) for i in range(start, start + n)])
    batch = await b.fetch("t", group, max_records=n)
    assert batch is not None and len(batch.records) == n
    assert await b.reject("t", group, batch.lease, error=error) == n


# -- defect 7: every topic can dead-letter --------------------------------------------------------


async def test_topic_names_leave_room_for_their_dead_letter_topic(
    open_broker: OpenBroker,
) -> None:
    b = await open_broker(max_deliveries=1)
    for name in ("a" * 197, "a" * 200, "x.dlq", f"t{DLQ_SUFFIX}"):
        with pytest.raises(ProtocolError):
            await b.create_topic(name, 1)
    longest = "a" * 196
    await b.create_topic(longest, 1)
    await b.publish(longest, [("k", value(0))])
    batch = await b.fetch(longest, "g")
    assert batch is not None
    assert await b.reject(longest, "g", batch.lease) == 1
    assert b.topic_stats(longest + DLQ_SUFFIX).records == 1


async def test_records_of_a_dead_letter_topic_never_dead_letter(
    open_broker: OpenBroker, clock: Clock
) -> None:
    b = await open_broker(max_deliveries=1)
    await b.create_topic("t", 1)
    await dead_letter(b, 1)
    leases = []
    for _ in range(3):  # far past max_deliveries: redelivered, never dead-lettered again
        batch = await b.fetch(DLQ, "ops", ack_wait=1)
        assert batch is not None
        leases.append(batch.lease)
        clock.advance(2)
    assert f"{DLQ}{DLQ_SUFFIX}" not in b.topics
    with pytest.raises(ProtocolError):
        await b.reject(DLQ, "ops", leases[-1])
    with pytest.raises(ProtocolError):  # only the broker writes a dead-letter topic
        await b.publish(DLQ, [("k", value(0))])


# -- listing and replay ---------------------------------------------------------------------------


async def test_dead_letters_are_listed_with_counts_and_pages(open_broker: OpenBroker) -> None:
    b = await open_broker(max_deliveries=1)
    await b.create_topic("t", 1)
    report = await b.dead_letters("t")
    assert (report.records, report.letters, report.next) == (0, [], None)
    await dead_letter(b, 3, error="bad seq")
    await dead_letter(b, 2, error="bad time")
    report = await b.dead_letters("t", limit=2)
    assert report.records == 5
    assert report.by_reason == {"rejected": 5}
    assert [(e.reason, e.error, e.records) for e in report.by_error] == [
        ("rejected", "bad seq", 3),
        ("rejected", "bad time", 2),
    ]
    first = report.letters[0]
    assert (first.partition, first.offset, first.key, first.value) == (0, 0, "k0", value(0))
    assert first.origin is not None
    assert (first.origin.topic, first.origin.group, first.origin.offset) == ("t", "g", 0)
    assert report.next == "0:1"
    rest = await b.dead_letters("t", limit=10, after=report.next)
    assert [letter.value for letter in rest.letters] == [value(i) for i in (2, 3, 4)]
    assert rest.next is None
    only = await b.dead_letters("t", reason="max_deliveries")
    assert (only.records, only.letters) == (5, [])
    assert b.dead_letter_depth("t") == 5


async def test_replay_puts_the_records_back_byte_for_byte_once(open_broker: OpenBroker) -> None:
    b = await open_broker(max_deliveries=1)
    await b.create_topic("t", 1)
    await dead_letter(b, 4)
    replayed = await b.replay_dead_letters("t", Selection(origins=frozenset({(0, 1), (0, 3)})))
    assert replayed == (2, 0)
    assert b.dead_letter_depth("t") == 2
    batch = await b.fetch("t", "g", max_records=100)  # the group sees them as new records
    assert batch is not None
    assert [(d.offset, d.key, d.value, d.delivery_count) for d in batch.records] == [
        (4, "k1", value(1), 1),
        (5, "k3", value(3), 1),
    ]
    await b.ack("t", "g", batch.lease)
    report = await b.dead_letters("t")
    assert [letter.origin.offset for letter in report.letters if letter.origin] == [0, 2]
    assert await b.replay_dead_letters("t", Selection(origins=frozenset({(0, 1)}))) == (0, 0)
    assert await b.replay_dead_letters("t", Selection(all=True), max_records=1) == (1, 1)
    assert await b.replay_dead_letters("t", Selection(reason="rejected")) == (1, 0)
    assert b.dead_letter_depth("t") == 0
    assert await b.replay_dead_letters("t", Selection(all=True)) == (0, 0)
    await b.close()

    b = await open_broker(max_deliveries=1)  # what was replayed stays replayed
    assert b.dead_letter_depth("t") == 0
    assert (await b.dead_letters("t")).records == 0


async def test_a_replay_selects_exactly_one_way(open_broker: OpenBroker) -> None:
    with pytest.raises(ProtocolError):
        Selection()
    with pytest.raises(ProtocolError):
        Selection(all=True, reason="rejected")


async def test_a_full_topic_stops_a_replay_midway_without_losing_anything(
    open_broker: OpenBroker,
) -> None:
    b = await open_broker(max_deliveries=1, max_backlog_bytes=1)
    await b.create_topic("t", 1)
    await dead_letter(b, 3)
    await b.publish("t", [("k", value(99))])  # unconsumed: the topic is now full
    with pytest.raises(BacklogFullError):
        await b.replay_dead_letters("t", Selection(all=True))
    assert b.dead_letter_depth("t") == 3


async def test_dead_letters_have_a_bound_of_their_own(open_broker: OpenBroker) -> None:
    b = await open_broker(max_deliveries=1, max_dead_letter_bytes=300)
    await b.create_topic("t", 1)
    await dead_letter(b, 3)  # about 450 bytes of letters: over the bound now
    await b.publish("t", [("k", value(9))])
    batch = await b.fetch("t", "g")
    assert batch is not None
    with pytest.raises(DeadLetterError):
        await b.reject("t", "g", batch.lease)
    again = await b.fetch("t", "g")  # the record was not lost: it comes again
    assert again is not None and again.records[0].value == value(9)
    assert await b.replay_dead_letters("t", Selection(all=True)) == (3, 0)
    assert await b.reject("t", "g", again.lease) == 1  # room again once they were replayed

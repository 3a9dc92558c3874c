"""Dead letters: the envelope a record gets in ``<topic>.dlq``, and listing and replaying them.

Invariants:

- Every topic a client creates has a valid dead-letter topic name: a name is at most 196
  characters (``check_topic_name``), and names ending in ``.dlq`` are the broker's own. The
  broker alone writes a dead-letter topic (clients cannot publish to it).
- A dead letter is *pending* until replayed: the dead-letter topic's internal group
  ``REPLAY_GROUP`` (never idle, never leasing) acks a letter once its record is back in its
  topic. That group holds retention and back-pressure on the dead-letter topic like any
  group, so no pending letter is deleted, and ``max_dead_letter_bytes`` bounds the pending
  bytes (a dead-letter publish past it fails, and the records stay deliverable).
- A replay loses nothing and at worst duplicates: each record's value is re-published to its
  topic byte for byte (as a new record, with its key) and durable before its letter is acked,
  so a crash between the two re-publishes it at the next replay. Replays and listings of one
  topic run one at a time, so two replays never publish the same letter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
import orjson

from .errors import ProtocolError, ReservedError
from .groups import Dead, Group
from .log import Record
from .protocol import check_name
from .topic import Topic

DLQ_SUFFIX: Final = ".dlq"
REPLAY_GROUP: Final = "_broker-replay"
"""The internal group of a dead-letter topic that acks the letters replayed."""
INTERNAL_PREFIX: Final = "_broker"
"""Group names the broker keeps for itself."""
MAX_ERRORS_LISTED: Final = 100
_SCAN_CHUNK: Final = 1000
_PUBLISH_CHUNK: Final = 1000


def dlq_name(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


def is_dlq(topic: str) -> bool:
    """Whether ``topic`` is a dead-letter topic."""
    return topic.endswith(DLQ_SUFFIX)


def check_topic_name(name: str) -> str:
    """``name`` if a client may create a topic of that name, else raise ``ProtocolError``."""
    check_name("topic", name)
    if is_dlq(name):
        raise ProtocolError(
            f"invalid topic name {name!r}: names ending in {DLQ_SUFFIX!r} are dead-letter"
            " topics, which the broker creates"
        )
    if len(dlq_name(name)) > 200:
        raise ProtocolError(
            f"invalid topic name {name!r}: at most 196 characters, so that its dead-letter"
            f" topic {name}{DLQ_SUFFIX} has a valid name"
        )
    return name


def check_group_name(name: str) -> str:
    """``name`` if a client may use a group of that name, else raise ``ProtocolError``."""
    check_name("group", name)
    if name.startswith(INTERNAL_PREFIX):
        raise ReservedError(f"invalid group name {name!r}: {INTERNAL_PREFIX}* names are reserved")
    return name


def envelopes(
    topic: str, group: Group, dead: Dead, records: list[Record], reason: str
) -> list[tuple[str, bytes]]:
    """``(key, value)`` of each dead letter: the reason, last error, origin and the record.

    ``{"reason", "error", "origin": {"topic", "group", "partition", "offset", "timestamp_us",
    "delivery_count"}, "value": <the record, byte for byte>}``
    """
    p = dead[0]
    cur = group.cursors[p]
    fragment = orjson.Fragment
    return [
        (
            key,
            orjson.dumps(
                {
                    "reason": reason,
                    "error": cur.errors.get(o),
                    "origin": {
                        "topic": topic,
                        "group": group.name,
                        "partition": p,
                        "offset": o,
                        "timestamp_us": ts,
                        "delivery_count": cur.counts.get(o, 0),
                    },
                    "value": fragment(value),
                }
            ),
        )
        for o, ts, key, value in records
    ]


# -- reading letters --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a dead letter's record came from, and how often it had been delivered."""

    topic: str
    group: str
    partition: int
    offset: int
    timestamp_us: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One pending dead letter: its place in the dead-letter topic, why, and the record."""

    partition: int
    offset: int
    key: str
    reason: str
    error: str | None
    origin: Origin | None
    value: bytes


@dataclass(frozen=True, slots=True)
class ErrorCount:
    """How many pending dead letters have this reason and last error."""

    reason: str
    error: str | None
    records: int


@dataclass(frozen=True, slots=True)
class DeadLetterReport:
    """The pending dead letters of a topic: counts, and one page of them."""

    topic: str
    dead_letter_topic: str
    records: int
    by_reason: dict[str, int]
    by_error: list[ErrorCount]
    letters: list[DeadLetter]
    next: str | None = field(default=None)
    """Where the next page starts (``after``), when there are more letters."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The dead letters a replay moves back: all, those of a reason, or given origins."""

    all: bool = False
    reason: str | None = None
    origins: frozenset[tuple[int, int]] | None = None  # (partition, offset) in the topic

    def __post_init__(self) -> None:
        given = sum((self.all, self.reason is not None, self.origins is not None))
        if given != 1:
            raise ProtocolError("select exactly one of: all, reason, origins")

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` is selected (an unreadable letter never is)."""
        origin = letter.origin
        if origin is None:
            return False
        if self.all:
            return True
        if self.reason is not None:
            return letter.reason == self.reason
        assert self.origins is not None
        return (origin.partition, origin.offset) in self.origins


class _Origin(msgspec.Struct):
    topic: str
    group: str
    partition: int
    offset: int
    timestamp_us: int
    delivery_count: int


class _Envelope(msgspec.Struct):
    reason: str
    origin: _Origin
    value: msgspec.Raw
    error: str | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def _letter(p: int, record: Record) -> DeadLetter:
    offset, _, key, raw = record
    try:
        env = _decode_envelope(raw)
    except msgspec.DecodeError as e:  # never written by this broker: listed, not replayed
        return DeadLetter(p, offset, key, "unreadable", str(e), None, raw)
    o = env.origin
    origin = Origin(o.topic, o.group, o.partition, o.offset, o.timestamp_us, o.delivery_count)
    return DeadLetter(p, offset, key, env.reason, env.error, origin, bytes(env.value))


def _pending(dlq: Topic, group: Group | None, after: tuple[int, int]) -> Iterator[DeadLetter]:
    """The letters ``group`` has not acked, in (partition, offset) order, past ``after``."""
    for p, plog in enumerate(dlq.logs):
        if p < after[0]:
            continue
        if group is None:
            first, done = plog.start_offset, set[int]()
        else:
            first, _, done = group.pending(dlq.logs)[p]
        if p == after[0]:
            first = max(first, after[1] + 1)
        end = plog.durable_offset
        while first < end:
            records = plog.read(first, _SCAN_CHUNK, 1 << 20)
            if not records:
                break
            for record in records:
                if record[0] not in done:
                    yield _letter(p, record)
            first = records[-1][0] + 1


def pending_count(dlq: Topic) -> int:
    """Letters of ``dlq`` not yet replayed (what the dead-letter depth metric shows)."""
    group = dlq.groups.get(REPLAY_GROUP)
    if group is None:
        return sum(plog.next_offset - plog.start_offset for plog in dlq.logs)
    return sum(
        end - first - sum(1 for o in done if o >= first)
        for first, end, done in group.pending(dlq.logs)
    )


def parse_after(after: str | None) -> tuple[int, int]:
    """The ``partition:offset`` a page starts after (``-1:-1``: from the start)."""
    if not after:
        return (-1, -1)
    p, sep, o = after.partition(":")
    if not sep or not p.isdigit() or not o.isdigit():
        raise ProtocolError(f"after must be partition:offset, not {after!r}")
    return (int(p), int(o))


Publish = Callable[[str, Sequence[tuple[str, bytes]]], Awaitable[object]]
Commit = Callable[[Group], Awaitable[None]]


class DeadLetters:
    """Lists and replays the pending dead letters of topics, one call per topic at a time."""

    def __init__(self, *, publish: Publish, commit: Commit) -> None:
        self._publish = publish
        self._commit = commit
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, topic: str) -> asyncio.Lock:
        lock = self._locks.get(topic)
        if lock is None:
            lock = self._locks[topic] = asyncio.Lock()
        return lock

    async def report(
        self,
        topic: str,
        dlq: Topic | None,
        *,
        limit: int,
        after: str | None = None,
        reason: str | None = None,
    ) -> DeadLetterReport:
        """Counts by reason and by (reason, error) of every pending letter, and one page.

        The page holds up to ``limit`` letters (of ``reason`` only, if given) after the
        position ``after``; ``next`` continues it. Reads every pending letter, yielding to
        the event loop between chunks.
        """
        by_reason: Counter[str] = Counter()
        by_error: Counter[tuple[str, str | None]] = Counter()
        letters: list[DeadLetter] = []
        more = False
        if dlq is None:
            return DeadLetterReport(topic, dlq_name(topic), 0, {}, [], [])
        start = parse_after(after)
        async with self._lock(topic):
            group = dlq.groups.get(REPLAY_GROUP)
            for i, letter in enumerate(_pending(dlq, group, (-1, -1))):
                if i % _SCAN_CHUNK == _SCAN_CHUNK - 1:
                    await asyncio.sleep(0)
                by_reason[letter.reason] += 1
                by_error[(letter.reason, letter.error)] += 1
                if (letter.partition, letter.offset) <= start:
                    continue
                if reason is not None and letter.reason != reason:
                    continue
                if len(letters) < limit:
                    letters.append(letter)
                else:
                    more = True
        errors = [ErrorCount(r, e, n) for (r, e), n in by_error.most_common(MAX_ERRORS_LISTED)]
        last = letters[-1] if letters and more else None
        return DeadLetterReport(
            topic,
            dlq.name,
            sum(by_reason.values()),
            dict(by_reason.most_common()),
            errors,
            letters,
            f"{last.partition}:{last.offset}" if last is not None else None,
        )

    async def replay(
        self, topic: str, dlq: Topic, group: Group, selection: Selection, max_records: int
    ) -> tuple[int, int]:
        """Re-publish up to ``max_records`` selected letters to ``topic``, then ack them.

        Returns ``(replayed, remaining)``: letters moved now, and selected ones still pending.
        A failed publish (``BacklogFullError`` when ``topic`` is full) raises; the letters
        replayed before it stay replayed.
        """
        async with self._lock(topic):
            chosen: list[DeadLetter] = []
            remaining = 0
            for i, letter in enumerate(_pending(dlq, group, (-1, -1))):
                if i % _SCAN_CHUNK == _SCAN_CHUNK - 1:
                    await asyncio.sleep(0)
                if selection.matches(letter):
                    if len(chosen) < max_records:
                        chosen.append(letter)
                    else:
                        remaining += 1
            replayed = 0
            for i in range(0, len(chosen), _PUBLISH_CHUNK):
                chunk = chosen[i : i + _PUBLISH_CHUNK]
                # Durable in the topic before the letters are acked: a crash duplicates.
                await self._publish(topic, [(letter.key, letter.value) for letter in chunk])
                by_partition: dict[int, list[int]] = {}
                for letter in chunk:
                    by_partition.setdefault(letter.partition, []).append(letter.offset)
                for p, offsets in by_partition.items():
                    group.ack_unleased(p, offsets)
                await self._commit(group)
                replayed += len(chunk)
            return replayed, remaining

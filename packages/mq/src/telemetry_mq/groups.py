"""Consumer-group bookkeeping: cursors, leases, delivery counts, redelivery and expiry.

Per (group, partition) a ``Cursor`` tracks::

    committed  every offset below it is done (acked or dead-lettered): the committed offset
    next       offsets at or above it were never delivered (since the last start)
    done       offsets in [committed, next) already acked or dead-lettered
    leased     offsets in [committed, next) held by a live lease
    ready      offsets in [committed, next) waiting for redelivery (a min-heap)
    delayed    nacked offsets waiting out their delay: (not_before, offset) heap

Every offset in [committed, next) is in exactly one of done, leased, ready, delayed, or in a
``Dead`` batch that ``expiry.py`` is settling. Offsets below the partition's start (deleted by
retention while the group was idle) are skipped when the group takes again (``Cursor.skip_to``).

A group is *idle* (``check_idle``) when it has no lease, no waiting fetch and no call for
``group_idle_timeout`` seconds: it then stops holding back-pressure and retention for the
others (``Topic.holders``). The lease-expiry heap holds one entry per live lease plus settled
ones not yet popped, and is rebuilt when those outnumber the live ones.

Everything here is synchronous; ``Broker`` awaits the journal and the dead-letter publishes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LeaseExpiredError
from .journal import Entry, GroupJournal, count_runs, expand, runs
from .log import PartitionLog, Record
from .protocol import FRAME_OVERHEAD

_CLOSED_LEASES_KEPT = 65_536
_HEAP_SLACK = 64
"""Settled leases the expiry heap may hold beyond the live ones before it is rebuilt."""


@dataclass(slots=True)
class Cursor:
    """The state of one group on one partition."""

    committed: int
    next: int
    done: set[int] = field(default_factory=set)
    leased: dict[int, str] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    ready: list[int] = field(default_factory=list)
    delayed: list[tuple[float, int]] = field(default_factory=list)

    def mark_done(self, offsets: Sequence[int]) -> None:
        """Record ``offsets`` as done and advance the committed offset past done ones."""
        counts, errors = self.counts, self.errors
        for o in offsets:
            counts.pop(o, None)
            if errors:
                errors.pop(o, None)
        n = len(offsets)
        committed = self.committed
        if not self.done and n and offsets[0] == committed and offsets[-1] == committed + n - 1:
            self.committed += n  # the common case: the oldest batch acked in full
            return
        done = self.done
        # An offset below committed was skipped (deleted by retention): nothing to record.
        done.update(o for o in offsets if o >= committed)
        while committed in done:
            done.remove(committed)
            committed += 1
        self.committed = committed

    def skip_to(self, start: int) -> None:
        """Records below ``start`` are gone (retention deleted them while the group was idle)."""
        if self.committed >= start:
            return
        self.committed = start
        self.next = max(self.next, start)
        self.done = {o for o in self.done if o >= start}
        self.counts = {o: c for o, c in self.counts.items() if o >= start}
        self.errors = {o: e for o, e in self.errors.items() if o >= start}
        self.ready = [o for o in self.ready if o >= start]
        heapq.heapify(self.ready)
        self.delayed = [d for d in self.delayed if d[1] >= start]
        heapq.heapify(self.delayed)


@dataclass(slots=True)
class Lease:
    """Records of one partition handed to one consumer until ``deadline``."""

    id: str
    partition: int
    remaining: dict[int, None]
    deadline: float
    ack_wait: float


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of a successful take: a new lease and its records with delivery counts."""

    lease: Lease
    records: list[Record]
    counts: list[int]


Dead = tuple[int, list[int]]
"""Records to move to the dead-letter topic: ``(partition, offsets)``."""


class _DeletedJournal:
    """What a deleted group journals to: nothing (its file is being removed)."""

    def append(self, entry: Entry) -> None:
        """Drop the entry."""

    def compact(self) -> None:
        """Nothing to compact."""

    def close(self) -> None:
        """Nothing to close."""

    def prepare(self) -> _NoJob:
        """A job that writes nothing."""
        return _NoJob()


class _NoJob:
    inline = False

    def run(self, fsync: bool) -> float:
        return 0.0

    def write(self) -> int | None:  # pragma: no cover - never inline
        return None

    def synced(self) -> None:  # pragma: no cover - never inline
        pass

    def finish(self, error: BaseException | None) -> None:
        pass


class Group:
    """One consumer group reading one topic.

    ``internal``: the broker's own group (the dead-letter replay), never idle.
    """

    def __init__(
        self,
        topic: str,
        name: str,
        cursors: list[Cursor],
        *,
        journal_path: Path,
        compact_bytes: int,
        max_deliveries: int | None,
        lease_prefix: str,
        internal: bool = False,
    ) -> None:
        self.topic = topic
        self.name = name
        self.cursors = cursors
        self.max_deliveries = max_deliveries
        self.internal = internal
        self.deleted = False
        self.idle = False
        self.last_active = 0.0
        self.waiting = 0  # fetches of this group waiting for records (long-polls)
        self.leases: dict[str, Lease] = {}
        self._closed: OrderedDict[str, bool] = OrderedDict()  # lease id -> expired?
        self._expiry: list[tuple[float, str]] = []
        self._rr = 0
        self._seq = itertools.count(1)
        self._lease_prefix = lease_prefix
        self.journal: GroupJournal | _DeletedJournal = GroupJournal(
            journal_path, self.snapshot, compact_bytes=compact_bytes
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def touch(self, now: float) -> None:
        """A consumer called: the group is active (it holds back-pressure and retention)."""
        self.last_active = now
        self.idle = False

    def check_idle(self, now: float, timeout: float | None) -> bool:
        """Mark the group idle if nobody used it for ``timeout`` seconds; return ``idle``."""
        self.idle = (
            timeout is not None
            and not self.internal
            and not self.leases
            and not self.waiting
            and now - self.last_active > timeout
        )
        return self.idle

    def delete(self) -> GroupJournal | None:
        """Stop journaling (the group is being deleted); return the journal to remove."""
        self.deleted = True
        journal = self.journal
        self.journal = _DeletedJournal()
        return journal if isinstance(journal, GroupJournal) else None

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self) -> Entry:
        """A journal entry holding the whole durable state."""
        parts: dict[str, list[object]] = {}
        for p, cur in enumerate(self.cursors):
            parts[str(p)] = [
                cur.committed,
                runs(sorted(cur.done)),
                count_runs(sorted(cur.counts.items())),
            ]
        return ["S", parts]

    @staticmethod
    def replay(entries: list[Entry], logs: Sequence[PartitionLog]) -> list[Cursor]:
        """Rebuild cursors from journal entries; unacked delivered records become available.

        A committed offset past the partition's end (the log came back shorter than what the
        group had acked: a power loss under ``fsync=interval``/``never``) is brought back to
        the end, so the records published from there on are delivered.
        """
        cursors = Group._replay(entries, logs)
        for cur, plog in zip(cursors, logs, strict=True):
            end = plog.next_offset
            if cur.committed > end or any(o >= end for o in cur.done):
                cur.committed = min(cur.committed, end)
                cur.done = {o for o in cur.done if o < end}
                cur.counts = {o: c for o, c in cur.counts.items() if o < end}
                cur.next = cur.committed
        return cursors

    @staticmethod
    def _replay(entries: list[Entry], logs: Sequence[PartitionLog]) -> list[Cursor]:
        cursors = [Cursor(plog.start_offset, plog.start_offset) for plog in logs]
        for entry in entries:
            kind = entry[0]
            if kind == "S":
                for p_str, (committed, done, counts) in entry[1].items():
                    cur = Cursor(committed, committed)
                    cur.done.update(expand(done))
                    for start, end, count in counts:
                        for o in range(start, end):
                            cur.counts[o] = count
                    cursors[int(p_str)] = cur
            elif kind in ("A", "X"):
                cur = cursors[entry[1]]
                offsets = [o for o in expand(entry[2]) if o >= cur.committed]
                cur.mark_done(offsets)
            elif kind == "D":
                cur = cursors[entry[1]]
                for start, end, count in entry[2]:
                    for o in range(max(start, cur.committed), end):
                        if o in cur.done:
                            continue
                        if count:
                            cur.counts[o] = count
                        else:  # a release took the only delivery back
                            cur.counts.pop(o, None)
        for cur, plog in zip(cursors, logs, strict=True):
            # Records deleted by retention were consumed by every group; never go below them.
            if cur.committed < plog.start_offset:
                cur.committed = plog.start_offset
                cur.done = {o for o in cur.done if o >= cur.committed}
            cur.counts = {o: c for o, c in cur.counts.items() if o >= cur.committed}
            cur.next = cur.committed
            while cur.next in cur.done:  # pragma: no cover - mark_done keeps this empty
                cur.next += 1
        return cursors

    # -- fetch ------------------------------------------------------------------------------

    def take(
        self,
        logs: Sequence[PartitionLog],
        now: float,
        *,
        max_records: int,
        max_bytes: int,
        ack_wait: float,
        skip: Container[int] = (),
    ) -> Taken | None:
        """Lease the next available records of one partition, round-robin across partitions.

        Partitions in ``skip`` are passed over (a multi fetch leases each partition once).
        Records due for redelivery come first; either way the records read stay within
        ``max_records`` and about ``max_bytes`` (at least one record is read).
        """
        n = len(self.cursors)
        for i in range(n):
            p = (self._rr + i) % n
            if p in skip:
                continue
            cur = self.cursors[p]
            plog = logs[p]
            if cur.committed < plog.start_offset:
                cur.skip_to(plog.start_offset)
            while cur.delayed and cur.delayed[0][0] <= now:
                heapq.heappush(cur.ready, heapq.heappop(cur.delayed)[1])
            records: list[Record]
            if cur.ready:
                records = self._read_ready(plog, cur, max_records, max_bytes)
            elif max(cur.next, cur.committed) < logs[p].durable_offset:
                # After a restart, acks above the committed offset can move it past ``next``.
                cur.next = max(cur.next, cur.committed)
                records = logs[p].read(cur.next, max_records, max_bytes)
                cur.next = records[-1][0] + 1
                if cur.done:
                    records = [r for r in records if r[0] not in cur.done]
                    if not records:
                        continue
            else:
                continue
            self._rr = p + 1
            return self._lease(p, cur, records, now, ack_wait)
        return None

    @staticmethod
    def _read_ready(
        plog: PartitionLog, cur: Cursor, max_records: int, max_bytes: int
    ) -> list[Record]:
        """Pop ready offsets, lowest first, while their records fit the budget; read them.

        As ``PartitionLog.read``: the first record is read whatever its size, the others
        only while they fit ``max_bytes``.
        """
        ready = cur.ready
        out: list[Record] = []
        budget = max_bytes
        while ready and len(out) < max_records:
            # A run of consecutive ready offsets is read in one go.
            start = end = heapq.heappop(ready)
            end += 1
            limit = start + max_records - len(out)
            while ready and ready[0] == end and end < limit:
                heapq.heappop(ready)
                end += 1
            got = plog.read(start, end - start, budget)
            taken = 0
            for r in got:
                size = FRAME_OVERHEAD + len(r[2]) + len(r[3])
                if size > budget and (out or taken):
                    break
                budget -= size
                taken += 1
            out.extend(got[:taken])
            for o in range(start + taken, end):  # not read: over the budget, segment end
                heapq.heappush(ready, o)
            if taken < len(got) or not got or budget <= 0:
                break
        return out

    def _lease(
        self, p: int, cur: Cursor, records: list[Record], now: float, ack_wait: float
    ) -> Taken:
        lease_id = f"{self._lease_prefix}{next(self._seq):x}"
        counts_map, leased = cur.counts, cur.leased
        counts: list[int] = []
        remaining: dict[int, None] = {}
        for r in records:
            o = r[0]
            c = counts_map.get(o, 0) + 1
            counts_map[o] = c
            counts.append(c)
            leased[o] = lease_id
            remaining[o] = None
        lease = Lease(lease_id, p, remaining, now + ack_wait, ack_wait)
        self.leases[lease_id] = lease
        heapq.heappush(self._expiry, (lease.deadline, lease_id))  # its one entry (see expire)
        self.journal.append(["D", p, count_runs(zip(remaining, counts, strict=True))])
        return Taken(lease, records, counts)

    def next_due(self) -> float | None:
        """The earliest lease deadline or nack delay end, if any (to bound a long-poll)."""
        due = [self._expiry[0][0]] if self._expiry else []
        due.extend(cur.delayed[0][0] for cur in self.cursors if cur.delayed)
        return min(due) if due else None

    # -- lease outcomes -----------------------------------------------------------------------

    def _get(self, lease_id: str) -> Lease | None:
        lease = self.leases.get(lease_id)
        if lease is None and self._closed.get(lease_id) is not False:
            raise LeaseExpiredError(self.topic, self.name, lease_id)
        return lease  # None: the lease was already settled in full (a retried call)

    def _close(self, lease: Lease, *, expired: bool) -> None:
        del self.leases[lease.id]
        self._closed[lease.id] = expired
        if len(self._closed) > _CLOSED_LEASES_KEPT:
            self._closed.popitem(last=False)
        if len(self._expiry) > 2 * len(self.leases) + _HEAP_SLACK:
            # Settled leases keep their heap entry until popped: drop them all at once, so the
            # heap stays within twice the live leases (amortised O(1) per settle).
            self._expiry = [(lease.deadline, lease.id) for lease in self.leases.values()]
            heapq.heapify(self._expiry)

    @property
    def timers(self) -> int:
        """Entries in the lease-expiry heap (bounded by about twice the live leases)."""
        return len(self._expiry)

    def _select(self, lease: Lease, offsets: Sequence[int] | None) -> list[int]:
        if offsets is None:
            chosen = list(lease.remaining)
            lease.remaining.clear()
        else:
            chosen = sorted({o for o in offsets if o in lease.remaining})
            for o in chosen:
                del lease.remaining[o]
        if not lease.remaining:
            self._close(lease, expired=False)
        return chosen

    def ack(self, lease_id: str, offsets: Sequence[int] | None) -> int:
        """Ack the lease's records (all or ``offsets``); return how many were newly acked."""
        lease = self._get(lease_id)
        if lease is None:
            return 0
        chosen = self._select(lease, offsets)
        if chosen:
            cur = self.cursors[lease.partition]
            for o in chosen:
                del cur.leased[o]
            cur.mark_done(chosen)
            self.journal.append(["A", lease.partition, runs(chosen)])
        return len(chosen)

    def nack(
        self,
        lease_id: str,
        offsets: Sequence[int] | None,
        now: float,
        *,
        delay: float = 0.0,
        error: str | None = None,
    ) -> tuple[int, Dead | None]:
        """Release records for redelivery after ``delay``; return (count, dead-letters)."""
        lease = self._get(lease_id)
        if lease is None:
            return 0, None
        chosen = self._select(lease, offsets)
        return len(chosen), self._release(lease.partition, chosen, now, delay, error)

    def release(
        self, lease_id: str, offsets: Sequence[int] | None, now: float, *, delay: float = 0.0
    ) -> int:
        """Hand records back without spending a delivery; return how many.

        For a consumer that could not even try (its database is away): the delivery counted
        when the records were leased is taken back, so they come again (after ``delay``) with
        the count they had, and a long outage never dead-letters them.
        """
        lease = self._get(lease_id)
        if lease is None:
            return 0
        chosen = self._select(lease, offsets)
        if not chosen:
            return 0
        cur = self.cursors[lease.partition]
        counts = cur.counts
        new_counts: list[tuple[int, int]] = []
        for o in chosen:
            del cur.leased[o]
            c = counts.get(o, 1) - 1
            if c > 0:
                counts[o] = c
            else:
                counts.pop(o, None)
            new_counts.append((o, c))
            if delay > 0:
                heapq.heappush(cur.delayed, (now + delay, o))
            else:
                heapq.heappush(cur.ready, o)
        self.journal.append(["D", lease.partition, count_runs(new_counts)])
        return len(chosen)

    def reject(
        self, lease_id: str, offsets: Sequence[int] | None, *, error: str | None = None
    ) -> Dead | None:
        """Take records out of the lease to dead-letter them now."""
        lease = self._get(lease_id)
        if lease is None:
            return None
        chosen = self._select(lease, offsets)
        cur = self.cursors[lease.partition]
        for o in chosen:
            del cur.leased[o]
            if error is not None:
                cur.errors[o] = error
        return (lease.partition, chosen) if chosen else None

    def extend(self, lease_id: str, ack_wait: float, now: float) -> float:
        """Push the lease's deadline to ``now + ack_wait``; return the new deadline."""
        lease = self._get(lease_id)
        if lease is None:
            return now
        # No new heap entry: ``expire`` finds the lease's entry and puts it back, later.
        lease.deadline = now + ack_wait
        return lease.deadline

    def expire(self, now: float) -> tuple[int, list[Dead]]:
        """Expire leases past their deadline: redeliver, or dead-letter past ``max_deliveries``.

        Returns the number of records whose lease expired and those to dead-letter.
        """
        dead: list[Dead] = []
        expired = 0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            deadline, lease_id = heapq.heappop(expiry)
            lease = self.leases.get(lease_id)
            if lease is None:
                continue  # settled
            if lease.deadline > deadline:  # extended: its one entry moves to the new deadline
                heapq.heappush(expiry, (lease.deadline, lease_id))
                continue
            chosen = list(lease.remaining)
            expired += len(chosen)
            self._close(lease, expired=True)
            d = self._release(lease.partition, sorted(chosen), now, 0.0, "lease expired")
            if d is not None:
                dead.append(d)
        return expired, dead

    def _release(
        self, p: int, offsets: list[int], now: float, delay: float, error: str | None
    ) -> Dead | None:
        cur = self.cursors[p]
        dead: list[int] = []
        limit = self.max_deliveries
        for o in offsets:
            del cur.leased[o]
            if o < cur.committed:
                continue  # deleted by retention meanwhile (see Cursor.skip_to)
            if error is not None:
                cur.errors[o] = error
            if limit is not None and cur.counts.get(o, 0) >= limit:
                dead.append(o)
            elif delay > 0:
                heapq.heappush(cur.delayed, (now + delay, o))
            else:
                heapq.heappush(cur.ready, o)
        return (p, dead) if dead else None

    def restore(self, dead: Dead) -> None:
        """Put records back for redelivery (their dead-letter publish failed).

        Their delivery count goes back below the maximum, so the next delivery is the last
        one again (not one past it) and its failure tries the dead-letter topic again.
        """
        p, offsets = dead
        cur = self.cursors[p]
        counts = cur.counts
        cap = None if self.max_deliveries is None else self.max_deliveries - 1
        lowered: list[tuple[int, int]] = []
        for o in offsets:
            heapq.heappush(cur.ready, o)
            c = counts.get(o, 0)
            if cap is not None and c > cap:
                if cap:
                    counts[o] = cap
                else:  # max_deliveries 1: as if never delivered (a "D" count 0 says so)
                    counts.pop(o, None)
                lowered.append((o, cap))
        if lowered:
            self.journal.append(["D", p, count_runs(lowered)])

    def ack_unleased(self, p: int, offsets: Sequence[int]) -> None:
        """Mark records never leased as done (the dead-letter replay group's acks)."""
        cur = self.cursors[p]
        chosen = sorted(o for o in set(offsets) if o >= cur.committed and o not in cur.done)
        if chosen:
            cur.mark_done(chosen)
            self.journal.append(["A", p, runs(chosen)])

    def pending(self, logs: Sequence[PartitionLog]) -> list[tuple[int, int, set[int]]]:
        """Per partition, ``(first, end, done)``: the offsets in [first, end) not in ``done``
        are the records this group has not settled (clamped to what retention kept)."""
        out: list[tuple[int, int, set[int]]] = []
        for cur, plog in zip(self.cursors, logs, strict=True):
            first = max(cur.committed, plog.start_offset)
            out.append((first, plog.next_offset, cur.done))
        return out

    def mark_dead(self, dead: Dead) -> None:
        """Records are safely in the dead-letter topic: they count as done."""
        p, offsets = dead
        self.cursors[p].mark_done(offsets)
        self.journal.append(["X", p, runs(offsets)])

    # -- stats --------------------------------------------------------------------------------

    def lag(self, logs: Sequence[PartitionLog]) -> list[int]:
        """Records not yet done per partition (end offset minus committed offset)."""
        return [
            plog.next_offset - max(cur.committed, plog.start_offset)
            for plog, cur in zip(logs, self.cursors, strict=True)
        ]

    def in_flight(self) -> int:
        """Records currently under a lease."""
        return sum(len(cur.leased) for cur in self.cursors)

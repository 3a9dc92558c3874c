"""Consumer-group bookkeeping: cursors, leases, delivery counts, redelivery and expiry.

Per (group, partition) a ``Cursor`` tracks::

    committed  every offset below it is done (acked or dead-lettered): the committed offset
    next       offsets at or above it were never delivered (since the last start)
    done       offsets in [committed, next) already acked or dead-lettered
    leased     offsets in [committed, next) held by a live lease
    ready      offsets in [committed, next) waiting for redelivery (a min-heap)
    delayed    nacked offsets waiting out their delay: (not_before, offset) heap

Everything here is synchronous; ``Broker`` awaits the journal and the dead-letter publishes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LeaseExpiredError
from .journal import Entry, GroupJournal, count_runs, expand, runs
from .log import PartitionLog, Record

_CLOSED_LEASES_KEPT = 65_536


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
        if (
            not self.done
            and n
            and offsets[0] == self.committed
            and offsets[-1] == self.committed + n - 1
        ):
            self.committed += n  # the common case: the oldest batch acked in full
            return
        done = self.done
        done.update(offsets)
        committed = self.committed
        while committed in done:
            done.remove(committed)
            committed += 1
        self.committed = committed


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


class Group:
    """One consumer group reading one topic."""

    def __init__(
        self,
        topic: str,
        name: str,
        cursors: list[Cursor],
        *,
        journal_path: Path,
        compact_bytes: int,
        max_deliveries: int,
        lease_prefix: str,
    ) -> None:
        self.topic = topic
        self.name = name
        self.cursors = cursors
        self.max_deliveries = max_deliveries
        self.leases: dict[str, Lease] = {}
        self._closed: OrderedDict[str, bool] = OrderedDict()  # lease id -> expired?
        self._expiry: list[tuple[float, str]] = []
        self._rr = 0
        self._seq = itertools.count(1)
        self._lease_prefix = lease_prefix
        self.journal = GroupJournal(journal_path, self.snapshot, compact_bytes=compact_bytes)

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
        """Rebuild cursors from journal entries; unacked delivered records become available."""
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
    ) -> Taken | None:
        """Lease the next available records of one partition, round-robin across partitions."""
        n = len(self.cursors)
        for i in range(n):
            p = (self._rr + i) % n
            cur = self.cursors[p]
            while cur.delayed and cur.delayed[0][0] <= now:
                heapq.heappush(cur.ready, heapq.heappop(cur.delayed)[1])
            records: list[Record]
            if cur.ready:
                offsets = [
                    heapq.heappop(cur.ready) for _ in range(min(max_records, len(cur.ready)))
                ]
                records = logs[p].read_offsets(offsets)
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
        heapq.heappush(self._expiry, (lease.deadline, lease_id))
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
        lease.deadline = now + ack_wait
        heapq.heappush(self._expiry, (lease.deadline, lease.id))
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
            if lease is None or lease.deadline != deadline:
                continue  # settled, or extended (a later heap entry holds it)
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
        for o in offsets:
            del cur.leased[o]
            if error is not None:
                cur.errors[o] = error
            if cur.counts.get(o, 0) >= self.max_deliveries:
                dead.append(o)
            elif delay > 0:
                heapq.heappush(cur.delayed, (now + delay, o))
            else:
                heapq.heappush(cur.ready, o)
        return (p, dead) if dead else None

    def restore(self, dead: Dead) -> None:
        """Put records back for redelivery (their dead-letter publish failed)."""
        cur = self.cursors[dead[0]]
        for o in dead[1]:
            heapq.heappush(cur.ready, o)

    def mark_dead(self, dead: Dead) -> None:
        """Records are safely in the dead-letter topic: they count as done."""
        p, offsets = dead
        self.cursors[p].mark_done(offsets)
        self.journal.append(["X", p, runs(offsets)])

    # -- stats --------------------------------------------------------------------------------

    def lag(self, logs: Sequence[PartitionLog]) -> list[int]:
        """Records not yet done per partition (end offset minus committed offset)."""
        return [
            plog.next_offset - cur.committed for plog, cur in zip(logs, self.cursors, strict=True)
        ]

    def in_flight(self) -> int:
        """Records currently under a lease."""
        return sum(len(cur.leased) for cur in self.cursors)

"""Fetching: the long-poll loop, and leasing within the record, byte and in-flight budgets.

Invariants:

- One call leases each partition at most once: a fetch one batch, a multi fetch one batch
  (lease) per partition, round robin.
- The records of one call stay within ``max_records`` and about ``max_bytes`` (each lease
  reads at least one record, so the bytes can overshoot by one record), records due for
  redelivery included (``Group.take``).
- A group never has more than ``max_in_flight_records`` records leased: a call takes at most
  the room left and, with no room, raises ``LeaseLimitError`` (429) instead of leasing.
- No lost wake-up: a fetch that found nothing registers as a waiter with no await in between;
  new records wake one waiter per group (``Topic.notify``), a waiter that then takes records
  wakes the next one, and a woken waiter cancelled before taking passes its wake on
  (``topic.Waiters``).
- A fetch of a topic that a storage error failed answers that error, also when the failure
  happens while it waits (``Topic.notify_all`` wakes it).
- A fetch touches its group (it is active) and counts as waiting while it waits, so a group
  with an open long-poll is never idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .commit import Unit
from .config import BrokerConfig
from .errors import LeaseLimitError
from .expiry import Expiry
from .groups import Group
from .protocol import FRAME_OVERHEAD, Batch, Delivery
from .stats import Observer
from .topic import Topic


class Fetcher:
    """Serves fetches: waits for records, expires leases on the way, leases batches."""

    def __init__(
        self,
        *,
        config: BrokerConfig,
        clock: Callable[[], float],
        observer: Observer,
        expiry: Expiry,
        request_commit: Callable[[Unit], object],
        stopping: Callable[[], bool],
    ) -> None:
        self._config = config
        self._clock = clock
        self._observer = observer
        self._expiry = expiry
        self._request_commit = request_commit
        self._stopping = stopping

    async def fetch(
        self,
        t: Topic,
        g: Group,
        *,
        max_records: int,
        max_wait: float,
        ack_wait: float,
        max_bytes: int,
        multi: bool,
    ) -> list[Batch]:
        """Lease records of one partition (``multi``: of several), waiting up to ``max_wait``.

        ``[]`` when none came in time, the broker drains or closes, or the group is deleted.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max_wait
        waiters = t.waiters_of(g.name)
        while not (self._stopping() or g.deleted or t.failed):
            g.touch(self._clock())
            await self._expiry.expire(t, g)
            if self._stopping() or g.deleted or t.failed:
                break
            now = self._clock()
            batches = self.take(
                t, g, now, max_records, max_bytes, ack_wait, len(t.logs) if multi else 1
            )
            if batches:
                waiters.wake_one()  # more may be left: the next waiter looks
                return batches
            remaining = give_up - loop.time()
            if remaining <= 0:
                return []
            due = g.next_due()
            if due is not None:
                remaining = min(remaining, max(due - now, 0.001))
            g.waiting += 1
            try:
                await waiters.wait(remaining)
            finally:
                g.waiting -= 1
        if t.failed is not None:
            raise t.failed  # a storage error failed the topic while this fetch waited
        return []

    def take(
        self,
        t: Topic,
        g: Group,
        now: float,
        max_records: int,
        max_bytes: int,
        ack_wait: float,
        max_batches: int,
    ) -> list[Batch]:
        """Lease up to ``max_batches`` batches, round robin, within the record and byte budget.

        Each partition is leased at most once. Raises ``LeaseLimitError`` when the group has
        no room left for records in flight.
        """
        limit = self._config.max_in_flight_records
        room = limit - g.in_flight()
        if room <= 0:
            raise LeaseLimitError(t.name, g.name, limit=limit, retry_after=self._config.retry_after)
        max_records = min(max_records, room)
        batches: list[Batch] = []
        taken_from: set[int] = set()
        fetched = redelivered = 0
        while len(batches) < max_batches and max_records > 0 and max_bytes > 0:
            taken = g.take(
                t.logs,
                now,
                max_records=max_records,
                max_bytes=max_bytes,
                ack_wait=ack_wait,
                skip=taken_from,
            )
            if taken is None:
                break
            taken_from.add(taken.lease.partition)
            counts = taken.counts
            fetched += len(counts)
            redelivered += sum(1 for c in counts if c > 1)
            max_records -= len(counts)
            max_bytes -= sum(FRAME_OVERHEAD + len(k) + len(v) for _, _, k, v in taken.records)
            batches.append(
                Batch(
                    t.name,
                    g.name,
                    taken.lease.partition,
                    taken.lease.id,
                    ack_wait,
                    [
                        Delivery(o, k, v, ts, c)
                        for (o, ts, k, v), c in zip(taken.records, counts, strict=True)
                    ],
                )
            )
        if batches:
            self._request_commit(g.journal)  # delivery counts: written, not awaited
            self._observer.fetched(t.name, g.name, fetched, redelivered)
        return batches

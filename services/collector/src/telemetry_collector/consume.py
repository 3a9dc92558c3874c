"""The worker loops: fetch batches, store each round in one transaction, then ack. Never ack first.

A fault of the database is not a fault of the data (``faults.classify``):

- **Transient** (the database is away, read-only, out of connections, timed out): the round's
  leases are released without spending a delivery, every worker stops fetching, ``/readyz``
  says why, and one recovery loop probes the database with backoff; the workers resume when
  it answers. An outage of any length dead-letters nothing.
- **Record-level** (PostgreSQL refuses some values): the round is split in halves, each
  stored in its own transaction, until the refused records stand alone. Everything else is
  stored and acked; only those records go to the dead-letter topic, each with the database's
  message as the reason.

Records that do not decode are dead-lettered at once, before any store.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import aiopg
from telemetry_kit import wait_or_stop
from telemetry_model import Datapoint, DecodeError, decode
from telemetry_mq import Batch, BrokerClient
from telemetry_store import describe, migrate_when_reachable

from .faults import Fault, classify, reason
from .metrics import CollectorMetrics
from .store import Registry, store_batch

log = logging.getLogger(__name__)

# The recovery loop's probe: the database answers and takes writes (a standby or
# default_transaction_read_only answers reads only).
_PROBE = "SELECT current_setting('transaction_read_only') = 'off'"


class _Item(NamedTuple):
    """One decoded record of a round (a tuple: built for every record, several times faster
    than a frozen dataclass)."""

    batch: Batch
    offset: int
    point: Datapoint
    encoded: bytes


@dataclass(slots=True)
class _Round:
    """What storing one round has done so far."""

    inserted: int = 0
    stored: int = 0  # records in committed transactions (new, duplicate or expired)
    expired: int = 0  # older than the raw retention's horizon: refused, acked
    late: int = 0
    transactions: int = 0
    oldest_age_us: int | None = None  # of the oldest datapoint committed, at its commit
    poison: list[tuple[_Item, BaseException]] = field(default_factory=list)


class _UnavailableError(Exception):
    """The database failed for a reason of its own; the round must wait for it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error))
        self.error = error


class Consumer:
    """All the worker loops of one collector process."""

    def __init__(
        self,
        *,
        broker: BrokerClient,
        pool: aiopg.Pool,
        metrics: CollectorMetrics,
        topic: str,
        group: str,
        batch_size: int,
        max_wait: float,
        ack_wait: float,
        probe_timeout: float = 5.0,
        max_backoff: float = 5.0,
        max_future_skew: float | None = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (seconds since the epoch) times each commit for the freshness metrics."""
        self._broker = broker
        self._pool = pool
        self._metrics = metrics
        self._topic = topic
        self._group = group
        self._batch_size = batch_size
        self._max_wait = max_wait
        self._ack_wait = ack_wait
        self._probe_timeout = probe_timeout
        self._max_backoff = max_backoff
        self._max_future_skew = max_future_skew
        self._clock = clock
        self._registry = Registry()
        # Set while the workers may fetch; cleared by a transient fault until the database is back.
        self._available = asyncio.Event()
        self._available.set()
        self._recovery: asyncio.Task[None] | None = None
        self._outages = 0  # consecutive pauses without a stored round between them
        self.healthy = False
        self.unavailable: str | None = "the database is not migrated yet"
        metrics.database_up.labels(topic).set(0)

    async def run(self, stop: asyncio.Event, workers: int, migrate: bool = True) -> None:
        """Run ``workers`` loops until ``stop`` is set; each finishes its batch first.

        Nothing is fetched before the database answers (and is migrated, with ``migrate``).
        """
        if not await migrate_when_reachable(self._pool, stop, apply=migrate):
            return
        self._mark_available()
        await asyncio.gather(*(self._worker(i, stop) for i in range(workers)))
        if self._recovery is not None:
            await self._recovery

    async def _worker(self, index: int, stop: asyncio.Event) -> None:
        failures = 0
        # Committed batches whose acks ride on the next fetch: one round trip per fetch, which
        # leases records of several partitions (one batch each) at once.
        done: list[Batch] = []
        while not stop.is_set():
            if not self._available.is_set():
                # Stop fetching: ack what is committed, then wait for the database.
                done = await self._ack_now(done, index)
                await self.wait_for_database(stop)
                continue
            try:
                batches = await self._broker.fetch_many(
                    self._topic,
                    self._group,
                    max_records=self._batch_size,
                    max_wait=self._max_wait,
                    ack_wait=self._ack_wait,
                    ack=done or None,
                )
            except Exception:
                # ``done`` is kept: the next fetch sends the same acks again (safe to repeat).
                self.healthy = False
                failures += 1
                log.exception("fetch failed (worker %d)", index)
                await wait_or_stop(stop, _backoff(failures, self._max_backoff))
                continue
            done = []
            self.healthy = True
            failures = 0
            if batches and await self.handle(*batches):
                done = batches
        await self._ack_now(done, index)

    async def _ack_now(self, done: list[Batch], index: int) -> list[Batch]:
        for batch in done:
            try:
                await self._broker.ack(batch)
            except Exception:
                # Stored already: the redelivery is absorbed by the idempotent insert.
                log.exception("ack failed (worker %d); the batch will be redelivered", index)
        return []

    async def handle(self, *batches: Batch) -> bool:
        """Store fetched batches (one round); True if stored, False if handed back.

        Records that do not decode, or that the database refuses, go to the dead-letter
        topic; the rest is stored. When the database fails for a reason of its own, every
        lease is released without spending a delivery and the workers pause. The caller acks
        stored batches (after the commit, never before): the worker loop piggybacks the acks
        on its next fetch.
        """
        began = time.perf_counter()
        items: list[_Item] = []
        rejected = 0
        for batch in batches:
            invalid: list[int] = []
            reasons: list[str] = []
            for record in batch.records:
                try:
                    point = decode(record.value, max_future_skew=self._max_future_skew)
                except DecodeError as e:
                    invalid.append(record.offset)
                    reasons.append(f"offset {record.offset}: {e}")
                    continue
                items.append(_Item(batch, record.offset, point, record.value))
            if invalid:
                rejected += await self._reject(batch, invalid, "; ".join(reasons)[:1000])
        work = _Round()
        if not self._available.is_set():
            outcome = "released"  # another worker found the database away meanwhile
        else:
            try:
                await self._store(items, work)
            except _UnavailableError as e:
                self._mark_unavailable(e.error)
                outcome = "released"
            else:
                outcome = "stored"
                self._outages = 0
        for item, error in work.poison:
            rejected += await self._reject(item.batch, [item.offset], reason(error))
        self._metrics.stored.labels(self._topic).inc(work.inserted)
        self._metrics.duplicates.labels(self._topic).inc(work.stored - work.inserted - work.expired)
        self._metrics.expired.labels(self._topic).inc(work.expired)
        self._metrics.late.labels(self._topic).inc(work.late)
        if outcome == "released":
            # Stored parts of the round come back too; the idempotent insert absorbs them.
            await self._release(batches)
        self._log_round(batches, outcome, work, rejected, time.perf_counter() - began)
        return outcome == "stored"

    async def _store(self, items: Sequence[_Item], work: _Round) -> None:
        """Store ``items``; isolate the records the database refuses into ``work.poison``.

        Raises ``_UnavailableError`` for a fault of the environment; ``work.poison`` then keeps
        only the records the database itself blamed (data exceptions, integrity violations).
        """
        try:
            error = await self._attempt(items, work)
            if error is None:
                return
            await self._isolate(items, error, work)
        except _UnavailableError:
            work.poison = [(i, e) for i, e in work.poison if classify(e) is Fault.RECORD]
            raise
        others = [e for _, e in work.poison if classify(e) is not Fault.RECORD]
        if others and work.stored == 0:
            # Not one record stored and the database did not blame the data (a missing table,
            # a broken trigger): a fault of the environment, not of these records.
            work.poison = [(i, e) for i, e in work.poison if classify(e) is Fault.RECORD]
            raise _UnavailableError(others[0])
        log.warning(
            "the database refuses %d of %d records; dead-lettering only those (%d transactions)",
            len(work.poison),
            len(items),
            work.transactions,
            extra={"topic": self._topic, "group": self._group, "error": reason(error)},
        )

    async def _attempt(self, items: Sequence[_Item], work: _Round) -> BaseException | None:
        """Store ``items`` in one transaction: ``None`` if committed, else the record-level or
        unknown error; raise ``_UnavailableError`` on a transient one."""
        if not items:
            return None
        work.transactions += 1
        try:
            committed = await store_batch(
                self._pool,
                self._registry,
                [i.point for i in items],
                [i.encoded for i in items],
            )
        except Exception as e:
            if classify(e) is Fault.TRANSIENT:
                raise _UnavailableError(e) from e
            return e
        self._observe_commit(items, committed.bounds.accept_us, work)
        result = committed.stored
        work.inserted += result.inserted
        work.expired += result.expired
        work.late += result.late
        work.stored += len(items)
        return None

    def _observe_commit(self, items: Sequence[_Item], accept_us: int, work: _Round) -> None:
        """Freshness: the commit just now, minus each stored datapoint's processing time.

        Datapoints refused as past the retention's horizon were not stored and do not count.
        A redelivered datapoint counts again, at its later commit: its first commit is not
        known here (the insert only reports how many rows were new).
        """
        commit_us = round(self._clock() * 1_000_000)
        times = [i.point.ts_us for i in items]
        if min(times) < accept_us:
            times = [t for t in times if t >= accept_us]
            if not times:
                return
        self._metrics.freshness.observe_committed(self._topic, times, commit_us)
        oldest = max(0, commit_us - min(times))
        self._metrics.round_oldest_age.labels(self._topic).observe(oldest / 1_000_000)
        work.oldest_age_us = max(oldest, work.oldest_age_us or 0)

    async def _isolate(self, items: Sequence[_Item], error: BaseException, work: _Round) -> None:
        """``items`` failed with ``error``: bisect until each failing record stands alone."""
        if len(items) == 1:
            work.poison.append((items[0], error))
            return
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            failed = await self._attempt(half, work)
            if failed is not None:
                await self._isolate(half, failed, work)

    async def _reject(self, batch: Batch, offsets: list[int], why: str) -> int:
        try:
            await self._broker.reject(batch, offsets=offsets, error=why)
        except Exception:
            log.exception("reject failed; the records will be redelivered and tried again")
            return 0
        self._metrics.rejected.labels(self._topic).inc(len(offsets))
        return len(offsets)

    async def _release(self, batches: Sequence[Batch]) -> None:
        """Hand the leases back without spending a delivery."""
        for batch in batches:
            try:
                released = await self._broker.release(batch)
            except Exception:
                log.exception("release failed; the lease will expire and count a delivery")
                continue
            self._metrics.released.labels(self._topic).inc(released)

    def _mark_unavailable(self, error: BaseException) -> None:
        if self._available.is_set():
            self._outages += 1
            log.warning(
                "the database is unavailable (%s): pausing every worker, leases handed back",
                describe(error),
            )
            self._metrics.pauses.labels(self._topic).inc()
        self._available.clear()
        self.unavailable = describe(error)
        self._metrics.database_up.labels(self._topic).set(0)

    def _mark_available(self) -> None:
        self.unavailable = None
        self._available.set()
        self._metrics.database_up.labels(self._topic).set(1)

    async def wait_for_database(self, stop: asyncio.Event) -> None:
        """Wait (with every other paused worker) until the database answers or ``stop``."""
        if self._available.is_set():
            return
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(stop))
        await asyncio.shield(self._recovery)

    async def _recover(self, stop: asyncio.Event) -> None:
        """Probe the database with backoff until it takes writes again."""
        attempt = self._outages
        while not stop.is_set():
            if await wait_or_stop(stop, _backoff(attempt, self._max_backoff)):
                return
            attempt += 1
            try:
                # The pool's idle connections most likely died with the server.
                await self._pool.clear()
                async with asyncio.timeout(self._probe_timeout):
                    writable = await self._probe()
            except Exception as e:
                self.unavailable = describe(e)
                log.info("database still unavailable: %s", self.unavailable)
                continue
            if not writable:
                self.unavailable = "the database is read-only"
                log.info("database still unavailable: %s", self.unavailable)
                continue
            log.info("the database answers again; resuming")
            self._mark_available()
            return

    async def _probe(self) -> bool:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(_PROBE)
            row = await cur.fetchone()
        return bool(row[0])

    def _log_round(
        self,
        batches: Sequence[Batch],
        outcome: str,
        work: _Round,
        rejected: int,
        duration: float,
    ) -> None:
        self._metrics.batches.labels(self._topic, self._group, outcome).inc(len(batches))
        self._metrics.batch_seconds.labels(self._topic).observe(duration)
        log.info(
            "batches %s",
            outcome,
            extra={
                "topic": self._topic,
                "group": self._group,
                # partition:first-last offset of each batch
                "offsets": " ".join(
                    f"{b.partition}:{b.records[0].offset}-{b.records[-1].offset}"
                    for b in batches
                    if b.records
                ),
                "delivery_count": max(
                    (r.delivery_count for b in batches for r in b.records), default=0
                ),
                "outcome": outcome,
                "records": sum(len(b.records) for b in batches),
                "inserted": work.inserted,
                "expired": work.expired,
                "rejected": rejected,
                # freshness of the round's oldest stored datapoint (None: nothing stored)
                "oldest_age_ms": None
                if work.oldest_age_us is None
                else round(work.oldest_age_us / 1000, 1),
                "duration_ms": round(duration * 1000, 1),
            },
        )


def _backoff(failures: int, cap: float) -> float:
    return min(cap, 0.2 * 2.0 ** min(failures, 8)) * random.uniform(0.5, 1.0)

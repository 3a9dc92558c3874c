"""The broker core's façade: topics of partition logs, consumer groups with leases, backpressure.

Pure asyncio plus files; the HTTP service in ``telemetry_broker`` is a thin layer over it.
Fsyncs run in the fsync helper process or the committer's worker threads; reads are ``pread``
calls on the event loop (a fetch reads at most ``max_fetch_bytes``, normally from the page cache;
known gap: records redelivered after a nack or an expiry are read past that bound).
``Broker`` holds the topics, the committer, the config, the clocks and the observer, and serves
publish, fetch and the lease outcomes; each other responsibility has a module of its own, whose
docstring states its invariants:

- ``recovery.py``: the data directory (topic creation, opening topics, log replay, journals),
- ``checkpoints.py``: when write-ahead log segments may be deleted,
- ``retention.py``: when partition segments may be deleted,
- ``expiry.py``: lease expiry and dead-lettering,
- ``topic.py`` (a topic and its stats), ``groups.py`` (leases, cursors), ``deadletter.py``
  (envelopes), ``log.py``/``wal.py``/``journal.py`` (the files), ``commit.py`` (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import checkpoints
from .commit import Committer, Unit
from .config import BrokerConfig
from .errors import (
    BacklogFullError,
    BrokerUnavailableError,
    LeaseExpiredError,
    MQError,
    ProtocolError,
    StorageError,
    TopicNotFoundError,
)
from .expiry import Expiry
from .groups import Group
from .protocol import FRAME_OVERHEAD, Batch, Delivery, check_name
from .recovery import new_group, open_topic, recover, write_topic_dir
from .retention import retain
from .stats import GroupStats, Observer, TopicStats
from .topic import Topic

log = logging.getLogger(__name__)


class Broker:
    """A durable, partitioned log with consumer groups, leases and a dead-letter topic.

    Open it with ``await Broker.open(data_dir, config)`` and ``await broker.close()`` it.
    ``clock`` (monotonic seconds, for leases) and ``wall_clock`` (epoch seconds, for record
    timestamps and retention) are injectable so tests can move time without sleeping.
    """

    def __init__(
        self,
        data_dir: Path,
        config: BrokerConfig,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        observer: Observer,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self.observer = observer
        self.topics: dict[str, Topic] = {}
        self._committer = Committer(
            policy=config.fsync,
            interval=config.fsync_interval,
            workers=config.commit_workers,
            helper=config.fsync_helper,
            observe_fsync=observer.fsync,
        )
        self._lease_prefix = secrets.token_hex(4) + "-"
        self._create_lock = asyncio.Lock()
        self._closing = False
        self._draining = False
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None
        self.failure: StorageError | None = None
        """The first storage error that failed a topic (the service then exits non-zero)."""
        self._failed = asyncio.Event()
        self._expiry = Expiry(
            clock=clock, observer=observer, commit=self._commit, publish_dead=self._publish_dead
        )

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        config: BrokerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
    ) -> Broker:
        """Open the broker stored in ``data_dir``, recovering every topic and group.

        Raises ``CorruptLogError`` when a log or journal is corrupt other than at its tail.
        """
        broker = cls(
            Path(data_dir),
            config or BrokerConfig(),
            clock=clock,
            wall_clock=wall_clock,
            observer=observer or Observer(),
        )
        await asyncio.to_thread(
            recover,
            broker._topics_dir,
            broker.topics,
            broker.config,
            broker._lease_prefix,
            broker._schedule_checkpoint,
            broker._fail_topic,
        )
        broker._committer.start()
        if broker.config.maintenance_interval:
            broker._maintenance = asyncio.create_task(broker._maintain_forever())
        return broker

    # -- topics and groups ----------------------------------------------------------------

    @property
    def _topics_dir(self) -> Path:
        return self.data_dir / "topics"

    async def create_topic(self, name: str, partitions: int | None = None) -> tuple[Topic, bool]:
        """Create a topic (idempotent). Returns the topic and whether it was created now.

        An existing topic keeps its partition count whatever ``partitions`` asks for.
        """
        check_name("topic", name)
        partitions = partitions or self.config.default_partitions
        if not 1 <= partitions <= 1024:
            raise ProtocolError("partitions must be between 1 and 1024")
        async with self._create_lock:
            existing = self.topics.get(name)
            if existing is not None:
                return existing, False
            self._check_open()
            try:
                path = await asyncio.to_thread(write_topic_dir, self._topics_dir, name, partitions)
                topic = open_topic(
                    name,
                    path,
                    partitions,
                    self.topics,
                    self.config,
                    self._schedule_checkpoint,
                    self._fail_topic,
                )
            except OSError as e:  # the unfinished directory goes at the next start
                raise StorageError(f"creating topic {name!r} failed: {e}", topic=name) from e
            log.info("created topic %s with %d partitions", name, partitions)
            return topic, True

    def topic(self, name: str) -> Topic:
        """The topic named ``name``; raises ``TopicNotFoundError``."""
        topic = self.topics.get(name)
        if topic is None:
            raise TopicNotFoundError(name)
        return topic

    def _check_open(self) -> None:
        if self._closing:
            raise BrokerUnavailableError("the broker is shutting down")

    def _live(self, name: str) -> Topic:
        """The topic named ``name``, unless a storage error failed it (``StorageError``)."""
        t = self.topic(name)
        if t.failed is not None:
            raise StorageError(str(t.failed), topic=name)
        return t

    def _fail_topic(self, t: Topic, error: BaseException) -> None:
        """A storage error ``t``'s files cannot recover from: fail the topic for good.

        Its publishes, fetches and lease outcomes answer ``StorageError`` from now on, nothing
        of it is checkpointed or deleted again, the file that failed is neither written nor
        fsynced again, and ``failure`` tells the service to exit non-zero: the restart replays
        the durable log (docs/broker.md, "Storage errors").
        """
        if t.failed is not None:
            return
        failure = StorageError(
            f"topic {t.name!r} failed on a storage error and takes no requests until the "
            f"broker restarts: {error}",
            topic=t.name,
        )
        t.failed = failure
        for plog in t.logs:
            plog.failed = failure
        log.critical("%s", failure)
        if self.failure is None:
            self.failure = failure
            self._failed.set()
        t.notify()

    async def wait_failed(self) -> StorageError:
        """Wait until a storage error fails a topic; return that error."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def _group(self, topic: Topic, name: str) -> Group:
        group = topic.groups.get(name)
        if group is not None:
            return group
        check_name("group", name)
        group = new_group(topic, name, self.config, self._lease_prefix)
        group.cursors = Group.replay([], topic.logs)  # starts at the earliest retained offset
        topic.groups[name] = group
        group.journal.compact()  # the journal starts with a snapshot
        await self._commit([group.journal], topic.name)
        log.info("created consumer group %s on %s", name, topic.name)
        return group

    def _schedule_checkpoint(self, t: Topic) -> None:
        checkpoints.schedule(t, lambda: self._closing)

    async def _commit(self, units: Sequence[Unit], topic: str) -> None:
        futures = [self._committer.request(u) for u in units]
        # asyncio.wait, not gather: a cancelled caller must not cancel the shared commit.
        await asyncio.wait(futures)
        for fut in futures:
            error = fut.exception()
            if error is not None:
                raise StorageError(f"commit failed: {error}", topic=topic) from error

    # -- publish ---------------------------------------------------------------------------

    def backlog_bytes(self, topic: Topic) -> int:
        """Unconsumed bytes: behind the slowest group, or the whole log if no group exists."""
        return topic.backlog_bytes()

    async def publish(
        self, topic: str, records: Sequence[tuple[str, bytes]], *, _bypass_backlog: bool = False
    ) -> list[tuple[int, int]]:
        """Append ``(key, value)`` records; return ``(partition, offset)`` once they are durable.

        Raises ``BacklogFullError`` when the topic's backlog is over its bound (nothing is
        appended then), ``ProtocolError`` for an oversized key or value.
        """
        self._check_open()
        t = self._live(topic)
        if not records:
            return []
        if not _bypass_backlog:
            backlog = self.backlog_bytes(t)
            if backlog >= self.config.max_backlog_bytes:
                raise BacklogFullError(
                    topic,
                    backlog_bytes=backlog,
                    limit=self.config.max_backlog_bytes,
                    retry_after=self.config.retry_after,
                )
        buckets: dict[int, list[tuple[str, bytes, bytes]]] = {}
        order: list[int] = []
        max_value = self.config.max_record_bytes
        route = t.route
        for key, value in records:
            routed = route(key)
            if len(value) > max_value:
                raise ProtocolError(f"a value is at most {max_value} bytes")
            kb, p = routed
            order.append(p)
            bucket = buckets.get(p)
            if bucket is None:
                buckets[p] = [(key, kb, value)]
            else:
                bucket.append((key, kb, value))
        ts = int(self._wall() * 1_000_000)
        next_of: dict[int, int] = {}
        wal = t.wal
        for p, items in buckets.items():
            next_of[p], frames = t.logs[p].append(items, ts)
            wal.add(p, frames)
        await self._commit([wal], topic)
        positions: list[tuple[int, int]] = []
        for p in order:
            offset = next_of[p]
            next_of[p] = offset + 1
            positions.append((p, offset))
        self.observer.published(topic, len(positions))
        return positions

    async def _publish_dead(self, dlq: str, letters: list[tuple[str, bytes]]) -> None:
        await self.create_topic(dlq, self.config.dlq_partitions)
        await self.publish(dlq, letters, _bypass_backlog=True)

    # -- fetch and lease outcomes ------------------------------------------------------------

    async def fetch(
        self,
        topic: str,
        group: str,
        *,
        max_records: int = 1000,
        max_wait: float = 0.0,
        ack_wait: float | None = None,
        max_bytes: int | None = None,
    ) -> Batch | None:
        """Lease the next available records of one partition for ``group``.

        Waits up to ``max_wait`` seconds for records; ``None`` when none came, or at once while
        the broker drains (``drain``). The group is created on its first fetch, starting at the
        earliest retained offset.
        """
        batches = await self._fetch(
            topic,
            group,
            max_records=max_records,
            max_wait=max_wait,
            ack_wait=ack_wait,
            max_bytes=max_bytes,
            multi=False,
        )
        return batches[0] if batches else None

    async def fetch_many(
        self,
        topic: str,
        group: str,
        *,
        max_records: int = 1000,
        max_wait: float = 0.0,
        ack_wait: float | None = None,
        max_bytes: int | None = None,
    ) -> list[Batch]:
        """Like ``fetch``, but lease records of several partitions: one batch (lease) each.

        Waits like ``fetch`` for the first records; then keeps taking from the next partitions
        with available records (round robin, each partition at most once per call) until
        ``max_records`` or about ``max_bytes`` are used up or no partition has records left.
        Each batch is acked, nacked, extended or rejected on its own. ``[]`` when none came.
        """
        return await self._fetch(
            topic,
            group,
            max_records=max_records,
            max_wait=max_wait,
            ack_wait=ack_wait,
            max_bytes=max_bytes,
            multi=True,
        )

    async def _fetch(
        self,
        topic: str,
        group: str,
        *,
        max_records: int,
        max_wait: float,
        ack_wait: float | None,
        max_bytes: int | None,
        multi: bool,
    ) -> list[Batch]:
        """The body of ``fetch`` (one batch) and ``fetch_many`` (``multi``: several)."""
        if max_records < 1:
            raise ProtocolError("max_records must be at least 1")
        ack_wait = self.config.default_ack_wait if ack_wait is None else ack_wait
        if ack_wait <= 0:
            raise ProtocolError("ack_wait must be positive")
        max_bytes = min(max_bytes or self.config.max_fetch_bytes, self.config.max_fetch_bytes)
        t = self._live(topic)
        self._check_open()
        if self._draining:
            return []
        g = await self._group(t, group)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max_wait
        while not (self._closing or self._draining or t.failed):
            await self._expiry.expire(t, g)
            now = self._clock()
            batches = self._take(
                t, g, now, max_records, max_bytes, ack_wait, len(t.logs) if multi else 1
            )
            if batches:
                return batches
            remaining = give_up - loop.time()
            if remaining <= 0:
                return []
            due = g.next_due()
            if due is not None:
                remaining = min(remaining, max(due - now, 0.001))
            try:
                async with asyncio.timeout(remaining):
                    await t.changed.wait()
            except TimeoutError:
                pass
        self._live(topic)  # raises if the topic failed meanwhile
        return []

    def _take(
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

        Each take reads at least one record, so the bytes can overshoot by one record, as a
        single fetch's ``max_bytes`` can.
        """
        batches: list[Batch] = []
        fetched = redelivered = 0
        while len(batches) < max_batches and max_records > 0 and max_bytes > 0:
            taken = g.take(
                t.logs, now, max_records=max_records, max_bytes=max_bytes, ack_wait=ack_wait
            )
            if taken is None:
                break
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
            self._committer.request(g.journal)  # delivery counts: written, not awaited
            self.observer.fetched(t.name, g.name, fetched, redelivered)
        return batches

    async def ack(
        self, topic: str, group: str, lease: str, offsets: Sequence[int] | None = None
    ) -> int:
        """Ack the lease's records (all, or ``offsets``); durable before it returns.

        Raises ``LeaseExpiredError`` for an unknown or expired lease.
        """
        t, g = await self._lease_context(topic, group)
        n = g.ack(lease, offsets)
        if n:
            await self._commit([g.journal], topic)
            self.observer.acked(topic, group, n)
        return n

    async def ack_leases(
        self, topic: str, group: str, leases: Sequence[str]
    ) -> tuple[int, list[str]]:
        """Ack every record of each lease, durable before it returns (one commit for all).

        What a fetch with piggybacked acks does first. Returns the number of records acked
        now and the leases that were unknown or expired: those do not raise (their records
        are redelivered, as with ``ack``), so the caller's fetch still goes ahead.
        """
        t = self._live(topic)
        g = t.groups.get(group)
        if g is None:
            return 0, list(leases)
        await self._expiry.expire(t, g)
        n = 0
        expired: list[str] = []
        for lease in leases:
            try:
                n += g.ack(lease, None)
            except LeaseExpiredError:
                expired.append(lease)
        if n:
            await self._commit([g.journal], topic)
            self.observer.acked(topic, group, n)
        return n, expired

    async def nack(
        self,
        topic: str,
        group: str,
        lease: str,
        offsets: Sequence[int] | None = None,
        *,
        delay: float = 0.0,
        error: str | None = None,
    ) -> int:
        """Release records for redelivery after ``delay`` (dead-letter past max deliveries)."""
        t, g = await self._lease_context(topic, group)
        n, dead = g.nack(lease, offsets, self._clock(), delay=max(delay, 0.0), error=error)
        if n:
            self.observer.nacked(topic, group, n)
            if dead is not None:
                await self._expiry.settle(t, g, dead, "max_deliveries")
            t.notify()
        return n

    async def release(
        self,
        topic: str,
        group: str,
        lease: str,
        offsets: Sequence[int] | None = None,
        *,
        delay: float = 0.0,
    ) -> int:
        """Hand records back for redelivery after ``delay`` without spending a delivery.

        Unlike ``nack``, the delivery this lease counted is taken back, so a record released
        any number of times never reaches the dead-letter topic: for a consumer that could
        not process the records for a reason of its own (its database is away). Durable
        before it returns. Raises ``LeaseExpiredError`` for an unknown or expired lease.
        """
        t, g = await self._lease_context(topic, group)
        n = g.release(lease, offsets, self._clock(), delay=max(delay, 0.0))
        if n:
            await self._commit([g.journal], topic)
            self.observer.released(topic, group, n)
            t.notify()
        return n

    async def reject(
        self,
        topic: str,
        group: str,
        lease: str,
        offsets: Sequence[int] | None = None,
        *,
        error: str | None = None,
    ) -> int:
        """Move records straight to the dead-letter topic ``<topic>.dlq``."""
        t, g = await self._lease_context(topic, group)
        dead = g.reject(lease, offsets, error=error)
        if dead is None:
            return 0
        await self._expiry.settle(t, g, dead, "rejected")
        return len(dead[1])

    async def extend(
        self, topic: str, group: str, lease: str, ack_wait: float | None = None
    ) -> float:
        """Extend the lease to ``ack_wait`` seconds from now; return the seconds granted."""
        t, g = await self._lease_context(topic, group)
        ack_wait = self.config.default_ack_wait if ack_wait is None else ack_wait
        if ack_wait <= 0:
            raise ProtocolError("ack_wait must be positive")
        g.extend(lease, ack_wait, self._clock())
        return ack_wait

    async def _lease_context(self, topic: str, group: str) -> tuple[Topic, Group]:
        t = self._live(topic)
        g = t.groups.get(group)
        if g is None:
            raise LeaseExpiredError(topic, group, "*")
        await self._expiry.expire(t, g)
        return t, g

    # -- maintenance -----------------------------------------------------------------------

    async def maintain(self) -> None:
        """Expire leases, apply retention and compact journals (the background task's body)."""
        for t in list(self.topics.values()):
            if t.failed is not None:
                continue  # nothing of a failed topic is written or deleted again
            for g in list(t.groups.values()):
                await self._expiry.expire(t, g)
            await retain(t, self._committer, self.config, self._wall)

    async def _maintain_forever(self) -> None:
        assert self.config.maintenance_interval
        while True:
            await asyncio.sleep(self.config.maintenance_interval)
            try:
                await self.maintain()
            except MQError as e:  # keep serving; the next round retries
                log.error("maintenance failed: %s", e)

    # -- stats -------------------------------------------------------------------------------

    def group_stats(self, topic: str, group: str) -> GroupStats:
        """Committed offsets, lag and in-flight records of one group."""
        return self.topic(topic).group_stats(group)

    def topic_stats(self, topic: str) -> TopicStats:
        """Partitions, groups and backlog of one topic."""
        return self.topic(topic).stats(self.config.max_backlog_bytes)

    @property
    def healthy(self) -> str | None:
        """``None`` when the broker can serve, else why not."""
        if self.failure is not None:
            return str(self.failure)
        if self._closing:
            return "shutting down"
        if self._draining:
            return "draining"
        return None

    # -- shutdown ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop leasing records: waiting fetches answer ``None`` now, later ones at once.

        Publishes, acks and the other lease outcomes still work. The service calls it as soon
        as a stop signal arrives, so open long-polls do not hold the shutdown.
        """
        self._draining = True
        for t in self.topics.values():
            t.notify()

    async def close(self) -> None:
        """Stop taking requests, commit and fsync everything pending, close every file."""
        if self._closed:
            return
        self._closing = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
        units: list[Unit] = []
        for t in self.topics.values():
            t.notify()
            if t.failed is None:  # a failed topic's files are left as they are
                units.append(t.wal)
                units.extend(g.journal for g in t.groups.values())
        await self._committer.close(units)
        for t in self.topics.values():
            if t.checkpointer is not None:
                await t.checkpointer
            t.wal.close()
            # Everything is in the partition files now: a last checkpoint empties the log
            # (unless the topic failed, or a partition could not write its frames).
            await checkpoints.checkpoint_topic(
                t, t.wal.active + 1, [plog.next_offset for plog in t.logs]
            )
            for plog in t.logs:
                plog.close()
            for g in t.groups.values():
                g.journal.close()
        self._closed = True
        log.info("broker closed")

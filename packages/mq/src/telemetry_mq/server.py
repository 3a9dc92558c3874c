"""The broker core's façade: topics of partition logs, consumer groups with leases, backpressure.

Pure asyncio plus files; the HTTP service in ``telemetry_broker`` is a thin layer over it.
Fsyncs run in the fsync helper process or the committer's worker threads; reads are ``pread``
calls on the event loop (a fetch reads at most about ``max_fetch_bytes``, normally from the
page cache). ``Broker`` holds the topics, the committer, the config, the clocks and the
observer, and serves publish, the lease outcomes and the group and dead-letter admin calls;
each other responsibility has a module of its own, whose docstring states its invariants:

- ``recovery.py``: the data directory (topic creation, opening topics, log replay, journals),
- ``catalog.py``: creating topics and groups within their limits, deleting groups,
- ``checkpoints.py``: when write-ahead log segments may be deleted,
- ``retention.py``: when partition segments may be deleted,
- ``fetching.py``: the long-poll loop and leasing within the budgets,
- ``expiry.py``: lease expiry and dead-lettering,
- ``deadletter.py``: dead-letter names, envelopes, listing and replay,
- ``topic.py`` (a topic and its stats), ``groups.py`` (leases, cursors),
  ``log.py``/``wal.py``/``journal.py`` (the files), ``commit.py`` (group commit).

The lease outcomes keep one rule here: a call that changed a group's journal answers only once
the commit carrying the change is durable, and a retried ack (nothing new to write) answers only
once a commit started after it is, so never before the first ack's own commit. A failed journal
commit makes the next one a snapshot, which writes whatever the failed one did not.
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
from .catalog import Catalog
from .commit import Committer, Unit
from .config import BrokerConfig
from .deadletter import (
    REPLAY_GROUP,
    DeadLetterReport,
    DeadLetters,
    Selection,
    dlq_name,
    is_dlq,
    pending_count,
)
from .disk import DiskWatch
from .errors import (
    BacklogFullError,
    BrokerUnavailableError,
    DiskFullError,
    LeaseExpiredError,
    LimitExceededError,
    MQError,
    ProtocolError,
    ReservedError,
    StorageError,
    TopicNotFoundError,
)
from .expiry import Expiry
from .fetching import Fetcher
from .groups import Group
from .journal import GroupJournal
from .protocol import Batch
from .recovery import recover
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
        self._fetcher = Fetcher(
            config=config,
            clock=clock,
            observer=observer,
            expiry=self._expiry,
            request_commit=self._committer.request,
            stopping=lambda: self._closing or self._draining,
        )
        self._dead_letters = DeadLetters(publish=self.publish, commit=self._commit_group)
        self._catalog = Catalog(
            self.topics,
            data_dir / "topics",
            config,
            clock=clock,
            committer=self._committer,
            commit=self._commit,
            lease_prefix=self._lease_prefix,
            on_roll=self._schedule_checkpoint,
            on_fail=self._fail_topic,
            check_open=self._check_open,
        )
        self.disk = (
            DiskWatch(
                data_dir,
                config.disk_high_watermark,
                interval=config.disk_check_interval,
                unwritten=self._unwritten_bytes,
            )
            if config.disk_high_watermark is not None
            else None
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
            broker.data_dir / "topics",
            broker.topics,
            broker.config,
            broker._lease_prefix,
            broker._schedule_checkpoint,
            broker._fail_topic,
        )
        for t in broker.topics.values():
            for g in t.groups.values():
                broker._catalog.adopt(t, g)
        broker._committer.start()
        if broker.config.maintenance_interval:
            if broker._under_pressure():
                # A full volume: make room before the first request (an ack needs some), or
                # the broker could only fail again; a restart must be able to heal it.
                await broker._maintain_round()
            broker._maintenance = asyncio.create_task(broker._maintain_forever())
        return broker

    # -- topics and groups ----------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int | None = None) -> tuple[Topic, bool]:
        """Create a topic (idempotent). Returns the topic and whether it was created now.

        An existing topic keeps its partition count whatever ``partitions`` asks for. Raises
        ``ProtocolError`` for a name a client may not create (at most 196 characters, not
        ending in ``.dlq``), ``LimitExceededError`` past ``max_topics``.
        """
        return await self._catalog.create_topic(name, partitions)

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
        t.notify_all()

    async def wait_failed(self) -> StorageError:
        """Wait until a storage error fails a topic; return that error."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def delete_group(self, topic: str, group: str) -> None:
        """Delete a consumer group: its leases, its state and its journal (durably).

        Raises ``GroupNotFoundError``, or ``ProtocolError`` for the broker's own groups. Its
        waiting fetches answer empty; a later fetch with the same name creates a new group.
        """
        await self._catalog.delete_group(self.topic(topic), group)

    def _schedule_checkpoint(self, t: Topic) -> None:
        checkpoints.schedule(t, lambda: self._closing)

    async def _commit(self, units: Sequence[Unit], topic: str) -> None:
        futures = [self._committer.request(u) for u in units]
        # asyncio.wait, not gather: a cancelled caller must not cancel the shared commit.
        await asyncio.wait(futures)
        for unit, fut in zip(units, futures, strict=True):
            error = fut.exception()
            if error is not None:
                if isinstance(unit, GroupJournal):
                    unit.compact()  # the next commit writes the whole state, this one included
                raise StorageError(f"commit failed: {error}", topic=topic) from error

    async def _commit_group(self, g: Group) -> None:
        await self._commit([g.journal], g.topic)

    # -- publish ---------------------------------------------------------------------------

    def backlog_bytes(self, topic: Topic) -> int:
        """Unconsumed bytes: behind the slowest group, or the whole log if no group exists."""
        return topic.backlog_bytes()

    async def publish(
        self, topic: str, records: Sequence[tuple[str, bytes]], *, _dead_letters: bool = False
    ) -> list[tuple[int, int]]:
        """Append ``(key, value)`` records; return ``(partition, offset)`` once they are durable.

        Raises ``BacklogFullError`` when the topic's backlog is over its bound and
        ``DiskFullError`` when the data volume is past its high watermark (nothing is appended
        then), ``ProtocolError`` for an oversized key or value, or for a dead-letter topic
        (only the broker writes those; their bound is ``max_dead_letter_bytes``, and they pass
        the watermark: dead-lettering is how records leave and room comes back).
        """
        self._check_open()
        t = self._live(topic)
        if is_dlq(topic) != _dead_letters:
            if not _dead_letters:
                raise ReservedError(f"{topic!r} is a dead-letter topic: only the broker writes it")
            raise ProtocolError(f"{topic!r} is not a dead-letter topic")
        if not records:
            return []
        cfg = self.config
        limit = cfg.max_dead_letter_bytes if _dead_letters else cfg.max_backlog_bytes
        backlog = self.backlog_bytes(t)
        if backlog >= limit:
            self.observer.refused(topic, "backlog_full")
            raise BacklogFullError(
                topic, backlog_bytes=backlog, limit=limit, retry_after=self.config.retry_after
            )
        disk = self.disk
        if disk is not None and not _dead_letters and disk.full:
            self.observer.refused(topic, "disk_full")
            raise DiskFullError(
                topic,
                used_bytes=disk.used(),
                watermark_bytes=disk.watermark_bytes(disk.usage()),
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
        size = 0
        for p, items in buckets.items():
            next_of[p], frames = t.logs[p].append(items, ts)
            wal.add(p, frames)
            size += len(frames)
        if disk is not None:
            disk.wrote(2 * size)  # the write-ahead log's copy and the partition file's
        await self._commit([wal], topic)
        positions: list[tuple[int, int]] = []
        for p in order:
            offset = next_of[p]
            next_of[p] = offset + 1
            positions.append((p, offset))
        self.observer.published(topic, len(positions))
        return positions

    async def _publish_dead(self, topic: str, letters: list[tuple[str, bytes]]) -> None:
        dlq, _ = await self._catalog.ensure_topic(dlq_name(topic), self.config.dlq_partitions)
        await self._catalog.group(dlq, REPLAY_GROUP, internal=True)  # holds the unreplayed
        await self.publish(dlq.name, letters, _dead_letters=True)

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
        g = await self._catalog.group(t, group)
        return await self._fetcher.fetch(
            t,
            g,
            max_records=max_records,
            max_wait=max_wait,
            ack_wait=ack_wait,
            max_bytes=max_bytes,
            multi=multi,
        )

    async def ack(
        self, topic: str, group: str, lease: str, offsets: Sequence[int] | None = None
    ) -> int:
        """Ack the lease's records (all, or ``offsets``); durable before it returns.

        Raises ``LeaseExpiredError`` for an unknown or expired lease.
        """
        t, g = await self._lease_context(topic, group)
        n = g.ack(lease, offsets)
        # Even with nothing new (a retry): the first ack's commit may still be under way.
        await self._commit([g.journal], topic)
        if n:
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
        if g is None or g.deleted:
            return 0, list(leases)
        g.touch(self._clock())
        await self._expiry.expire(t, g)
        n = 0
        expired: list[str] = []
        for lease in leases:
            try:
                n += g.ack(lease, None)
            except LeaseExpiredError:
                expired.append(lease)
        if len(expired) < len(leases):  # as in ack: a retry waits for the first ack's commit
            await self._commit([g.journal], topic)
        if n:
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
        """Release records for redelivery after ``delay`` (dead-letter past max deliveries).

        Raises ``LimitExceededError`` for a delay past ``max_nack_delay``, ``DeadLetterError``
        when records past max deliveries could not be dead-lettered (they were restored).
        """
        self._check_delay(delay)
        t, g = await self._lease_context(topic, group)
        n, dead = g.nack(lease, offsets, self._clock(), delay=max(delay, 0.0), error=error)
        if n:
            self.observer.nacked(topic, group, n)
            t.notify_group(group)
            if dead is not None:
                await self._expiry.settle(t, g, [dead], "max_deliveries")
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
        self._check_delay(delay)
        t, g = await self._lease_context(topic, group)
        n = g.release(lease, offsets, self._clock(), delay=max(delay, 0.0))
        if n:
            t.notify_group(group)
            await self._commit([g.journal], topic)
            self.observer.released(topic, group, n)
        return n

    def _check_delay(self, delay: float) -> None:
        limit = self.config.max_nack_delay
        if delay > limit:
            raise LimitExceededError(
                "NACK_DELAY_TOO_LONG", f"a delay is at most {limit:g} seconds", limit=limit
            )

    async def reject(
        self,
        topic: str,
        group: str,
        lease: str,
        offsets: Sequence[int] | None = None,
        *,
        error: str | None = None,
    ) -> int:
        """Move records straight to the dead-letter topic ``<topic>.dlq``.

        Raises ``DeadLetterError`` when they could not be written there (they were restored
        for redelivery), ``ProtocolError`` on a dead-letter topic (ack or replay those).
        """
        if is_dlq(topic):
            raise ReservedError(f"records of the dead-letter topic {topic!r} cannot be rejected")
        t, g = await self._lease_context(topic, group)
        dead = g.reject(lease, offsets, error=error)
        if dead is None:
            return 0
        await self._expiry.settle(t, g, [dead], "rejected")
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
        if g is None or g.deleted:
            raise LeaseExpiredError(topic, group, "*")
        g.touch(self._clock())
        await self._expiry.expire(t, g)
        if g.deleted:
            raise LeaseExpiredError(topic, group, "*")
        return t, g

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(
        self, topic: str, *, limit: int = 100, after: str | None = None, reason: str | None = None
    ) -> DeadLetterReport:
        """The pending dead letters of ``topic``: counts by reason and error, and one page.

        ``limit`` letters (of ``reason`` only, if given) after position ``after``
        (``"partition:offset"`` in the dead-letter topic, the report's ``next``).
        """
        self.topic(topic)
        dlq = self.topics.get(dlq_name(topic))
        return await self._dead_letters.report(topic, dlq, limit=limit, after=after, reason=reason)

    async def replay_dead_letters(
        self, topic: str, selection: Selection, *, max_records: int = 10_000
    ) -> tuple[int, int]:
        """Publish selected dead letters' records to ``topic`` again; return (moved, left).

        Each value goes back byte for byte as a new record with its key, durable before its
        letter is marked replayed (a crash can duplicate it, never lose it). ``left`` counts
        the selected letters still pending (past ``max_records``). Raises
        ``BacklogFullError`` when ``topic`` is full (the letters moved before stay moved).
        """
        self._check_open()
        self.topic(topic)
        dlq = self.topics.get(dlq_name(topic))
        if dlq is None:
            return 0, 0
        group = await self._catalog.group(dlq, REPLAY_GROUP, internal=True)
        return await self._dead_letters.replay(topic, dlq, group, selection, max_records)

    def dead_letter_depth(self, topic: str) -> int:
        """Records in ``<topic>.dlq`` not yet replayed (0 without a dead-letter topic)."""
        dlq = self.topics.get(dlq_name(topic))
        return 0 if dlq is None else pending_count(dlq)

    # -- maintenance -----------------------------------------------------------------------

    async def maintain(self) -> None:
        """Mark idle groups, expire leases, apply retention (the background task's body)."""
        idle_timeout = self.config.group_idle_timeout
        for t in list(self.topics.values()):
            if t.failed is not None:
                continue  # nothing of a failed topic is written or deleted again
            for g in list(t.groups.values()):
                if g.deleted:
                    continue
                if not g.idle and g.check_idle(self._clock(), idle_timeout):
                    log.info("consumer group %s of %s is idle", g.name, t.name)
                await self._expiry.expire(t, g)
        if self.disk is not None and self.disk.full:
            # Buffered frames count as used: put them in the files, where retention's
            # measure of the volume sees them and what it frees.
            for t in self.topics.values():
                if t.failed is None:
                    for plog in t.logs:
                        plog.write_out()
        await retain(
            list(self.topics.values()),
            self._committer,
            self.config,
            self._wall,
            disk=self.disk,
            observer=self.observer,
        )
        # After retention (it may have made room): frames a failed partition-file write left
        # in memory, then the checkpoint that drops the log segments kept for them.
        for t in list(self.topics.values()):
            if checkpoints.write_out_unwritten(t):
                self._schedule_checkpoint(t)

    def _unwritten_bytes(self) -> int:
        """Frames the partitions buffer, not in their files yet."""
        return sum(plog.pending_bytes for t in self.topics.values() for plog in t.logs)

    def _under_pressure(self) -> bool:
        """Past the disk watermark, frames a failed write left in memory, or a checkpoint
        skipped (a full disk, all of them)."""
        return (self.disk is not None and self.disk.full) or any(
            t.checkpoint_owed or any(plog.write_error is not None for plog in t.logs)
            for t in self.topics.values()
        )

    async def _maintain_round(self) -> None:
        try:
            await self.maintain()
        except MQError as e:  # keep serving; the next round retries
            log.error("maintenance failed: %s", e)

    async def _maintain_forever(self) -> None:
        assert self.config.maintenance_interval
        while True:
            await asyncio.sleep(self.config.maintenance_interval)
            await self._maintain_round()

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
            t.notify_all()

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
            t.notify_all()
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

"""The broker core: topics of partition logs, consumer groups with leases, backpressure.

Pure asyncio plus files; the HTTP service in ``telemetry_broker`` is a thin layer over it.
Blocking file writes and fsyncs run in the committer's worker threads; reads are ``pread`` calls
on the event loop (a fetch reads at most ``max_fetch_bytes``, normally from the page cache).
Topics (with their stats) live in ``topic.py``, dead-letter envelopes in ``deadletter.py``, the
group bookkeeping in ``groups.py``; this module orchestrates them and awaits the commits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import orjson

from .commit import Committer, Unit
from .config import BrokerConfig
from .deadletter import dlq_name, envelopes
from .errors import (
    BacklogFullError,
    BrokerUnavailableError,
    LeaseExpiredError,
    MQError,
    ProtocolError,
    StorageError,
    TopicNotFoundError,
)
from .groups import Dead, Group
from .journal import read_journal
from .log import PartitionLog, fsync_dir
from .protocol import FRAME_OVERHEAD, Batch, Delivery, check_name
from .stats import GroupStats, Observer, TopicStats
from .topic import Topic
from .wal import CHECKPOINT, TopicWal, checkpoint, read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

_TOPIC_META: Final = "topic.json"
_JOURNAL_SUFFIX: Final = ".journal"


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
        await asyncio.to_thread(broker._recover)
        broker._committer.start()
        if broker.config.maintenance_interval:
            broker._maintenance = asyncio.create_task(broker._maintain_forever())
        return broker

    # -- recovery and topic management ----------------------------------------------------

    @property
    def _topics_dir(self) -> Path:
        return self.data_dir / "topics"

    def _recover(self) -> None:
        self._topics_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self._topics_dir.glob("*.creating"):
            shutil.rmtree(tmp)  # a topic creation that never completed
        for path in sorted(self._topics_dir.iterdir()):
            meta_file = path / _TOPIC_META
            if not meta_file.is_file():
                continue
            meta = orjson.loads(meta_file.read_bytes())
            topic = self._open_topic(meta["name"], path, int(meta["partitions"]))
            for journal in sorted((path / "groups").glob(f"*{_JOURNAL_SUFFIX}")):
                name = journal.name.removesuffix(_JOURNAL_SUFFIX)
                group = self._new_group(topic, name)
                group.cursors = Group.replay(read_journal(journal), topic.logs)
                topic.groups[name] = group
            log.info(
                "recovered topic %s: %d partitions, %d records, %d groups",
                topic.name,
                topic.partitions,
                sum(plog.next_offset - plog.start_offset for plog in topic.logs),
                len(topic.groups),
            )

    def _open_topic(self, name: str, path: Path, partitions: int) -> Topic:
        """Load the partitions, replay the write-ahead log into them, checkpoint if it held any."""
        start, trusted = read_checkpoint(path, partitions)
        logs = [
            PartitionLog.open(
                name,
                p,
                path / "partitions" / f"{p:04d}",
                segment_bytes=self.config.segment_bytes,
                trusted=trusted[p],
            )
            for p in range(partitions)
        ]
        wal, replayed = TopicWal.recover(
            name, path / "wal", logs, start=start, segment_bytes=self.config.wal_segment_bytes
        )
        if replayed:
            log.warning("replayed %d records of %s from its write-ahead log", replayed, name)
        if wal.active != start or not (path / CHECKPOINT).exists():
            for plog in logs:
                plog.write_out()
            unsynced = [plog.unsynced for plog in logs]
            for plog in logs:
                plog.unsynced = set()
            offsets = [plog.next_offset for plog in logs]
            checkpoint(path, wal.path, logs, wal.active, offsets, unsynced)
        topic = Topic(name, path, logs, wal)
        wal.on_roll = lambda: self._schedule_checkpoint(topic)
        self.topics[name] = topic
        return topic

    def _schedule_checkpoint(self, t: Topic) -> None:
        t.checkpoint_wanted = True
        if t.checkpointer is None or t.checkpointer.done():
            t.checkpointer = asyncio.get_running_loop().create_task(self._checkpoints(t))

    async def _checkpoints(self, t: Topic) -> None:
        while t.checkpoint_wanted and not self._closing:
            t.checkpoint_wanted = False
            await self._checkpoint(t, t.wal.active, [plog.durable_offset for plog in t.logs])

    async def _checkpoint(self, t: Topic, cut: int, offsets: list[int]) -> None:
        """Fsync the partition files up to ``offsets``, then drop log segments below ``cut``."""
        for plog in t.logs:
            plog.write_out()
        unsynced = [plog.unsynced for plog in t.logs]
        for plog in t.logs:
            plog.unsynced = set()
        try:
            spent = await asyncio.to_thread(
                checkpoint, t.path, t.wal.path, t.logs, cut, offsets, unsynced
            )
        except OSError as e:  # the log segments stay; the next checkpoint retries
            log.error("checkpoint of %s failed: %s", t.name, e)
            for plog, paths in zip(t.logs, unsynced, strict=True):
                plog.unsynced |= paths
            return
        log.debug("checkpoint of %s at log segment %d took %.3f s", t.name, cut, spent)

    def _new_group(self, topic: Topic, name: str) -> Group:
        return Group(
            topic.name,
            name,
            [],
            journal_path=topic.path / "groups" / f"{name}{_JOURNAL_SUFFIX}",
            compact_bytes=self.config.journal_compact_bytes,
            max_deliveries=self.config.max_deliveries,
            lease_prefix=self._lease_prefix,
        )

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
            path = self._topics_dir / name
            await asyncio.to_thread(self._write_topic_dir, path, name, partitions)
            topic = self._open_topic(name, path, partitions)
            log.info("created topic %s with %d partitions", name, partitions)
            return topic, True

    def _write_topic_dir(self, path: Path, name: str, partitions: int) -> None:
        tmp = path.with_name(path.name + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "groups").mkdir(parents=True)
        for p in range(partitions):
            (tmp / "partitions" / f"{p:04d}").mkdir(parents=True)
        (tmp / "wal").mkdir()
        write_checkpoint(tmp, 0, [0] * partitions)
        meta = tmp / _TOPIC_META
        with open(meta, "wb") as f:
            f.write(orjson.dumps({"name": name, "partitions": partitions, "format": 1}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self._topics_dir)

    def topic(self, name: str) -> Topic:
        """The topic named ``name``; raises ``TopicNotFoundError``."""
        topic = self.topics.get(name)
        if topic is None:
            raise TopicNotFoundError(name)
        return topic

    def _check_open(self) -> None:
        if self._closing:
            raise BrokerUnavailableError("the broker is shutting down")

    async def _group(self, topic: Topic, name: str) -> Group:
        group = topic.groups.get(name)
        if group is not None:
            return group
        check_name("group", name)
        group = self._new_group(topic, name)
        group.cursors = Group.replay([], topic.logs)  # starts at the earliest retained offset
        topic.groups[name] = group
        group.journal.compact()  # the journal starts with a snapshot
        await self._commit([group.journal], topic.name)
        log.info("created consumer group %s on %s", name, topic.name)
        return group

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
        t = self.topic(topic)
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
        t = self.topic(topic)
        self._check_open()
        if self._draining:
            return []
        g = await self._group(t, group)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max_wait
        while not (self._closing or self._draining):
            await self._expire(t, g)
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

    async def _expire(self, t: Topic, g: Group) -> None:
        expired, dead = g.expire(self._clock())
        if expired:
            self.observer.expired(t.name, g.name, expired)
        for d in dead:
            await self._dead_letter(t, g, d, "max_deliveries")

    async def _settle(self, t: Topic, g: Group, dead: Dead | None, reason: str) -> None:
        if dead is not None:
            await self._dead_letter(t, g, dead, reason)
        await self._commit([g.journal], t.name)

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
        t = self.topic(topic)
        g = t.groups.get(group)
        if g is None:
            return 0, list(leases)
        await self._expire(t, g)
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
                await self._settle(t, g, dead, "max_deliveries")
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
        await self._settle(t, g, dead, "rejected")
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
        t = self.topic(topic)
        g = t.groups.get(group)
        if g is None:
            raise LeaseExpiredError(topic, group, "*")
        await self._expire(t, g)
        return t, g

    async def _dead_letter(self, t: Topic, g: Group, dead: Dead, reason: str) -> None:
        p, offsets = dead
        letters = envelopes(t.name, g, dead, t.logs[p].read_offsets(offsets), reason)
        dlq = dlq_name(t.name)
        try:
            await self.create_topic(dlq, self.config.dlq_partitions)
            await self.publish(dlq, letters, _bypass_backlog=True)
        except MQError as e:
            log.error("dead-lettering %d records of %s/%d failed: %s", len(offsets), t.name, p, e)
            g.restore(dead)
            return
        except asyncio.CancelledError:
            # The caller went away (a client disconnected mid-fetch): the records must not be
            # stranded. If the dead letters were written, they come again (duplicates allowed).
            g.restore(dead)
            raise
        g.mark_dead(dead)
        await self._commit([g.journal], t.name)
        self.observer.dead_lettered(t.name, g.name, len(offsets), reason)
        log.warning(
            "dead-lettered %d records of %s partition %d for group %s: %s",
            len(offsets),
            t.name,
            p,
            g.name,
            reason,
        )

    # -- maintenance -----------------------------------------------------------------------

    async def maintain(self) -> None:
        """Expire leases, apply retention and compact journals (the background task's body)."""
        for t in list(self.topics.values()):
            for g in list(t.groups.values()):
                await self._expire(t, g)
            await self._retain(t)

    async def _maintain_forever(self) -> None:
        assert self.config.maintenance_interval
        while True:
            await asyncio.sleep(self.config.maintenance_interval)
            try:
                await self.maintain()
            except MQError as e:  # keep serving; the next round retries
                log.error("maintenance failed: %s", e)

    async def _retain(self, t: Topic) -> None:
        if not t.groups:
            return  # nobody consumed anything yet: keep it all (backpressure bounds the size)
        consumed = t.consumed()
        candidates = [
            p
            for p, plog in enumerate(t.logs)
            if len(plog.segments) > 1 and plog.segments[0].end_offset <= consumed[p]
        ]
        if not candidates:
            return
        # Retention trusts the committed offsets above: make them durable before deleting.
        await self._committer.sync([g.journal for g in t.groups.values()])
        cfg = self.config
        now_us = int(self._wall() * 1_000_000)
        age = int(cfg.retention_age * 1_000_000) if cfg.retention_age is not None else None
        for p in candidates:
            # Inline on purpose: unlinking a few files is quick, and the segment list must not
            # change under a concurrent read.
            t.logs[p].retain(consumed[p], now_us, age, cfg.retention_bytes)

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
        if self._closing:
            return "shutting down"
        if self._draining:
            return "draining"
        for t in self.topics.values():
            for plog in t.logs:
                if plog.failed is not None:
                    return f"{t.name}/{plog.partition}: write failed: {plog.failed}"
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
            units.append(t.wal)
            units.extend(g.journal for g in t.groups.values())
        await self._committer.close(units)
        for t in self.topics.values():
            if t.checkpointer is not None:
                await t.checkpointer
            t.wal.close()
            # Everything is in the partition files now: a last checkpoint empties the log.
            await self._checkpoint(t, t.wal.active + 1, [plog.next_offset for plog in t.logs])
            for plog in t.logs:
                plog.close()
            for g in t.groups.values():
                g.journal.close()
        self._closed = True
        log.info("broker closed")

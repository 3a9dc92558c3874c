"""A topic: its partition logs and write-ahead log, the consumer groups reading it, its stats.

The groups that hold back-pressure and retention (``holders``) are the active ones: a deleted
group never, an idle one only while every group of the topic is idle (then the slowest still
bounds the backlog, as if none were idle: nothing nobody reads is dropped).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .errors import GroupNotFoundError, ProtocolError, StorageError
from .groups import Group
from .log import PartitionLog
from .protocol import MAX_KEY_BYTES, partition_for
from .stats import GroupPartitionStats, GroupStats, PartitionStats, TopicStats
from .wal import TopicWal

ROUTE_CACHE_BYTES: Final = 4 * 1024 * 1024
"""Memory a topic's key-routing memo may take, about (it starts over past it)."""
_ROUTE_ENTRY_BYTES: Final = 160
"""What a memo entry costs beyond its key's characters and bytes (dict slot, objects)."""


class Waiters:
    """The fetches of one group waiting for records, woken one at a time.

    ``wake_one`` wakes the longest waiting; a fetch that then takes records wakes the next
    (there may be more), one that finds none waits again. So new records wake about as many
    fetches as they can serve, not every fetch of the group.
    """

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    async def wait(self, timeout: float) -> bool:
        """Wait until woken (True) or ``timeout`` seconds passed (False)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.wake_one()  # woken, then cancelled before taking: pass the wake on
            raise
        finally:
            if not fut.done() or fut.cancelled():
                try:
                    self._queue.remove(fut)
                except ValueError:
                    pass

    def wake_one(self) -> None:
        """Wake the longest waiting fetch, if any."""
        queue = self._queue
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every waiting fetch (drain, close, group deleted)."""
        while self._queue:
            self.wake_one()


class Topic:
    """A topic: its partition logs and the consumer groups reading it."""

    def __init__(self, name: str, path: Path, logs: list[PartitionLog], wal: TopicWal) -> None:
        self.name = name
        self.path = path
        self.logs = logs
        self.wal = wal
        self.groups: dict[str, Group] = {}
        self.waiters: dict[str, Waiters] = {}
        self._routes: dict[str, tuple[bytes, int]] = {}
        self._route_bytes = 0
        self.checkpoint_wanted = False
        self.checkpoint_owed = False
        """A checkpoint was skipped (frames not written, or no room for ``checkpoint.json``):
        the log keeps segments it could drop; maintenance takes it once it can."""
        self.checkpointer: asyncio.Task[None] | None = None
        self.failed: StorageError | None = None
        """Set when a storage error failed the topic: it takes no more requests."""
        self.on_fail: Callable[[BaseException], None] = lambda _: None
        """Called by its files on a storage error they cannot recover from."""
        for plog in logs:
            plog.on_durable = self.notify

    def route(self, key: str) -> tuple[bytes, int]:
        """The UTF-8 bytes of ``key`` and its partition (``protocol.partition_for``).

        Remembered per key: producers use few keys (one per GPU), so this is a dict lookup.
        Raises ``ProtocolError`` for a key that is not valid UTF-8 or too long.
        """
        routed = self._routes.get(key)
        if routed is None:
            try:
                kb = key.encode()
            except UnicodeEncodeError as e:
                raise ProtocolError("a key must be valid UTF-8") from e
            if len(kb) > MAX_KEY_BYTES:
                raise ProtocolError(f"a key is at most {MAX_KEY_BYTES} bytes")
            cost = len(key) + len(kb) + _ROUTE_ENTRY_BYTES
            if self._route_bytes + cost > ROUTE_CACHE_BYTES:
                self._routes.clear()
                self._route_bytes = 0
            self._route_bytes += cost
            routed = self._routes[key] = (kb, partition_for(kb, len(self.logs)))
        return routed

    @property
    def route_cache_bytes(self) -> int:
        """What the key-routing memo takes, about (bounded by ``ROUTE_CACHE_BYTES``)."""
        return self._route_bytes

    @property
    def partitions(self) -> int:
        """The partition count."""
        return len(self.logs)

    def waiters_of(self, group: str) -> Waiters:
        """The waiting fetches of ``group``."""
        waiters = self.waiters.get(group)
        if waiters is None:
            waiters = self.waiters[group] = Waiters()
        return waiters

    def notify(self) -> None:
        """New records: wake one waiting fetch of every group (it wakes the next if it took)."""
        for waiters in self.waiters.values():
            waiters.wake_one()

    def notify_group(self, group: str) -> None:
        """Records of ``group`` are ready again: wake one of its waiting fetches."""
        waiters = self.waiters.get(group)
        if waiters is not None:
            waiters.wake_one()

    def notify_all(self) -> None:
        """Wake every waiting fetch of this topic (drain, close)."""
        for waiters in self.waiters.values():
            waiters.wake_all()

    def holders(self) -> list[Group]:
        """The groups whose progress bounds back-pressure and retention (module docstring)."""
        live = [g for g in self.groups.values() if not g.deleted]
        active = [g for g in live if not g.idle]
        return active or live

    def backlog_bytes(self) -> int:
        """Unconsumed bytes: behind the slowest holding group, or the whole log if none."""
        holders = self.holders()
        if not holders:
            return sum(plog.size_bytes for plog in self.logs)
        return max(self._behind(g) for g in holders)

    def _behind(self, group: Group) -> int:
        return sum(
            plog.end_pos - plog.pos(cur.committed)
            for plog, cur in zip(self.logs, group.cursors, strict=True)
        )

    def consumed(self) -> list[int]:
        """Per partition, the offset below which every holding group is done (retention's
        bound); the start offsets when no group holds (nothing may go)."""
        holders = self.holders()
        if not holders:
            return [plog.start_offset for plog in self.logs]
        return [min(g.cursors[p].committed for g in holders) for p in range(self.partitions)]

    def retained_bytes(self, consumed: list[int] | None = None) -> int:
        """Bytes of records every group has consumed that are still on disk (what retention
        deletes); 0 without groups. ``consumed``: ``self.consumed()``, if already at hand."""
        if not self.groups:
            return 0
        if consumed is None:
            consumed = self.consumed()
        return sum(
            plog.pos(c) - plog.pos(plog.start_offset)
            for plog, c in zip(self.logs, consumed, strict=True)
        )

    def group_stats(self, group: str) -> GroupStats:
        """Committed offsets, lag and in-flight records of one group."""
        g = self.groups.get(group)
        if g is None or g.deleted:
            raise GroupNotFoundError(self.name, group)
        lags = g.lag(self.logs)
        parts = [
            GroupPartitionStats(
                p,
                max(cur.committed, plog.start_offset),
                lags[p],
                len(cur.leased),
                len(cur.ready) + len(cur.delayed),
            )
            for p, (cur, plog) in enumerate(zip(g.cursors, self.logs, strict=True))
        ]
        return GroupStats(
            self.name, group, sum(lags), g.in_flight(), self._behind(g), parts, idle=g.idle
        )

    def stats(self, max_backlog_bytes: int) -> TopicStats:
        """Partitions, groups and backlog."""
        parts = [
            PartitionStats(
                p, plog.start_offset, plog.next_offset, plog.size_bytes, len(plog.segments)
            )
            for p, plog in enumerate(self.logs)
        ]
        groups = [self.group_stats(n) for n in sorted(self.groups) if not self.groups[n].deleted]
        records = sum(s.end_offset - s.start_offset for s in parts)
        return TopicStats(
            name=self.name,
            partitions=self.partitions,
            records=records,
            bytes=sum(s.bytes for s in parts),
            retained_bytes=self.retained_bytes(),
            backlog_bytes=self.backlog_bytes(),
            backlog_records=self._backlog_records(groups, records),
            max_backlog_bytes=max_backlog_bytes,
            partition_stats=parts,
            groups=groups,
        )

    def _backlog_records(self, groups: list[GroupStats], records: int) -> int:
        holding = {g.name for g in self.holders()}
        lags = [g.lag for g in groups if g.group in holding]
        return max(lags) if lags else records

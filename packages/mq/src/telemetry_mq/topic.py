"""A topic: its partition logs and write-ahead log, the consumer groups reading it, its stats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from .errors import ProtocolError, StorageError, TopicNotFoundError
from .groups import Group
from .log import PartitionLog
from .protocol import MAX_KEY_BYTES, partition_for
from .stats import GroupPartitionStats, GroupStats, PartitionStats, TopicStats
from .wal import TopicWal

_ROUTES_KEPT = 100_000
"""Keys whose partition a topic remembers (the memo starts over past it)."""


class Topic:
    """A topic: its partition logs and the consumer groups reading it."""

    def __init__(self, name: str, path: Path, logs: list[PartitionLog], wal: TopicWal) -> None:
        self.name = name
        self.path = path
        self.logs = logs
        self.wal = wal
        self.groups: dict[str, Group] = {}
        self.changed = asyncio.Event()
        self._routes: dict[str, tuple[bytes, int]] = {}
        self.checkpoint_wanted = False
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
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            routed = self._routes[key] = (kb, partition_for(kb, len(self.logs)))
        return routed

    @property
    def partitions(self) -> int:
        """The partition count."""
        return len(self.logs)

    def notify(self) -> None:
        """Wake every long-polling fetch of this topic."""
        self.changed.set()
        self.changed.clear()

    def backlog_bytes(self) -> int:
        """Unconsumed bytes: behind the slowest group, or the whole log if no group exists."""
        if not self.groups:
            return sum(plog.size_bytes for plog in self.logs)
        return max(self._behind(g) for g in self.groups.values())

    def _behind(self, group: Group) -> int:
        return sum(
            plog.end_pos - plog.pos(cur.committed)
            for plog, cur in zip(self.logs, group.cursors, strict=True)
        )

    def consumed(self) -> list[int]:
        """Per partition, the offset below which every group is done (retention's bound)."""
        return [
            min(g.cursors[p].committed for g in self.groups.values())
            for p in range(self.partitions)
        ]

    def group_stats(self, group: str) -> GroupStats:
        """Committed offsets, lag and in-flight records of one group."""
        g = self.groups.get(group)
        if g is None:
            raise TopicNotFoundError(f"{self.name}/{group}")
        lags = g.lag(self.logs)
        parts = [
            GroupPartitionStats(
                p, cur.committed, lags[p], len(cur.leased), len(cur.ready) + len(cur.delayed)
            )
            for p, cur in enumerate(g.cursors)
        ]
        return GroupStats(self.name, group, sum(lags), g.in_flight(), self._behind(g), parts)

    def stats(self, max_backlog_bytes: int) -> TopicStats:
        """Partitions, groups and backlog."""
        parts = [
            PartitionStats(
                p, plog.start_offset, plog.next_offset, plog.size_bytes, len(plog.segments)
            )
            for p, plog in enumerate(self.logs)
        ]
        groups = [self.group_stats(name) for name in sorted(self.groups)]
        records = sum(s.end_offset - s.start_offset for s in parts)
        return TopicStats(
            name=self.name,
            partitions=self.partitions,
            records=records,
            bytes=sum(s.bytes for s in parts),
            backlog_bytes=self.backlog_bytes(),
            backlog_records=max(g.lag for g in groups) if groups else records,
            max_backlog_bytes=max_backlog_bytes,
            partition_stats=parts,
            groups=groups,
        )

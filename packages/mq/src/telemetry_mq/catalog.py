"""The topics and consumer groups a broker holds: creating, adopting, deleting, limiting them.

Invariants:

- A topic's creation completes once started: it runs shielded from its caller, so a caller
  that goes away (a fetch whose client disconnects while its records are dead-lettered) leaves
  no directory behind that no topic was opened for. Creations run one at a time.
- A client creates only topics whose dead-letter topic can exist (``check_topic_name``), at
  most ``max_topics`` of them (dead-letter topics come with their topic and are not counted),
  and at most ``max_groups_per_topic`` groups per topic (the broker's own groups, reserved
  ``_broker*`` names, are not counted).
- A group is what its topic and name say (``adopt``): a dead-letter topic's groups never
  dead-letter, and its ``REPLAY_GROUP`` is internal (never idle, never deleted by a client).
- A deleted group is gone durably before ``delete_group`` returns: its journal is swapped for
  one that writes nothing, any commit of the old journal in flight ends, then the file goes
  and its directory is fsynced. Meanwhile the group stays listed as deleted (it holds nothing,
  its calls answer as for an unknown group) and a fetch of its name waits for the deletion to
  end before it creates a new group; the deletion goes on if its caller goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import _fileio
from .commit import Committer, Unit
from .config import BrokerConfig
from .deadletter import REPLAY_GROUP, check_group_name, check_topic_name, is_dlq
from .errors import (
    GroupNotFoundError,
    LimitExceededError,
    ProtocolError,
    ReservedError,
    StorageError,
)
from .groups import Group
from .journal import GroupJournal
from .recovery import FailTopic, new_group, open_topic, write_topic_dir
from .topic import Topic

log = logging.getLogger(__name__)

Commit = Callable[[Sequence[Unit], str], Awaitable[None]]
"""``Broker._commit``: commit the units and wait until they are durable."""


class Catalog:
    """Creates topics and groups within their limits, adopts recovered groups, deletes groups."""

    def __init__(
        self,
        topics: dict[str, Topic],
        topics_dir: Path,
        config: BrokerConfig,
        *,
        clock: Callable[[], float],
        committer: Committer,
        commit: Commit,
        lease_prefix: str,
        on_roll: Callable[[Topic], None],
        on_fail: FailTopic,
        check_open: Callable[[], None],
    ) -> None:
        self._topics = topics
        self._topics_dir = topics_dir
        self._config = config
        self._clock = clock
        self._committer = committer
        self._commit = commit
        self._lease_prefix = lease_prefix
        self._on_roll = on_roll
        self._on_fail = on_fail
        self._check_open = check_open
        self._create_lock = asyncio.Lock()
        self._deleting: dict[tuple[str, str], asyncio.Future[None]] = {}

    # -- topics -------------------------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int | None) -> tuple[Topic, bool]:
        """A client's topic creation: the name is checked unless the topic exists."""
        existing = self._topics.get(name)
        if existing is not None:
            return existing, False
        check_topic_name(name)
        return await self.ensure_topic(name, partitions)

    async def ensure_topic(self, name: str, partitions: int | None) -> tuple[Topic, bool]:
        """The topic ``name``, created now (shielded) if it does not exist."""
        partitions = partitions or self._config.default_partitions
        if not 1 <= partitions <= 1024:
            raise ProtocolError("partitions must be between 1 and 1024")
        creation = asyncio.ensure_future(self._create(name, partitions))
        creation.add_done_callback(_retrieve)
        return await asyncio.shield(creation)

    async def _create(self, name: str, partitions: int) -> tuple[Topic, bool]:
        async with self._create_lock:
            existing = self._topics.get(name)
            if existing is not None:
                return existing, False
            self._check_open()
            limit = self._config.max_topics
            if not is_dlq(name) and sum(not is_dlq(n) for n in self._topics) >= limit:
                raise LimitExceededError(
                    "TOO_MANY_TOPICS", f"the broker holds {limit} topics, its limit", limit=limit
                )
            try:
                path = await asyncio.to_thread(write_topic_dir, self._topics_dir, name, partitions)
                topic = open_topic(
                    name,
                    path,
                    partitions,
                    self._topics,
                    self._config,
                    self._on_roll,
                    self._on_fail,
                )
            except OSError as e:  # the unfinished directory goes at the next start
                raise StorageError(f"creating topic {name!r} failed: {e}", topic=name) from e
            log.info("created topic %s with %d partitions", name, partitions)
            return topic, True

    # -- groups -------------------------------------------------------------------------------

    def adopt(self, t: Topic, g: Group) -> None:
        """Settle what a group is by its topic and name; it starts active."""
        if is_dlq(t.name):
            g.max_deliveries = None  # records of a dead-letter topic never dead-letter
            g.internal = g.name == REPLAY_GROUP
        g.touch(self._clock())

    async def group(self, topic: Topic, name: str, *, internal: bool = False) -> Group:
        """The group ``name`` of ``topic``, created (at the earliest offset) if it is new.

        Raises ``ProtocolError`` for a name a client may not use (unless ``internal``),
        ``LimitExceededError`` past ``max_groups_per_topic``.
        """
        while (group := topic.groups.get(name)) is not None:
            if not group.deleted:
                return group
            await asyncio.shield(self._deleting[(topic.name, name)])
        if not internal:
            check_group_name(name)
            limit = self._config.max_groups_per_topic
            if sum(not g.internal and not g.deleted for g in topic.groups.values()) >= limit:
                raise LimitExceededError(
                    "TOO_MANY_GROUPS",
                    f"topic {topic.name!r} has {limit} consumer groups, its limit",
                    limit=limit,
                )
        group = new_group(topic, name, self._config, self._lease_prefix)
        group.cursors = Group.replay([], topic.logs)  # starts at the earliest retained offset
        self.adopt(topic, group)
        topic.groups[name] = group
        group.journal.compact()  # the journal starts with a snapshot
        await self._commit([group.journal], topic.name)
        log.info("created consumer group %s on %s", name, topic.name)
        return group

    async def delete_group(self, t: Topic, group: str) -> None:
        """Delete a group of ``t``: its leases, its state and its journal (durably).

        Raises ``GroupNotFoundError``, or ``ProtocolError`` for the broker's own groups.
        """
        g = t.groups.get(group)
        if g is None or g.deleted:
            raise GroupNotFoundError(t.name, group)
        if g.internal:
            raise ReservedError(f"group {group!r} is the broker's own")
        key = (t.name, group)
        done = self._deleting[key] = asyncio.get_running_loop().create_future()
        journal = g.delete()
        waiters = t.waiters.pop(group, None)
        if waiters is not None:
            waiters.wake_all()

        async def remove() -> None:
            try:
                if journal is not None:
                    # Any commit of the journal in flight ends first; then nothing writes it.
                    await self._committer.sync([journal])
                    await asyncio.to_thread(_remove_journal, journal)
            finally:
                t.groups.pop(group, None)
                del self._deleting[key]
                done.set_result(None)

        try:
            await asyncio.shield(asyncio.create_task(remove()))
        except OSError as e:
            raise StorageError(f"deleting group {group!r}: {e}", topic=t.name) from e
        log.info("deleted consumer group %s of %s", group, t.name)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a shielded task's exception retrieved (its caller may have gone away)."""
    if not fut.cancelled():
        fut.exception()


def _remove_journal(journal: GroupJournal) -> None:
    """Close a deleted group's journal and remove it (and a compaction's leftover) durably."""
    journal.close()
    _fileio.remove(journal.path, missing_ok=True)
    _fileio.remove(journal.path.with_suffix(".tmp"), missing_ok=True)
    _fileio.fsync_dir(journal.path.parent)

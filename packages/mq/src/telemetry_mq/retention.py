"""Retention: which partition segments may be deleted (one round of the maintenance task).

Invariants:

- Nothing unconsumed goes: a topic without groups keeps everything (backpressure bounds it),
  and a segment may go only when its last offset is below **every** holding group's committed
  offset (``Topic.consumed``: idle groups hold only while all are idle), as computed both
  before and after the journal sync is awaited: a group created or back from idle during that
  await holds too.
- The committed offsets retention trusts are durable first: every group's journal is synced
  before anything is deleted, so a restart cannot bring back a committed offset below a deleted
  segment.
- Only whole, closed segments go, never a partition's active (last) one, and only when older
  than ``retention_age`` or while the partition is over ``retention_bytes``
  (``PartitionLog.retain``). The deletion runs inline on the event loop, so the segment list
  never changes under a concurrent read.
"""

from __future__ import annotations

from collections.abc import Callable

from .commit import Committer
from .config import BrokerConfig
from .topic import Topic


async def retain(
    t: Topic, committer: Committer, config: BrokerConfig, wall: Callable[[], float]
) -> None:
    """Delete ``t``'s segments that every group has consumed and the age/bytes rules allow."""
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
    await committer.sync([g.journal for g in t.groups.values()])
    consumed = [min(a, b) for a, b in zip(consumed, t.consumed(), strict=True)]
    cfg = config
    now_us = int(wall() * 1_000_000)
    age = int(cfg.retention_age * 1_000_000) if cfg.retention_age is not None else None
    for p in candidates:
        # Inline on purpose: unlinking a few files is quick, and the segment list must not
        # change under a concurrent read.
        t.logs[p].retain(consumed[p], now_us, age, cfg.retention_bytes)

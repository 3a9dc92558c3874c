"""Retention: which partition segments may be deleted (one round of the maintenance task).

Invariants:

- Nothing unconsumed goes: a topic without groups keeps everything (backpressure bounds it),
  and a segment may go only when its last offset is below **every** holding group's committed
  offset (``Topic.consumed``: idle groups hold only while all are idle), as computed both
  before and after the journal sync is awaited: a group created or back from idle during that
  await holds too. Nothing is awaited from that second reading to the last deletion.
- The committed offsets retention trusts are durable first: every group's journal is synced
  before anything is deleted, so a restart cannot bring back a committed offset below a deleted
  segment.
- Only whole, closed segments go, oldest first in each partition, never a partition's active
  (last) one nor one with frames not written yet (``PartitionLog.first_consumed``), and nothing
  of a failed topic. The deletions run inline on the event loop, so the segment list never
  changes under a concurrent read.

The rules, in turn, each round:

1. **age**: consumed segments whose newest record is older than ``retention_age``;
2. **bytes**: while the consumed records all topics keep (``Topic.retained_bytes``) are over
   ``retention_bytes``, the oldest consumed segment of any partition of any topic;
3. **disk**: while the data volume is past its high watermark (``disk.DiskWatch``), the oldest
   consumed segments whatever their age, until ``PRESSURE_MARGIN`` below it; if that is not
   enough, every partition whose active segment holds consumed records rolls it: at once
   when every record of the partition is consumed (publishes are refused, so no append may
   come; it is deleted in the same round), else at its next append, so the next rounds can
   delete it once consumed.

So the disk holds at most, per topic, its backlog (unconsumed, bounded by
``max_backlog_bytes``), one partly consumed segment per partition, and two write-ahead log
segments; plus ``retention_bytes`` of consumed records for all topics together.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence

from .commit import Committer
from .config import BrokerConfig
from .disk import DiskWatch
from .log import PartitionLog
from .stats import Observer
from .topic import Topic

log = logging.getLogger(__name__)


async def retain(
    topics: Sequence[Topic],
    committer: Committer,
    config: BrokerConfig,
    wall: Callable[[], float],
    *,
    disk: DiskWatch | None = None,
    observer: Observer | None = None,
) -> int:
    """Apply the age, bytes and disk rules once to ``topics``; return the bytes deleted."""
    excess = disk.excess() if disk is not None else 0
    held = [t for t in topics if t.groups and t.failed is None]
    if not held:
        return 0  # nobody consumed anything yet: keep it all (backpressure bounds the size)
    before = {t.name: t.consumed() for t in held}
    if not excess and not any(
        plog.first_consumed(c) is not None
        for t in held
        for plog, c in zip(t.logs, before[t.name], strict=True)
    ):
        return 0
    # Retention trusts the committed offsets: make them durable before deleting.
    await committer.sync([g.journal for t in held for g in t.groups.values()])
    # Read them again after the await (a group created or back from idle meanwhile holds too);
    # nothing is awaited from here on.
    held = [t for t in held if t.failed is None]
    consumed = {
        t.name: [min(a, b) for a, b in zip(before[t.name], t.consumed(), strict=True)] for t in held
    }
    observe = observer or Observer()
    deleted = 0
    if config.retention_age is not None:
        oldest_us = int((wall() - config.retention_age) * 1_000_000)
        for t in held:
            for plog, c in zip(t.logs, consumed[t.name], strict=True):
                while (seg := plog.first_consumed(c)) is not None and seg.last_ts < oldest_us:
                    if (gone := _drop(t, plog, "age", observe)) is None:
                        break
                    deleted += gone
    if config.retention_bytes is not None:
        over = sum(t.retained_bytes(consumed[t.name]) for t in held) - config.retention_bytes
        if over > 0:
            deleted += _drop_oldest(held, consumed, over, "bytes", observe)
    if disk is not None and excess:
        freed = _drop_oldest(held, consumed, excess, "disk", observe)
        deleted += freed
        if freed < excess:
            rolled = False
            for t in held:
                for plog, c in zip(t.logs, consumed[t.name], strict=True):
                    if plog.segments and c > plog.segments[-1].base_offset:
                        if c >= plog.next_offset and plog.roll_now():
                            rolled = True  # all consumed: it may go at once
                        else:
                            plog.roll_soon()
            if rolled:  # a roll's failed fsync may have failed its topic: nothing of it goes
                held = [t for t in held if t.failed is None]
                freed += _drop_oldest(held, consumed, excess - freed, "disk", observe)
        usage = disk.refresh()
        log.warning(
            "data volume past its high watermark: freed %d of %d bytes; %d used, %d free",
            freed,
            excess,
            usage.used,
            usage.free,
        )
    return deleted


def _drop(t: Topic, plog: PartitionLog, reason: str, observer: Observer) -> int | None:
    """Delete ``plog``'s oldest segment; its bytes, or ``None`` if its file stayed."""
    seg = plog.drop_first()
    if seg is None:
        return None
    observer.retention_deleted(t.name, reason, seg.size)
    return seg.size


def _drop_oldest(
    topics: Sequence[Topic],
    consumed: dict[str, list[int]],
    amount: int,
    reason: str,
    observer: Observer,
) -> int:
    """Delete consumed segments, the oldest of any partition first, until ``amount`` bytes
    went or none is left; return the bytes deleted."""
    heap: list[tuple[int, int, int]] = []  # (newest record's time, topic index, partition)
    for i, t in enumerate(topics):
        for p, (plog, c) in enumerate(zip(t.logs, consumed[t.name], strict=True)):
            if (seg := plog.first_consumed(c)) is not None:
                heap.append((seg.last_ts, i, p))
    heapq.heapify(heap)
    freed = 0
    while heap and freed < amount:
        _, i, p = heapq.heappop(heap)
        t = topics[i]
        plog, c = t.logs[p], consumed[t.name][p]
        gone = _drop(t, plog, reason, observer)
        if gone is None:
            continue  # this partition's file stays for now; the others may still go
        freed += gone
        if (seg := plog.first_consumed(c)) is not None:
            heapq.heappush(heap, (seg.last_ts, i, p))
    return freed

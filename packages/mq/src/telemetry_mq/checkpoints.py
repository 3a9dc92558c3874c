"""Checkpoints: when a topic's write-ahead log segments may go.

A publish is durable once its entry is in the write-ahead log; the partition files are written
in large chunks and fsynced only here. ``wal.checkpoint`` does the file work (fsync the
partition files, write ``checkpoint.json``, delete the log segments below the cut); this module
decides when, and with which offsets:

- after each roll of the log (``schedule``: at most one checkpoint task per topic; a roll during
  a checkpoint runs one more after it; none starts or repeats once the broker closes),
- at the end of recovery (``checkpoint_recovered``: everything replayed, ``next_offset``),
- at close (``Broker.close`` calls ``checkpoint_topic`` with ``next_offset`` and a cut past the
  active segment, after the last commit, so the log is empty afterwards).

Invariant: a log segment is deleted only after every record in it is durable in the partition
files. Each call first writes out the buffered frames (``write_out``), then hands the files
written since the last checkpoint to ``wal.checkpoint``, which fsyncs them before it writes
``checkpoint.json`` and deletes anything. A roll's checkpoint uses each partition's
``durable_offset`` read together with ``wal.active`` as the cut, so the records of the log
segments below the cut are below those offsets.

Storage errors (docs/broker.md, "Storage errors"):

- A checkpoint never passes a partition's ``written_offset``: while frames stay unwritten after
  a failed partition-file write, no checkpoint is taken and every log segment stays (the next
  roll, or the close, tries again once the frames are written).
- A checkpoint that fails (an fsync, or writing ``checkpoint.json``) fails the topic: nothing
  is fsynced again, since a second fsync can succeed over pages the first one lost, and no
  log segment is deleted. The restart replays the log over everything past the last
  checkpoint (``recovery``).
- A failed topic is never checkpointed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from .log import PartitionLog
from .topic import Topic
from .wal import TopicWal, checkpoint

log = logging.getLogger(__name__)


def _take_unsynced(logs: Sequence[PartitionLog]) -> list[set[Path]]:
    """Write out every partition's buffered frames; take the files to fsync from each."""
    for plog in logs:
        plog.write_out()
    unsynced = [plog.unsynced for plog in logs]
    for plog in logs:
        plog.unsynced = set()
    return unsynced


def checkpoint_recovered(path: Path, wal: TopicWal, logs: Sequence[PartitionLog]) -> bool:
    """Checkpoint a topic just recovered: everything replayed goes into the partition files.

    Returns whether it did: not while a partition could not write every replayed frame (a
    full disk: the frames stay in memory, the log keeps every segment, and a maintenance
    round writes them out and checkpoints once there is room). Raises ``OSError`` if the
    checkpoint fails (the broker does not open; nothing was deleted).
    """
    unsynced = _take_unsynced(logs)
    behind = [plog.partition for plog in logs if plog.write_error is not None]
    if behind:
        name = logs[0].topic
        log.warning(
            "no checkpoint of %s after recovery: partitions %s could not write every replayed "
            "frame (%s); they stay in memory and its write-ahead log keeps every segment",
            name,
            behind,
            logs[behind[0]].write_error,
        )
        for plog, paths in zip(logs, unsynced, strict=True):
            plog.unsynced |= paths
        return False
    offsets = [plog.next_offset for plog in logs]
    checkpoint(path, wal.path, logs, wal.active, offsets, unsynced)
    return True


def write_out_unwritten(t: Topic) -> bool:
    """Try again to write the frames a failed partition-file write left in memory.

    Returns whether ``t`` had some and all are written now; then a checkpoint follows, which
    drops the log segments kept for them (room comes back on a full disk).
    """
    stuck = [plog for plog in t.logs if plog.write_error is not None]
    if not stuck or t.failed is not None:
        return False
    for plog in stuck:
        plog.write_out()
    if any(plog.write_error is not None for plog in stuck):
        return False
    return True


def schedule(t: Topic, closing: Callable[[], bool]) -> None:
    """Checkpoint ``t`` soon (its log rolled), unless a checkpoint task is already running."""
    t.checkpoint_wanted = True
    if t.checkpointer is None or t.checkpointer.done():
        t.checkpointer = asyncio.get_running_loop().create_task(_checkpoints(t, closing))


async def _checkpoints(t: Topic, closing: Callable[[], bool]) -> None:
    while t.checkpoint_wanted and not closing() and t.failed is None:
        t.checkpoint_wanted = False
        await checkpoint_topic(t, t.wal.active, [plog.durable_offset for plog in t.logs])


async def checkpoint_topic(t: Topic, cut: int, offsets: list[int]) -> bool:
    """Fsync the partition files up to ``offsets``, then drop log segments below ``cut``.

    Returns whether it did. It does not while a partition has not written its frames up to
    its offset (a failed write: the log segments stay), nor once the topic failed; if it
    fails, it fails the topic.
    """
    if t.failed is not None:
        return False
    unsynced = _take_unsynced(t.logs)
    behind = [
        plog.partition
        for plog, offset in zip(t.logs, offsets, strict=True)
        if plog.written_offset < offset
    ]
    if behind:
        log.warning(
            "no checkpoint of %s: partitions %s have frames not written yet (a failed write); "
            "its write-ahead log keeps every segment",
            t.name,
            behind,
        )
        for plog, paths in zip(t.logs, unsynced, strict=True):
            plog.unsynced |= paths  # not fsynced yet: the next checkpoint does it
        return False
    try:
        spent = await asyncio.to_thread(
            checkpoint, t.path, t.wal.path, t.logs, cut, offsets, unsynced
        )
    except OSError as e:  # never retried: the next fsync could succeed over lost pages
        log.error("checkpoint of %s failed: %s", t.name, e)
        t.on_fail(e)
        return False
    log.debug("checkpoint of %s at log segment %d took %.3f s", t.name, cut, spent)
    return True

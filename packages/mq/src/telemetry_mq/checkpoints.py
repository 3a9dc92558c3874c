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
  a failed partition-file write, no checkpoint is taken and every log segment stays; the
  topic owes one (``Topic.checkpoint_owed``), and the next roll, maintenance round
  (``write_out_unwritten``) or close takes it once the frames are written.
- No room for the new ``checkpoint.json`` (``wal.NoRoomError``: ENOSPC or EDQUOT writing it
  aside) changes nothing: the old one stands, every log segment stays, the topic owes the
  checkpoint.
- A checkpoint that fails otherwise (an fsync, renaming ``checkpoint.json``) fails the topic:
  nothing is fsynced again, since a second fsync can succeed over pages the first one lost,
  and no log segment is deleted. The restart replays the log over everything past the last
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
from .wal import NoRoomError, TopicWal, checkpoint

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

    Returns whether it did. Not while a partition could not write every replayed frame (a
    full disk: the frames stay in memory and the log keeps every segment), nor when the
    volume has no room for ``checkpoint.json`` (the old one stands, and the log still covers
    everything past it); maintenance checkpoints once it can (``Topic.checkpoint_owed``).
    Raises ``OSError`` on any other failure, an fsync's above all (the broker does not open;
    nothing was deleted).
    """
    unsynced = _take_unsynced(logs)
    behind = [plog.partition for plog in logs if plog.write_error is not None]
    if behind:
        log.warning(
            "no checkpoint of %s after recovery: partitions %s could not write every replayed "
            "frame (%s); they stay in memory and its write-ahead log keeps every segment",
            logs[0].topic,
            behind,
            logs[behind[0]].write_error,
        )
        for plog, paths in zip(logs, unsynced, strict=True):
            plog.unsynced |= paths
        return False
    for plog, paths in zip(logs, unsynced, strict=True):
        plog.sync(paths)  # an fsync error raises: never retried
    offsets = [plog.next_offset for plog in logs]
    try:
        checkpoint(path, wal.path, logs, wal.active, offsets, [set() for _ in logs])
    except NoRoomError as e:
        log.warning(
            "no checkpoint of %s after recovery: no room for checkpoint.json (%s); its "
            "write-ahead log keeps every segment",
            logs[0].topic if logs else path.name,
            e,
        )
        return False
    return True


def write_out_unwritten(t: Topic) -> bool:
    """Try again to write the frames a failed partition-file write left in memory.

    Returns whether ``t`` owes a checkpoint (``Topic.checkpoint_owed``) it can take now: every
    frame is written (by this call or an earlier write-out). That checkpoint drops the log
    segments kept meanwhile: room comes back on a full disk.
    """
    if t.failed is not None:
        return False
    for plog in t.logs:
        if plog.write_error is not None:
            plog.write_out()
    return t.checkpoint_owed and all(plog.write_error is None for plog in t.logs)


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
        t.checkpoint_owed = True
        return False
    try:
        spent = await asyncio.to_thread(
            checkpoint, t.path, t.wal.path, t.logs, cut, offsets, unsynced
        )
    except NoRoomError as e:  # the old checkpoint stands: the log keeps its segments
        log.log(
            logging.DEBUG if t.checkpoint_owed else logging.WARNING,  # once, not every round
            "no checkpoint of %s: %s; its write-ahead log keeps every segment",
            t.name,
            e,
        )
        t.checkpoint_owed = True
        return False
    except OSError as e:  # never retried: the next fsync could succeed over lost pages
        log.error("checkpoint of %s failed: %s", t.name, e)
        t.on_fail(e)
        return False
    log.debug("checkpoint of %s at log segment %d took %.3f s", t.name, cut, spent)
    t.checkpoint_owed = False
    return True

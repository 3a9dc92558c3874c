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
segments below the cut are below those offsets. If the checkpoint fails, the segments stay and
the files go back on the unsynced list for the next one.

Known gap: a failed partition-file write (``plog.failed``) is not checked: a checkpoint then
records offsets the partition file does not hold and deletes the log segments that do.
Known gap: after an fsync error the paths are re-queued and fsynced again; the retry succeeds
(the kernel reports a writeback error once), so the next checkpoint trusts data that may be
lost and deletes the log segments.
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


def checkpoint_recovered(path: Path, wal: TopicWal, logs: Sequence[PartitionLog]) -> None:
    """Checkpoint a topic just recovered: everything replayed goes into the partition files."""
    unsynced = _take_unsynced(logs)
    offsets = [plog.next_offset for plog in logs]
    checkpoint(path, wal.path, logs, wal.active, offsets, unsynced)


def schedule(t: Topic, closing: Callable[[], bool]) -> None:
    """Checkpoint ``t`` soon (its log rolled), unless a checkpoint task is already running."""
    t.checkpoint_wanted = True
    if t.checkpointer is None or t.checkpointer.done():
        t.checkpointer = asyncio.get_running_loop().create_task(_checkpoints(t, closing))


async def _checkpoints(t: Topic, closing: Callable[[], bool]) -> None:
    while t.checkpoint_wanted and not closing():
        t.checkpoint_wanted = False
        await checkpoint_topic(t, t.wal.active, [plog.durable_offset for plog in t.logs])


async def checkpoint_topic(t: Topic, cut: int, offsets: list[int]) -> None:
    """Fsync the partition files up to ``offsets``, then drop log segments below ``cut``."""
    unsynced = _take_unsynced(t.logs)
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

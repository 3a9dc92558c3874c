"""The data directory: creating a topic's directory, and opening every topic and group at start.

Layout: ``<data_dir>/topics/<name>/`` holds ``topic.json``, ``checkpoint.json``, ``wal/`` (the
write-ahead log), ``partitions/<p:04d>/`` (the partition logs) and ``groups/<group>.journal``.

Invariants:

- A topic directory exists under its name only when complete: ``write_topic_dir`` builds it as
  ``<name>.creating`` (fsynced ``checkpoint.json`` and ``topic.json``) and renames it into place,
  then fsyncs ``topics/``. ``recover`` deletes any ``*.creating`` directory as a creation that
  never completed, and skips a directory without ``topic.json``.
- No acknowledged record is lost: a publish is acknowledged once its frames are durable in the
  write-ahead log, so ``open_topic`` loads each partition (intact below its checkpointed
  offset; a bad frame at or past it, and what follows, is cut off as never fsynced), replays
  every log segment from the checkpoint's ``wal`` on into the partitions, then checkpoints
  (``checkpoints.checkpoint_recovered``) unless the log was empty and a checkpoint exists.
- No acknowledged ack is lost: an ack is acknowledged once it is durable in its group's journal,
  and ``recover`` replays every ``groups/*.journal`` into the group's cursors; a committed
  offset past a partition's end is brought back to the end (``Group.replay``).
- What cannot be trusted is refused, not guessed at: damage below a partition's checkpointed
  offset, a gap between segments, a partition shorter than its checkpoint, a log frame that
  would leave a gap, or a journal corrupt other than at its tail raise ``CorruptLogError`` (from
  ``log``, ``wal`` and ``journal``), and the broker does not open.

Known gap: a topic whose own name ends in ``.creating`` passes the name check, and ``recover``
deletes it at the next start with everything acknowledged in it.
Known gap: ``topic.json``'s directory entry inside ``<name>.creating`` is not fsynced before the
rename.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final

import orjson

from .checkpoints import checkpoint_recovered
from .config import BrokerConfig
from .groups import Group
from .journal import read_journal
from .log import PartitionLog, fsync_dir
from .topic import Topic
from .wal import CHECKPOINT, TopicWal, read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

_TOPIC_META: Final = "topic.json"
_JOURNAL_SUFFIX: Final = ".journal"


def recover(
    topics_dir: Path,
    topics: dict[str, Topic],
    config: BrokerConfig,
    lease_prefix: str,
    on_roll: Callable[[Topic], None],
) -> None:
    """Open every complete topic under ``topics_dir`` into ``topics``, with its groups."""
    topics_dir.mkdir(parents=True, exist_ok=True)
    for tmp in topics_dir.glob("*.creating"):
        shutil.rmtree(tmp)  # a topic creation that never completed
    for path in sorted(topics_dir.iterdir()):
        meta_file = path / _TOPIC_META
        if not meta_file.is_file():
            continue
        meta = orjson.loads(meta_file.read_bytes())
        topic = open_topic(meta["name"], path, int(meta["partitions"]), topics, config, on_roll)
        for journal in sorted((path / "groups").glob(f"*{_JOURNAL_SUFFIX}")):
            name = journal.name.removesuffix(_JOURNAL_SUFFIX)
            group = new_group(topic, name, config, lease_prefix)
            group.cursors = Group.replay(read_journal(journal), topic.logs)
            topic.groups[name] = group
        log.info(
            "recovered topic %s: %d partitions, %d records, %d groups",
            topic.name,
            topic.partitions,
            sum(plog.next_offset - plog.start_offset for plog in topic.logs),
            len(topic.groups),
        )


def open_topic(
    name: str,
    path: Path,
    partitions: int,
    topics: dict[str, Topic],
    config: BrokerConfig,
    on_roll: Callable[[Topic], None],
) -> Topic:
    """Load the partitions, replay the write-ahead log into them, checkpoint if it held any.

    The topic joins ``topics``; each roll of its write-ahead log calls ``on_roll(topic)``.
    """
    start, trusted = read_checkpoint(path, partitions)
    logs = [
        PartitionLog.open(
            name,
            p,
            path / "partitions" / f"{p:04d}",
            segment_bytes=config.segment_bytes,
            trusted=trusted[p],
        )
        for p in range(partitions)
    ]
    wal, replayed = TopicWal.recover(
        name, path / "wal", logs, start=start, segment_bytes=config.wal_segment_bytes
    )
    if replayed:
        log.warning("replayed %d records of %s from its write-ahead log", replayed, name)
    if wal.active != start or not (path / CHECKPOINT).exists():
        checkpoint_recovered(path, wal, logs)
    topic = Topic(name, path, logs, wal)
    wal.on_roll = lambda: on_roll(topic)
    topics[name] = topic
    return topic


def new_group(topic: Topic, name: str, config: BrokerConfig, lease_prefix: str) -> Group:
    """A group of ``topic`` with no cursors yet, journaled in ``groups/<name>.journal``."""
    return Group(
        topic.name,
        name,
        [],
        journal_path=topic.path / "groups" / f"{name}{_JOURNAL_SUFFIX}",
        compact_bytes=config.journal_compact_bytes,
        max_deliveries=config.max_deliveries,
        lease_prefix=lease_prefix,
    )


def write_topic_dir(topics_dir: Path, name: str, partitions: int) -> Path:
    """Create the empty topic directory ``topics_dir/name`` atomically; return its path."""
    path = topics_dir / name
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
    fsync_dir(topics_dir)
    return path

"""The data directory: creating a topic's directory, and opening every topic and group at start.

Layout: ``<data_dir>/topics/<name>/`` holds ``topic.json``, ``checkpoint.json``, ``wal/`` (the
write-ahead log), ``partitions/<p:04d>/`` (the partition logs) and ``groups/<group>.journal``.

Invariants:

- A topic directory exists under its name only when complete: ``write_topic_dir`` builds it as
  ``.creating-<name>`` (fsynced ``checkpoint.json`` and ``topic.json``, and fsynced directory
  entries), renames it into place, then fsyncs ``topics/``. A name starting with ``.`` is no
  valid topic name, so ``recover`` deletes every ``.creating-*`` directory as a creation that
  never completed without ever meeting a topic. It deletes a ``<name>.creating`` directory
  only when its ``topic.json`` names ``<name>`` (an unfinished creation of an earlier version;
  a topic may be called ``x.creating``), and skips a directory without ``topic.json``.
- No acknowledged record is lost: a publish is acknowledged once its frames are durable in the
  write-ahead log, so ``open_topic`` loads each partition (intact below its checkpointed
  offset; everything from there on is cut off as never fsynced), replays every log segment
  from the checkpoint's ``wal`` on into the partitions, then checkpoints
  (``checkpoints.checkpoint_recovered``) unless the log was empty and a checkpoint exists.
  On a full disk, replayed frames the partition files cannot take stay in memory and no
  checkpoint is taken, nor is one whose ``checkpoint.json`` finds no room: the broker opens,
  and a maintenance round writes the frames out and checkpoints once retention has made
  room (``Broker.open``). A file that cannot be cut back after a failed write keeps the
  broker from opening.
  Replaying everything past the checkpoint, rather than trusting what the partition files
  hold there, is what makes a restart after an fsync error safe: the kernel may still serve
  pages it failed to write, which would read back intact yet be lost at the next power cut.
- No acknowledged ack is lost: an ack is acknowledged once it is durable in its group's journal,
  and ``recover`` replays every ``groups/*.journal`` into the group's cursors; a committed
  offset past a partition's end is brought back to the end (``Group.replay``).
- What cannot be trusted is refused, not guessed at: damage below a partition's checkpointed
  offset, a gap between segments, a partition shorter than its checkpoint, a log frame that
  would leave a gap, or a journal corrupt other than at its tail raise ``CorruptLogError`` (from
  ``log``, ``wal`` and ``journal``), and the broker does not open.

"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final

import orjson

from . import _fileio
from ._fileio import fsync_dir
from .checkpoints import checkpoint_recovered
from .config import BrokerConfig
from .groups import Group
from .journal import GroupJournal, read_journal
from .log import PartitionLog
from .topic import Topic
from .wal import CHECKPOINT, TopicWal, read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

_TOPIC_META: Final = "topic.json"
_JOURNAL_SUFFIX: Final = ".journal"
_CREATING: Final = ".creating-"
"""Prefix of a topic directory being created (no topic name starts with a dot)."""
_LEGACY_CREATING: Final = ".creating"
"""Suffix earlier versions gave a topic directory being created."""

FailTopic = Callable[[Topic, BaseException], None]


def recover(
    topics_dir: Path,
    topics: dict[str, Topic],
    config: BrokerConfig,
    lease_prefix: str,
    on_roll: Callable[[Topic], None],
    on_fail: FailTopic,
) -> None:
    """Open every complete topic under ``topics_dir`` into ``topics``, with its groups."""
    _fileio.make_dirs(topics_dir)
    for path in sorted(topics_dir.iterdir()):
        if path.name.startswith(_CREATING):
            shutil.rmtree(path)  # a topic creation that never completed
            continue
        meta_file = path / _TOPIC_META
        if not meta_file.is_file():
            continue
        meta = orjson.loads(meta_file.read_bytes())
        if meta["name"] != path.name:
            if path.name == meta["name"] + _LEGACY_CREATING:
                shutil.rmtree(path)  # an earlier version's creation that never completed
            else:
                log.warning("skipping %s: its topic.json names topic %r", path, meta["name"])
            continue
        topic = open_topic(
            meta["name"], path, int(meta["partitions"]), topics, config, on_roll, on_fail
        )
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
    on_fail: FailTopic,
) -> Topic:
    """Load the partitions, replay the write-ahead log into them, checkpoint if it held any.

    The topic joins ``topics``; each roll of its write-ahead log calls ``on_roll(topic)``, and
    a storage error its files cannot recover from calls ``on_fail(topic, error)``.
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
    # A failed write during the replay keeps its frames in memory (``write_error``), with no
    # bound (what the files cannot take is about what they held past the checkpoint, cut off
    # just before, plus what was unwritten at run time); a file that cannot be cut back after
    # a failed write keeps the broker from opening at once, replay and checkpoint included.
    for plog in logs:
        plog.bounded = False
        plog.on_fail = _refuse
    wal, replayed = TopicWal.recover(
        name, path / "wal", logs, start=start, segment_bytes=config.wal_segment_bytes
    )
    if replayed:
        log.warning("replayed %d records of %s from its write-ahead log", replayed, name)
    owed = False
    if wal.active != start or not (path / CHECKPOINT).exists():
        owed = not checkpoint_recovered(path, wal, logs)
    topic = Topic(name, path, logs, wal)
    topic.checkpoint_owed = owed
    wal.on_roll = lambda: on_roll(topic)
    topic.on_fail = lambda error: on_fail(topic, error)
    wal.on_fail = topic.on_fail
    for plog in logs:
        plog.on_fail = topic.on_fail
        plog.bounded = True
    topics[name] = topic
    return topic


def _refuse(error: BaseException) -> None:
    """A partition's ``on_fail`` while its topic opens: the broker does not open."""
    raise error


def new_group(topic: Topic, name: str, config: BrokerConfig, lease_prefix: str) -> Group:
    """A group of ``topic`` with no cursors yet, journaled in ``groups/<name>.journal``."""
    group = Group(
        topic.name,
        name,
        [],
        journal_path=topic.path / "groups" / f"{name}{_JOURNAL_SUFFIX}",
        compact_bytes=config.journal_compact_bytes,
        max_deliveries=config.max_deliveries,
        lease_prefix=lease_prefix,
    )
    journal = group.journal
    assert isinstance(journal, GroupJournal)  # a new group is never deleted
    journal.on_fail = topic.on_fail
    return group


def write_topic_dir(topics_dir: Path, name: str, partitions: int) -> Path:
    """Create the empty topic directory ``topics_dir/name`` atomically; return its path.

    Every file and directory entry in it is durable before the rename makes it the topic.
    """
    path = topics_dir / name
    tmp = topics_dir / f"{_CREATING}{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    _fileio.mkdir(tmp)
    for sub in ("groups", "partitions", "wal"):
        _fileio.mkdir(tmp / sub)
    for p in range(partitions):
        _fileio.mkdir(tmp / "partitions" / f"{p:04d}")
    write_checkpoint(tmp, 0, [0] * partitions)
    meta = orjson.dumps({"name": name, "partitions": partitions, "format": 1})
    _fileio.write_file(tmp / _TOPIC_META, meta)
    fsync_dir(tmp / "partitions")
    fsync_dir(tmp)  # topic.json's entry, and the directories' (checkpoint.json's is already)
    _fileio.replace(tmp, path)
    fsync_dir(topics_dir)
    return path

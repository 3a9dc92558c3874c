"""A topic's write-ahead log: one fsync per commit, whatever the partition count.

A publish spreads its records over up to P partitions. Fsyncing P partition files per commit
would cost P device flushes (and P round trips to worker threads); instead, the frames of a
commit cycle go to one append-only file per topic, which is fsynced once (or written with
``O_DSYNC``: one system call). Once that write is durable, the records become readable (from
the partitions' in-memory tails); their frames reach the partition files later, in large
writes without fsync (``PartitionLog.write_out``).

Checkpoints make the partition files durable: when the log rolls to a new segment file, the
partition files written since the last checkpoint are fsynced, ``checkpoint.json`` records the
offset each partition is durable up to, and the log's older segment files are deleted. A clean
shutdown checkpoints everything, so the log is empty after it.

On start, each partition is loaded (records below its checkpointed offset must be intact;
everything past it is cut off), then the log is replayed: every frame past a partition's end
is appended to it again. So an acknowledged record is never lost, even if the partition file
lost its unsynced tail in a power failure, or pages a failed fsync could not write.

Entry on disk (little endian): ``size u32 | crc u32 | partition u32 | frames``, where ``frames``
are the partition's record frames (``protocol.encode_frame``), ``size`` their length and
``crc`` the CRC-32 of the partition field and the frames.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Final

import orjson

from . import _fileio
from ._fileio import fsync_dir, write_all
from .errors import CorruptLogError
from .log import AppendFile, PartitionLog
from .protocol import decode_frames

log = logging.getLogger(__name__)

ENTRY_HEAD: Final = struct.Struct("<III")
_PART: Final = struct.Struct("<I")
SUFFIX: Final = ".wal"
CHECKPOINT: Final = "checkpoint.json"


def wal_name(segment: int) -> str:
    """The file name of write-ahead log segment number ``segment``."""
    return f"{segment:020d}{SUFFIX}"


def _crc(partition: int, frames: bytes | memoryview) -> int:
    return zlib.crc32(frames, zlib.crc32(_PART.pack(partition)))


def encode_entry(partition: int, frames: bytes) -> bytes:
    """One log entry: a partition's frames of one publish."""
    return ENTRY_HEAD.pack(len(frames), _crc(partition, frames), partition) + frames


# -- checkpoints ---------------------------------------------------------------------------


def read_checkpoint(topic_dir: Path, partitions: int) -> tuple[int, list[int]]:
    """The first log segment to replay and each partition's durable offset (0s if none)."""
    path = topic_dir / CHECKPOINT
    if not path.exists():
        return 0, [0] * partitions
    doc = orjson.loads(path.read_bytes())
    offsets = [int(o) for o in doc["offsets"]]
    if len(offsets) != partitions:
        raise CorruptLogError(
            f"checkpoint has {len(offsets)} partitions, the topic {partitions}",
            path=str(path),
            position=0,
        )
    return int(doc["wal"]), offsets


class NoRoomError(OSError):
    """No room for a new ``checkpoint.json`` (ENOSPC or EDQUOT writing it aside): the old one
    stands and nothing else changed, so a later checkpoint may simply try again."""


def write_checkpoint(topic_dir: Path, wal: int, offsets: Sequence[int]) -> None:
    """Atomically replace the topic's checkpoint (write, fsync, rename, fsync the directory).

    Raises ``NoRoomError`` when the volume has no room for the new file.
    """
    path = topic_dir / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    try:
        _fileio.write_file(tmp, orjson.dumps({"format": 1, "wal": wal, "offsets": list(offsets)}))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the new file only: nothing to retry
            raise NoRoomError(e.errno, f"no room for {tmp}: {e.strerror}") from e
        raise
    _fileio.replace(tmp, path)
    fsync_dir(topic_dir)


def checkpoint(
    topic_dir: Path,
    wal_dir: Path,
    logs: Sequence[PartitionLog],
    cut: int,
    offsets: Sequence[int],
    unsynced: Sequence[set[Path]],
) -> float:
    """Make ``offsets`` durable in the partition files, then drop log segments below ``cut``.

    Every record in a log segment below ``cut`` must be below its partition's offset in
    ``offsets`` and written to the partition file. Runs in a worker thread; returns the
    seconds spent. An error before the new checkpoint is durable raises (the caller fails
    the topic: no fsync is retried; ``NoRoomError`` is the exception, changing nothing); one
    deleting old log segments is only logged (the next start deletes them).
    """
    started = perf_counter()
    for plog, paths in zip(logs, unsynced, strict=True):
        plog.sync(paths)
    write_checkpoint(topic_dir, cut, offsets)
    try:
        deleted = False
        for file in sorted(wal_dir.glob(f"*{SUFFIX}")):
            if int(file.name.removesuffix(SUFFIX)) < cut:
                _fileio.remove(file, missing_ok=True)
                deleted = True
        if deleted:
            fsync_dir(wal_dir)
    except OSError as e:
        log.error("deleting log segments of %s below %d failed: %s", wal_dir, cut, e)
    return perf_counter() - started


# -- the log ---------------------------------------------------------------------------------


class TopicWal(AppendFile):
    """The write-ahead log of one topic: a commit unit (``commit.Unit``) of the committer.

    ``add`` buffers a partition's frames (after ``PartitionLog.append``); a commit writes the
    buffer to the active segment, then makes those records of the partitions readable.
    ``on_roll`` is called on the event loop after a commit that started a new segment: the
    broker checkpoints then. A failed write or fsync fails the log for good (``AppendFile``):
    the records of the failed commit, and of every later one, never become readable.
    """

    def __init__(
        self,
        topic: str,
        path: Path,
        logs: Sequence[PartitionLog],
        *,
        active: int,
        segment_bytes: int,
    ) -> None:
        self.topic = topic
        self.path = path
        self.logs = logs
        self.active = active
        self.segment_bytes = segment_bytes
        self.on_roll: Callable[[], None] = lambda: None
        self._size = 0  # bytes in the active segment, including pending ones
        self._pending = bytearray()
        self._dirty: dict[int, None] = {}
        # Owned by the committer between prepare() and finish(): a worker thread, or the
        # event loop for an inline job.
        self._fd: int | None = None
        self._dsync_fd: int | None = None
        self._fd_segment = -1
        self._unsynced = False
        self.failed: BaseException | None = None
        self.on_fail: Callable[[BaseException], None] = lambda _: None

    def add(self, partition: int, frames: bytes) -> None:
        """Buffer ``frames`` of ``partition`` for the next commit."""
        self._pending += encode_entry(partition, frames)
        self._dirty[partition] = None

    def prepare(self) -> _WalJob:
        """Detach the pending entries (rolling to a new segment if the active one is full)."""
        data, self._pending = bytes(self._pending), bytearray()
        rolled = False
        if data and self._size >= self.segment_bytes:
            self.active += 1
            self._size = 0
            rolled = True
        self._size += len(data)
        ends = [(p, self.logs[p].next_offset) for p in self._dirty]
        self._dirty = {}
        # A plain append to the open segment may be written on the event loop.
        inline = not rolled and self._fd is not None and self._fd_segment == self.active
        return _WalJob(self, data, self.active, ends, rolled, inline)

    def _write(self, data: bytes, segment: int, fsync: bool) -> float:
        self._check()
        if data and segment != self._fd_segment:
            self._close_fds()
            path = self.path / wal_name(segment)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            self._fd = _fileio.open(path, flags, 0o644)
            self._fd_segment = segment
            fsync_dir(self.path)
        started = perf_counter()
        if data:
            if fsync and not self._unsynced:
                # One system call: the write returns once its data is on disk.
                if self._dsync_fd is None:
                    path = self.path / wal_name(segment)
                    flags = os.O_WRONLY | os.O_APPEND | os.O_DSYNC | os.O_CLOEXEC
                    self._dsync_fd = _fileio.open(path, flags)
                write_all(self._dsync_fd, data)
                return perf_counter() - started
            assert self._fd is not None
            self._unsynced = True  # before the write: a failed one may leave bytes behind
            write_all(self._fd, data)
            started = perf_counter()
        if fsync and self._unsynced and self._fd is not None:
            _fileio.fdatasync(self._fd)
            self._unsynced = False
            return perf_counter() - started
        return 0.0

    def _close_fds(self) -> None:
        if self._fd is not None:
            if self._unsynced and self.failed is None:  # a segment is durable before it is left
                _fileio.fdatasync(self._fd)
                self._unsynced = False
            os.close(self._fd)
            self._fd = None
        if self._dsync_fd is not None:
            os.close(self._dsync_fd)
            self._dsync_fd = None
        self._fd_segment = -1

    def close(self) -> None:
        """Fsync and close the active segment (after the committer has stopped); a failed
        log is closed without an fsync: nothing in it past the failure is trusted."""
        self._close_fds()

    # -- recovery --------------------------------------------------------------------------

    @classmethod
    def recover(
        cls,
        topic: str,
        path: Path,
        logs: Sequence[PartitionLog],
        *,
        start: int,
        segment_bytes: int,
    ) -> tuple[TopicWal, int]:
        """Replay the segments from ``start`` on into ``logs``; return the log and the count.

        The replayed frames are written to the partition files (not fsynced: the caller
        checkpoints); those a failed write (a full disk) leaves out stay buffered, as at run
        time (``PartitionLog.write_error``). A bad entry at the tail of the last segment is a
        torn write and is cut off; anywhere else it raises ``CorruptLogError``, as does a gap
        in a partition.
        """
        _fileio.make_dirs(path)
        files = sorted(path.glob(f"*{SUFFIX}"))
        replayed = 0
        last = start - 1
        for i, file in enumerate(files):
            segment = int(file.name.removesuffix(SUFFIX))
            if segment < start:
                _fileio.remove(file)  # a checkpoint covers it; its deletion was cut short
                continue
            replayed += _replay_file(topic, file, logs, last=i == len(files) - 1)
            last = segment
        for plog in logs:
            plog.write_out()  # a failed write keeps the frames in memory: the log has them
            plog.made_durable(plog.next_offset)
        return cls(topic, path, logs, active=last + 1, segment_bytes=segment_bytes), replayed


class _WalJob:
    __slots__ = ("_data", "_ends", "_rolled", "_segment", "_wal", "inline")

    def __init__(
        self,
        wal: TopicWal,
        data: bytes,
        segment: int,
        ends: list[tuple[int, int]],
        rolled: bool,
        inline: bool,
    ) -> None:
        self._wal = wal
        self._data = data
        self._segment = segment
        self._ends = ends  # (partition, next offset when prepared)
        self._rolled = rolled
        self.inline = inline

    def run(self, fsync: bool) -> float:
        return self._wal._write(self._data, self._segment, fsync)

    def write(self) -> int | None:
        return self._wal._append(self._data)

    def synced(self) -> None:
        self._wal._synced()

    def finish(self, error: BaseException | None) -> None:
        wal = self._wal
        if error is not None:
            log.error("write-ahead log of %s: write failed: %s", wal.topic, error)
            wal._fail(error)
            return
        if wal.failed is not None:  # never: a failed log's jobs raise
            return
        logs = wal.logs
        for p, end in self._ends:
            logs[p].made_durable(end)
        if self._rolled:
            self._wal.on_roll()


def _replay_file(topic: str, file: Path, logs: Sequence[PartitionLog], *, last: bool) -> int:
    data = file.read_bytes()
    pos = 0
    end = len(data)
    replayed = 0
    while pos < end:
        problem = None
        if end - pos < ENTRY_HEAD.size:
            problem = "truncated entry header"
        else:
            size, crc, partition = ENTRY_HEAD.unpack_from(data, pos)
            body = pos + ENTRY_HEAD.size
            if body + size > end:
                problem = "entry runs past the end of the file"
            elif partition >= len(logs):
                problem = f"entry names partition {partition} of {len(logs)}"
            elif _crc(partition, memoryview(data)[body : body + size]) != crc:
                problem = "checksum mismatch"
        if problem is not None:
            if last and not _valid_entry_after(data, pos + 1, len(logs)):
                log.warning("truncating torn tail of %s at byte %d: %s", file, pos, problem)
                _fileio.truncate_file(file, pos)
                break
            raise CorruptLogError(problem, path=str(file), position=pos, topic=topic)
        replayed += _replay_entry(topic, file, pos, logs[partition], data[body : body + size])
        pos = body + size
    return replayed


def _replay_entry(topic: str, file: Path, pos: int, plog: PartitionLog, frames: bytes) -> int:
    count = 0
    at = 0
    while at < len(frames):  # count the frames (each is size-prefixed)
        at += 8 + int.from_bytes(frames[at : at + 4], "little")
        count += 1
    replayed = 0
    try:
        for offset, ts, key, value in decode_frames(frames, count):
            if offset < plog.next_offset:
                continue  # the partition file has it
            if offset > plog.next_offset:
                raise CorruptLogError(
                    f"the log holds offset {offset} of partition {plog.partition}, which ends "
                    f"at {plog.next_offset}",
                    path=str(file),
                    position=pos,
                    topic=topic,
                    partition=plog.partition,
                    offset=plog.next_offset,
                )
            plog.append([(key, key.encode(), value)], ts)
            replayed += 1
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise CorruptLogError(
            f"bad frame in an intact entry: {e}",
            path=str(file),
            position=pos,
            topic=topic,
            partition=plog.partition,
        ) from e
    return replayed


def _valid_entry_after(data: bytes, start: int, partitions: int) -> bool:
    """Whether an intact entry starts anywhere past ``start`` (then the damage is not a tail)."""
    end = len(data)
    unpack = ENTRY_HEAD.unpack_from
    view = memoryview(data)
    for q in range(start, end - ENTRY_HEAD.size + 1):
        size, crc, partition = unpack(data, q)
        body = q + ENTRY_HEAD.size
        if (
            partition < partitions
            and 0 < size <= end - body
            and _crc(partition, view[body : body + size]) == crc
        ):
            return True
    return False

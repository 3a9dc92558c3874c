"""A partition's append-only log: segment files, appends through group commit, reads, retention."""

from __future__ import annotations

import logging
import os
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Final

from . import _fileio
from ._fileio import fsync_dir, write_all
from .errors import CorruptLogError, StorageError
from .protocol import BODY_HEAD, FRAME_HEAD, PREFIX, decode_frame_list
from .segment import INDEX_BYTES, SUFFIX, Segment, load_segment, segment_name

log = logging.getLogger(__name__)

Record = tuple[int, int, str, bytes]
"""A stored record: ``(offset, timestamp_us, key, value)``."""


class AppendFile:
    """An append-only file the committer writes: its descriptor, whether it holds data not
    yet fdatasynced, and whether it failed (the write-ahead log's segment, a group journal).

    A failed write or fsync fails the file for good: bytes of the failed write may be in it,
    and after a failed fsync the kernel may have dropped the pages it could not write and
    report success to the next fsync. So it is never written or fsynced again; every later
    job fails at once and ``on_fail`` fails the topic (docs/broker.md, "Storage errors").
    """

    _fd: int | None
    _unsynced: bool
    failed: BaseException | None
    on_fail: Callable[[BaseException], None]

    def _check(self) -> None:
        """Raise if the file failed earlier (nothing may be written to it or trusted)."""
        if self.failed is not None:
            raise OSError(f"not written: this file failed earlier ({self.failed})")

    def _append(self, data: bytes) -> int | None:
        """Append to the open file without fsync; the descriptor if data is not durable."""
        self._check()
        fd = self._fd
        assert fd is not None
        if data:
            self._unsynced = True  # before the write: a failed one may leave bytes behind
            write_all(fd, data)
        return fd if self._unsynced else None

    def _synced(self) -> None:
        """The descriptor ``_append`` returned was fdatasynced."""
        self._unsynced = False

    def _fail(self, error: BaseException) -> None:
        """A job of this file failed: fail the file (and through ``on_fail``, its topic)."""
        if self.failed is None:
            self.failed = error
            self.on_fail(error)


TAIL_RECORDS: Final = 2048
"""Newest records of a partition kept in memory for reads (between half and all of it)."""
PENDING_BYTES: Final = 1024 * 1024
"""Frames a partition buffers at most before writing them to its segment file."""
UNWRITTEN_LIMIT: Final = 16 * 1024 * 1024
"""Frames a partition may hold in memory after failed writes before its topic fails."""
_KNOWN_POSITIONS: Final = 64
"""Positions of file records a partition remembers (where reads ended, committed offsets)."""


class PartitionLog:
    """One partition: an ordered list of segments; only the last one is written to.

    Offsets are assigned on append (on the event loop); records become readable once the
    topic's write-ahead log holds them durably (``made_durable`` advances ``durable_offset``).
    The newest records are kept in memory, and their frames are written to the segment files
    in large writes (``write_out``); checkpoints make the files durable.

    A failed write to a segment file (disk full, I/O error, a short write) loses nothing: the
    frames stay buffered and in the in-memory tail, the file is cut back to the frames written
    before and never written again, and the next write goes to a new segment file starting
    at the first unwritten record. No checkpoint passes ``written_offset`` meanwhile.
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        path: Path,
        segments: list[Segment],
        *,
        segment_bytes: int,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.path = path
        self.segments = segments
        self._bases = [s.base_offset for s in segments]
        self.segment_bytes = segment_bytes
        self.next_offset = segments[-1].end_offset if segments else 0
        self.durable_offset = self.next_offset
        self.failed: BaseException | None = None
        """Set when the topic failed (``Broker``): appends are refused."""
        self.write_error: OSError | None = None
        """The last failed write, until a write succeeds again."""
        self.bounded = True
        """Whether more than ``UNWRITTEN_LIMIT`` of unwritten frames fails the topic (not
        during the replay at start: ``recovery``)."""
        self.on_durable: Callable[[], None] = lambda: None
        self.on_fail: Callable[[BaseException], None] = lambda _: None
        # Frames not in the files yet: (segment, offset of the first frame, frames).
        self._pending: list[tuple[Segment, int, bytearray]] = []
        self._pending_bytes = 0
        self._wseg: Segment | None = None
        self._wfd: int | None = None
        self.unsynced: set[Path] = set()
        """Segment files written since the last checkpoint (not fsynced yet)."""
        self._roll_wanted = False
        # The newest records as appended, so a consumer keeping up reads them from memory
        # instead of reading and checking their frames again: offsets [_tail_start, next).
        self._tail: list[Record] = []
        self._tail_start = self.next_offset
        # Cumulative byte position of each tail record: what reads and backlog sums of recent
        # offsets need, without a file read.
        self._tail_pos = array("Q")
        # Positions of records below the tail found by a file read (segments index only one
        # record per INDEX_BYTES): the next read usually starts where the last one ended.
        self._known: dict[int, int] = {}

    @classmethod
    def open(
        cls, topic: str, partition: int, path: Path, *, segment_bytes: int, trusted: int = 0
    ) -> PartitionLog:
        """Open (recovering) the partition stored in ``path``; create it if missing.

        ``trusted``: the offset the topic's last checkpoint made durable here (see
        ``load_segment``); the records from there on may be cut off, for the topic's
        write-ahead log to replay.
        """
        _fileio.make_dirs(path)
        files = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIX))
        segments: list[Segment] = []
        base_pos = 0
        for i, file in enumerate(files):
            base = int(file.name.removesuffix(SUFFIX))
            if segments and base != segments[-1].end_offset:
                if segments[-1].end_offset >= trusted:
                    # The earlier segment lost its unsynced tail: the write-ahead log replays it.
                    for later in files[i:]:
                        log.warning("deleting %s: it follows a gap past the checkpoint", later)
                        _fileio.remove(later)
                    break
                raise CorruptLogError(
                    f"segment starts at offset {base}, expected {segments[-1].end_offset}",
                    path=str(file),
                    position=0,
                    topic=topic,
                    partition=partition,
                    offset=segments[-1].end_offset,
                )
            seg, truncated = load_segment(
                file,
                base,
                base_pos,
                last=i == len(files) - 1,
                topic=topic,
                partition=partition,
                trusted=trusted,
            )
            segments.append(seg)
            base_pos += seg.size
            if truncated:
                for later in files[i + 1 :]:
                    log.warning("deleting %s: it follows a truncated segment", later)
                    _fileio.remove(later)
                break
        plog = cls(topic, partition, path, segments, segment_bytes=segment_bytes)
        if plog.next_offset < trusted:
            raise CorruptLogError(
                f"the partition ends at offset {plog.next_offset}, but the checkpoint made "
                f"offsets below {trusted} durable",
                path=str(path),
                position=plog.end_pos,
                topic=topic,
                partition=partition,
                offset=plog.next_offset,
            )
        return plog

    # -- sizes ------------------------------------------------------------------------------

    @property
    def start_offset(self) -> int:
        """The oldest retained offset."""
        return self.segments[0].base_offset if self.segments else self.next_offset

    @property
    def end_pos(self) -> int:
        """Cumulative bytes appended to the partition (since the oldest retained segment)."""
        return self.segments[-1].base_pos + self.segments[-1].size if self.segments else 0

    @property
    def written_offset(self) -> int:
        """Every record below it is in the segment files (written; fsynced by checkpoints)."""
        return self._pending[0][1] if self._pending else self.next_offset

    @property
    def size_bytes(self) -> int:
        """Bytes retained on disk (including writes in flight)."""
        return self.end_pos - (self.segments[0].base_pos if self.segments else 0)

    def pos(self, offset: int) -> int:
        """Cumulative byte position of ``offset`` (clamped to the retained range)."""
        if not self.segments or offset >= self.next_offset:
            return self.end_pos
        if offset <= self.start_offset:
            return self.segments[0].base_pos
        seg = self.segments[bisect_right(self._bases, offset) - 1]
        return seg.base_pos + self._pos_in(seg, offset)

    def _pos_in(self, seg: Segment, offset: int) -> int:
        """Byte position of ``offset`` in ``seg``'s file: from memory, or a short file read."""
        if offset >= seg.end_offset:
            return seg.size
        tail_start = self._tail_start
        if offset >= tail_start:
            return self._tail_pos[offset - tail_start] - seg.base_pos
        known = self._known.get(offset)
        if known is not None:
            return known - seg.base_pos
        pos = seg.pos_of(offset)
        self._remember(offset, seg.base_pos + pos)
        return pos

    def _pos_bound(self, seg: Segment, offset: int) -> int:
        """A position in ``seg``'s file at or past ``offset``'s, without a file read: the exact
        one if known, else its index entry's or the next one's."""
        if offset >= seg.end_offset:
            return seg.size
        tail_start = self._tail_start
        if offset >= tail_start:
            return self._tail_pos[offset - tail_start] - seg.base_pos
        known = self._known.get(offset)
        if known is not None:
            return known - seg.base_pos
        return min(seg.pos_bound(offset), seg.written)  # only what is in the file

    def _remember(self, offset: int, pos: int) -> None:
        if len(self._known) >= _KNOWN_POSITIONS:
            self._known.clear()
        self._known[offset] = pos

    @property
    def index_bytes(self) -> int:
        """Memory the position indexes take: the segments' sparse indexes and the tail's."""
        tail = self._tail_pos
        return sum(seg.index_bytes for seg in self.segments) + tail.itemsize * len(tail)

    # -- append (event loop) + write (committer thread) ----------------------------------

    def append(
        self, items: Sequence[tuple[str, bytes, bytes]], timestamp_us: int
    ) -> tuple[int, bytes]:
        """Assign offsets to ``(key, key UTF-8, value)`` items and buffer their frames.

        Returns the first offset and the frames (for the topic's write-ahead log).
        """
        if self.failed is not None:
            raise StorageError(
                f"partition {self.partition} of {self.topic!r} failed: {self.failed}",
                topic=self.topic,
                partition=self.partition,
            )
        first = offset = self.next_offset
        if not self.segments:
            self._add_segment(offset, 0)
        seg = self.segments[-1]
        size = seg.size
        base = seg.base_pos
        indexed = seg.indexed_pos
        limit = self.segment_bytes
        if self._roll_wanted:
            self._roll_wanted = False
            limit = 0  # roll before the first record (the loop sets the limit back)
        if seg.end_offset == seg.base_offset:
            seg.first_ts = timestamp_us
        frames: list[bytes] = []  # of the current segment
        done: list[bytes] = []  # of earlier segments (a roll within this call)
        chunk_first = offset
        tail = self._tail
        tail_pos = self._tail_pos
        head = BODY_HEAD.pack
        prefix = PREFIX.pack
        crc32 = zlib.crc32
        for key, kb, value in items:
            if size >= limit and offset > seg.base_offset:
                seg.size = size
                seg.end_offset = offset
                seg.last_ts = timestamp_us
                chunk = b"".join(frames)
                self._buffer(seg, chunk_first, chunk)
                done.append(chunk)
                frames = []
                seg = self._add_segment(offset, base + size)
                seg.first_ts = timestamp_us
                limit = self.segment_bytes
                base = seg.base_pos
                indexed = seg.indexed_pos
                size = 0
                chunk_first = offset
            body = head(offset, timestamp_us, len(kb)) + kb + value
            frame = prefix(len(body), crc32(body)) + body
            frames.append(frame)
            if size - indexed >= INDEX_BYTES:
                seg.add(offset, size)
                indexed = size
            tail_pos.append(base + size)
            size += len(frame)
            tail.append((offset, timestamp_us, key, value))
            offset += 1
        chunk = b"".join(frames)
        self._buffer(seg, chunk_first, chunk)
        seg.size = size
        seg.end_offset = offset
        seg.last_ts = timestamp_us
        self.next_offset = offset
        if len(tail) > TAIL_RECORDS or self._pending_bytes > PENDING_BYTES:
            self.write_out()  # first: records below the tail are read from the files
            if (
                self.write_error is not None
                and self.bounded
                and self._pending_bytes > UNWRITTEN_LIMIT
            ):
                self.on_fail(self.write_error)  # memory is bounded (not so a retry's)
            if len(tail) > TAIL_RECORDS:
                # Never past the written records (a write may have failed): the records below
                # the tail are read from the files.
                drop = min(len(tail) - TAIL_RECORDS // 2, self.written_offset - self._tail_start)
                if drop > 0:
                    del tail[:drop]
                    del self._tail_pos[:drop]
                    self._tail_start += drop
        if done:
            done.append(chunk)
            return first, b"".join(done)
        return first, chunk

    def _buffer(self, seg: Segment, first: int, chunk: bytes) -> None:
        if not chunk:
            return
        self._pending_bytes += len(chunk)
        if self._pending and self._pending[-1][0] is seg:
            self._pending[-1][2].extend(chunk)
        else:
            self._pending.append((seg, first, bytearray(chunk)))

    def _add_segment(self, base_offset: int, base_pos: int) -> Segment:
        seg = Segment(self.path / segment_name(base_offset), base_offset, base_pos)
        self.segments.append(seg)
        self._bases.append(base_offset)
        return seg

    @property
    def pending_bytes(self) -> int:
        """Frames buffered, not in the segment files yet."""
        return self._pending_bytes

    def made_durable(self, end: int) -> None:
        """The topic's write-ahead log holds the records below ``end``: make them readable.

        They are read from memory (the tail) until ``write_out`` has put them in the files.
        """
        if end > self.durable_offset:
            self.durable_offset = end
            self.on_durable()

    def write_out(self) -> None:
        """Write the buffered frames to the segment files (no fsync; checkpoints do that).

        Runs on the event loop, rarely: before records leave the in-memory tail (so a read
        below the tail finds them in the files), past ``PENDING_BYTES``, and before a
        checkpoint or a close. Frames whose log write is still in flight may be written too:
        they are only readable once ``made_durable``. A failed write keeps the frames
        buffered (``_write_failed``); the next call writes them to a new file.
        """
        pending = self._pending
        if not pending:
            return
        done = 0
        fd = self._wfd
        try:
            for seg, _, data in pending:
                if fd is None or seg is not self._wseg:
                    if fd is not None:
                        os.close(fd)
                        self._wfd = None
                    self._wseg = seg
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                    fd = self._wfd = _fileio.open(seg.path, flags, 0o644)
                self.unsynced.add(seg.path)
                write_all(fd, data)
                seg.written += len(data)
                done += 1
        except OSError as e:
            del pending[:done]
            self._pending_bytes = sum(len(data) for _, _, data in pending)
            self._write_failed(e)
            return
        self._pending = []
        self._pending_bytes = 0
        if self.write_error is not None:
            log.warning("partition %d of %s: writes succeed again", self.partition, self.topic)
            self.write_error = None

    def _write_failed(self, error: OSError) -> None:
        """Keep the unwritten frames; cut the file back and leave it; the next write starts
        a new segment file at the first unwritten record (docs/broker.md, "Storage errors")."""
        seg, first, data = self._pending[0]
        fd, self._wfd, self._wseg = self._wfd, None, None
        self.write_error = error
        log.error(
            "partition %d of %s: writing %s failed at offset %d: %s; %d bytes stay buffered",
            self.partition,
            self.topic,
            seg.path,
            first,
            error,
            self._pending_bytes,
        )
        try:
            if fd is not None:
                try:
                    # The failed write may have left part of its bytes: cut them off, so the
                    # file ends with the last frame written whole.
                    _fileio.ftruncate(fd, seg.written)
                finally:
                    os.close(fd)
            if seg.written:
                self._split(seg, first, data)
            # else nothing of this segment is in its file, cut back to empty: the next write
            # goes to it again. It stays: the last segment's file (an empty one after an
            # immediate roll) is what tells a restart where the partition ends.
        except OSError as e:
            log.error(
                "partition %d of %s: cutting %s back failed: %s",
                self.partition,
                self.topic,
                seg.path,
                e,
            )
            self.on_fail(e)

    def _split(self, seg: Segment, first: int, data: bytearray) -> None:
        """End ``seg`` before ``first``; a new segment (and file) holds the rest."""
        cut = seg.written
        assert self._tail_pos[first - self._tail_start] == seg.base_pos + cut, (
            "chunks hold whole frames, written in order; unwritten records stay in the tail"
        )
        new = seg.split(first, cut)
        new.first_ts = FRAME_HEAD.unpack_from(data, 0)[3]
        new.last_ts = seg.last_ts
        seg.last_ts = new.first_ts  # at most a little late: retention keeps it a little longer
        k = self.segments.index(seg) + 1
        self.segments.insert(k, new)
        self._bases.insert(k, first)
        self._pending = [(new if s is seg else s, f, d) for s, f, d in self._pending]
        log.warning(
            "partition %d of %s: %s continues in %s",
            self.partition,
            self.topic,
            seg.path.name,
            new.path.name,
        )

    def sync(self, paths: set[Path]) -> float:
        """Fsync ``paths`` (segment files written since the last checkpoint) and the directory.

        Runs in a worker thread; a file deleted meanwhile by retention is skipped.
        """
        started = perf_counter()
        for path in paths:
            try:
                fd = _fileio.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                _fileio.fdatasync(fd)
            finally:
                os.close(fd)
        if paths:
            fsync_dir(self.path)
        return perf_counter() - started

    # -- reads ------------------------------------------------------------------------------

    def read(self, start: int, max_records: int, max_bytes: int) -> list[Record]:
        """Durable records from ``start`` on, at most ``max_records`` and about ``max_bytes``.

        A read never crosses a segment boundary and always returns at least one record when
        ``start`` is below the durable end.
        """
        start = max(start, self.start_offset)
        stop = min(self.durable_offset, start + max_records)
        if start >= stop:
            return []
        tail_start = self._tail_start
        seg = self.segments[bisect_right(self._bases, start) - 1]
        stop = min(stop, seg.end_offset)
        if start >= tail_start:
            tail_pos = self._tail_pos
            i0, i1 = start - tail_start, stop - tail_start
            first = tail_pos[i0]
            end = tail_pos[i1] if i1 < len(tail_pos) else self.end_pos
            if end - first > max_bytes:
                # Record i ends where record i + 1 starts: keep those ending within max_bytes.
                idx = bisect_right(tail_pos, first + max_bytes, i0 + 1, i1)
                i1 = max(idx - 1, i0 + 1)
            return self._tail[i0:i1]
        # From the files, which hold every record below the tail (not always the rest).
        stop = min(stop, tail_start)
        count = stop - start
        first = self._pos_in(seg, start)
        end = self._pos_bound(seg, stop)
        if end - first > max_bytes:
            data = seg.read_at(first, max(max_bytes, PREFIX.size))
            count = _whole_frames(data, count)
            if count == 0:  # the first record alone is larger: read it whole
                data = seg.read_at(first, PREFIX.size + PREFIX.unpack_from(data)[0])
                count = 1
        else:  # (up to a few KiB past ``stop`` when its position is not known exactly)
            data = seg.read_at(first, end - first)
        try:
            records, length = decode_frame_list(data, count)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptLogError(
                str(e),
                path=str(seg.path),
                position=first,
                topic=self.topic,
                partition=self.partition,
                offset=start,
            ) from e
        # Where the next read starts, and where a committed offset often lands (a lease's end):
        # remembered, so neither needs a walk from the index.
        self._remember(start + count, seg.base_pos + first + length)
        return records

    def read_offsets(self, offsets: Sequence[int]) -> list[Record]:
        """The records at ``offsets`` (sorted ascending, all retained and durable)."""
        out: list[Record] = []
        i = 0
        while i < len(offsets):
            # Read runs of consecutive offsets in one go.
            j = i + 1
            while j < len(offsets) and offsets[j] == offsets[j - 1] + 1:
                j += 1
            start = offsets[i]
            while start <= offsets[j - 1]:
                got = self.read(start, offsets[j - 1] + 1 - start, 1 << 62)
                out.extend(got)
                start = got[-1][0] + 1
            i = j
        return out

    # -- retention, close ------------------------------------------------------------------

    def first_consumed(self, consumed: int) -> Segment | None:
        """The oldest segment if retention may delete it: closed, every record below
        ``consumed`` and in the files (its buffered frames are written out first); else
        ``None`` (the active, last segment never goes)."""
        if len(self.segments) < 2 or self.segments[0].end_offset > consumed:
            return None
        seg = self.segments[0]
        if seg.end_offset > self.written_offset:
            self.write_out()  # a failed write keeps the frames, and the segment stays
            if seg.end_offset > self.written_offset:
                return None
        return seg

    def drop_first(self) -> Segment | None:
        """Delete the oldest segment and its file (``first_consumed`` said it may go); ``None``
        when the file could not be deleted (nothing is lost: the next round tries again)."""
        if self._pending:
            self.write_out()  # no buffered frame may recreate a deleted file later
        following = self.segments[1]
        if self._pending and not (following.written or following.path.exists()):
            # A failed write left the next segment without a file: this one is what tells a
            # restart where the partition ends. It stays until the frames are written.
            return None
        seg = self.segments[0]
        seg.close()
        self._close_writer(seg)  # a deleted file's blocks stay while a descriptor holds it
        try:
            _fileio.remove(seg.path, missing_ok=True)
        except OSError as e:
            log.error("retention could not delete %s: %s", seg.path, e)
            return None
        self.segments.pop(0)
        self._bases.pop(0)
        log.info(
            "retention deleted %s (offsets %d-%d, %d bytes)",
            seg.path,
            seg.base_offset,
            seg.end_offset - 1,
            seg.size,
        )
        return seg

    def roll_soon(self) -> None:
        """Start a new segment at the next append, so the active one can be deleted once
        consumed (retention under disk pressure asks for it)."""
        self._roll_wanted = True

    def roll_now(self) -> bool:
        """Start a new, empty segment (and its file) now, so the active one can be deleted
        without waiting for an append: retention under disk pressure asks for it when every
        record is consumed, since publishes are refused then and no append would come.

        Returns whether it rolled: not with nothing to roll, nor while frames stay unwritten.
        The empty file is durable before anything is deleted, so the partition never loses
        its end offset (``open`` reads it from the file names).
        """
        if self.failed is not None or not self.segments:
            return False
        seg = self.segments[-1]
        if seg.end_offset == seg.base_offset:
            return False  # empty already
        self.write_out()
        if self.write_error is not None or self._pending:
            return False
        self._close_writer(seg)  # its file is about to go: no descriptor may hold its blocks
        new = self._add_segment(self.next_offset, seg.base_pos + seg.size)
        try:
            fd = _fileio.open(new.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:  # no room even for an empty file: nothing changed
            self.segments.pop()
            self._bases.pop()
            log.warning("partition %d of %s: cannot roll: %s", self.partition, self.topic, e)
            return False
        os.close(fd)
        try:
            fsync_dir(self.path)
        except OSError as e:  # never retried (a failed fsync): fail the topic, roll nothing
            self.segments.pop()
            self._bases.pop()
            self.on_fail(e)
            return False
        self._roll_wanted = False
        return True

    def _close_writer(self, seg: Segment) -> None:
        """Close the write descriptor if it is ``seg``'s."""
        if self._wseg is seg and self._wfd is not None:
            os.close(self._wfd)
            self._wfd = self._wseg = None

    def close(self) -> None:
        """Close every descriptor (after the committer has stopped, ``write_out`` and the
        last checkpoint: that fsynced what was written; a failed topic fsyncs nothing)."""
        for seg in self.segments:
            seg.close()
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None


def _whole_frames(data: bytes, most: int) -> int:
    """How many whole frames (at most ``most``) ``data`` starts with."""
    unpack = PREFIX.unpack_from
    end = len(data)
    count = at = 0
    while count < most and at + PREFIX.size <= end:
        nxt = at + PREFIX.size + unpack(data, at)[0]
        if nxt > end:
            break
        at = nxt
        count += 1
    return count

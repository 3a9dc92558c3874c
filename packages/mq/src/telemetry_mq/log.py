"""A partition's append-only log: segment files, appends through group commit, reads, retention."""

from __future__ import annotations

import logging
import os
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Final

from . import _fileio
from ._fileio import fsync_dir, write_all
from .errors import CorruptLogError, StorageError
from .protocol import BODY_HEAD, PREFIX, decode_frames
from .segment import SUFFIX, Segment, load_segment, segment_name

log = logging.getLogger(__name__)

Record = tuple[int, int, str, bytes]
"""A stored record: ``(offset, timestamp_us, key, value)``."""


class AppendFile:
    """An append-only file the committer writes: its descriptor and whether it holds data
    not yet fdatasynced (the write-ahead log's segment, a group journal)."""

    _fd: int | None
    _unsynced: bool

    def _append(self, data: bytes) -> int | None:
        """Append to the open file without fsync; the descriptor if data is not durable."""
        fd = self._fd
        assert fd is not None
        if data:
            write_all(fd, data)
            self._unsynced = True
        return fd if self._unsynced else None

    def _synced(self) -> None:
        """The descriptor ``_append`` returned was fdatasynced."""
        self._unsynced = False


TAIL_RECORDS: Final = 2048
"""Newest records of a partition kept in memory for reads (between half and all of it)."""
PENDING_BYTES: Final = 1024 * 1024
"""Frames a partition buffers at most before writing them to its segment file."""


class PartitionLog:
    """One partition: an ordered list of segments; only the last one is written to.

    Offsets are assigned on append (on the event loop); records become readable once the
    topic's write-ahead log holds them durably (``made_durable`` advances ``durable_offset``).
    The newest records are kept in memory, and their frames are written to the segment files
    in large writes (``write_out``); checkpoints make the files durable.
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
        self.on_durable: Callable[[], None] = lambda: None
        self._pending: list[tuple[Segment, bytearray]] = []  # frames not in the files yet
        self._pending_bytes = 0
        self._wseg: Segment | None = None
        self._wfd: int | None = None
        self.unsynced: set[Path] = set()
        """Segment files written since the last checkpoint (not fsynced yet)."""
        # The newest records as appended, so a consumer keeping up reads them from memory
        # instead of reading and checking their frames again: offsets [_tail_start, next).
        self._tail: list[Record] = []
        self._tail_start = self.next_offset

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
        return seg.base_pos + seg.pos_of(offset)

    # -- append (event loop) + write (committer thread) ----------------------------------

    def append(
        self, items: Sequence[tuple[str, bytes, bytes]], timestamp_us: int
    ) -> tuple[int, bytes]:
        """Assign offsets to ``(key, key UTF-8, value)`` items and buffer their frames.

        Returns the first offset and the frames (for the topic's write-ahead log).
        """
        if self.failed is not None:
            raise StorageError(
                f"partition {self.partition} of {self.topic!r} failed a write: {self.failed}",
                topic=self.topic,
                partition=self.partition,
            )
        first = offset = self.next_offset
        if not self.segments:
            self._add_segment(offset, 0)
        seg = self.segments[-1]
        positions = seg.positions
        size = seg.size
        limit = self.segment_bytes
        if not positions:
            seg.first_ts = timestamp_us
        frames: list[bytes] = []  # of the current segment
        done: list[bytes] = []  # of earlier segments (a roll within this call)
        tail = self._tail
        head = BODY_HEAD.pack
        prefix = PREFIX.pack
        crc32 = zlib.crc32
        for key, kb, value in items:
            if size >= limit and positions:
                seg.size = size
                seg.last_ts = timestamp_us
                chunk = b"".join(frames)
                self._buffer(seg, chunk)
                done.append(chunk)
                frames = []
                seg = self._add_segment(offset, seg.base_pos + size)
                seg.first_ts = timestamp_us
                positions = seg.positions
                size = 0
            body = head(offset, timestamp_us, len(kb)) + kb + value
            frame = prefix(len(body), crc32(body)) + body
            frames.append(frame)
            positions.append(size)
            size += len(frame)
            tail.append((offset, timestamp_us, key, value))
            offset += 1
        chunk = b"".join(frames)
        self._buffer(seg, chunk)
        if len(tail) > TAIL_RECORDS or self._pending_bytes > PENDING_BYTES:
            self.write_out()  # first: records below the tail are read from the files
            if len(tail) > TAIL_RECORDS:
                drop = len(tail) - TAIL_RECORDS // 2
                del tail[:drop]
                self._tail_start += drop
        seg.size = size
        seg.last_ts = timestamp_us
        self.next_offset = offset
        if done:
            done.append(chunk)
            return first, b"".join(done)
        return first, chunk

    def _buffer(self, seg: Segment, chunk: bytes) -> None:
        self._pending_bytes += len(chunk)
        if self._pending and self._pending[-1][0] is seg:
            self._pending[-1][1].extend(chunk)
        else:
            self._pending.append((seg, bytearray(chunk)))

    def _add_segment(self, base_offset: int, base_pos: int) -> Segment:
        seg = Segment(self.path / segment_name(base_offset), base_offset, base_pos)
        self.segments.append(seg)
        self._bases.append(base_offset)
        return seg

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
        they are only readable once ``made_durable``. A failed write marks the partition failed.
        """
        chunks, self._pending = self._pending, []
        self._pending_bytes = 0
        try:
            fd = self._wfd
            for seg, data in chunks:
                if fd is None or seg is not self._wseg:
                    if fd is not None:
                        os.close(fd)
                        self._wfd = None
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                    fd = self._wfd = _fileio.open(seg.path, flags, 0o644)
                    self._wseg = seg
                self.unsynced.add(seg.path)
                write_all(fd, data)
        except OSError as e:
            log.error("partition %d of %s: write failed: %s", self.partition, self.topic, e)
            self.failed = e

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
        if start < tail_start:
            # From the files, which hold every record below the tail (not always the rest).
            stop = min(stop, tail_start)
        seg = self.segments[bisect_right(self._bases, start) - 1]
        stop = min(stop, seg.end_offset)
        first = seg.pos_of(start)
        if seg.pos_of(stop) - first > max_bytes:
            i0 = start - seg.base_offset
            idx = bisect_right(seg.positions, first + max_bytes, i0 + 1, stop - seg.base_offset)
            stop = seg.base_offset + max(idx - 1, i0 + 1)
        if start >= tail_start:
            return self._tail[start - tail_start : stop - tail_start]
        data = seg.read(start, stop)
        try:
            records = list(decode_frames(data, stop - start))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptLogError(
                str(e),
                path=str(seg.path),
                position=first,
                topic=self.topic,
                partition=self.partition,
                offset=start,
            ) from e
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

    def retain(
        self, consumed: int, now_us: int, max_age_us: int | None, max_bytes: int | None
    ) -> int:
        """Delete old segments below ``consumed`` that are too old or over the size bound.

        The active (last) segment is never deleted. Returns the number of segments deleted.
        """
        if self._pending:
            self.write_out()  # no buffered frame may recreate a deleted file later
        deleted = 0
        while len(self.segments) > 1:
            seg = self.segments[0]
            if seg.end_offset > consumed:
                break
            too_old = max_age_us is not None and now_us - seg.last_ts > max_age_us
            too_big = max_bytes is not None and self.size_bytes > max_bytes
            if not (too_old or too_big):
                break
            seg.close()
            _fileio.remove(seg.path, missing_ok=True)
            self.segments.pop(0)
            self._bases.pop(0)
            deleted += 1
            log.info(
                "retention deleted %s (offsets %d-%d)",
                seg.path,
                seg.base_offset,
                seg.end_offset - 1,
            )
        return deleted

    def close(self) -> None:
        """Close every descriptor (after the committer has stopped and ``write_out``)."""
        for seg in self.segments:
            seg.close()
        if self._wfd is not None:
            _fileio.fdatasync(self._wfd)
            os.close(self._wfd)
            self._wfd = None

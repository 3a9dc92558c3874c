"""One segment file of a partition log: its sparse position index, reads and recovery."""

from __future__ import annotations

import logging
import os
import zlib
from array import array
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Final

from . import _fileio
from .errors import CorruptLogError
from .protocol import FRAME_HEAD, FRAME_OVERHEAD, MAX_KEY_BYTES, PREFIX

log = logging.getLogger(__name__)

SUFFIX: Final = ".log"
# A frame larger than this is never written: a size field above it is garbage.
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
INDEX_BYTES: Final = 4096
"""A segment's index holds the first frame at or past every ``INDEX_BYTES`` of its file (as
Kafka's ``index.interval.bytes``): 8 bytes of memory per 4 KiB of log, whatever the records'
size, and a lookup reads at most ``INDEX_BYTES`` from the nearest entry."""
MAX_SEGMENT_BYTES: Final = 256 * 1024 * 1024
"""Largest ``segment_bytes``: recovery reads a segment whole, and positions fit 32 bits."""
_SIZE: Final = PREFIX.size


def segment_name(base_offset: int) -> str:
    """The file name of the segment whose first record has ``base_offset``."""
    return f"{base_offset:020d}{SUFFIX}"


class Segment:
    """A segment file: records ``[base_offset, end_offset)`` and a sparse index of their positions.

    The index maps one frame per ``INDEX_BYTES`` of file (and the first) to its byte position;
    any other record's position is found by reading the frames' size fields from the nearest
    entry below it. The records themselves stay on disk and are read with ``pread``.
    """

    __slots__ = (
        "_index_offsets",
        "_index_positions",
        "_rfd",
        "base_offset",
        "base_pos",
        "end_offset",
        "first_ts",
        "indexed_pos",
        "last_ts",
        "path",
        "size",
        "written",
    )

    def __init__(self, path: Path, base_offset: int, base_pos: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self.end_offset = base_offset  # one past the last record assigned to this segment
        self.base_pos = base_pos  # bytes of the partition before this segment (for backlog sums)
        self.size = 0  # bytes assigned, including records whose write is still pending
        self.written = 0  # bytes in the file (written by this process, or found at recovery)
        self.first_ts = 0
        self.last_ts = 0
        # Sparse index: record number in the segment and byte position, one entry per
        # INDEX_BYTES; ``indexed_pos`` is the position of the last entry (``add`` appends).
        self._index_offsets = array("I")
        self._index_positions = array("I")
        self.indexed_pos = -INDEX_BYTES
        self._rfd: int | None = None

    def add(self, offset: int, pos: int) -> None:
        """Index the frame of ``offset`` at ``pos`` (the caller checks ``INDEX_BYTES``)."""
        self._index_offsets.append(offset - self.base_offset)
        self._index_positions.append(pos)
        self.indexed_pos = pos

    @property
    def index_bytes(self) -> int:
        """Memory the index takes (its entries)."""
        return 4 * (len(self._index_offsets) + len(self._index_positions))

    def pos_of(self, offset: int) -> int:
        """Byte position of ``offset`` in the file (``size`` for the end).

        Reads the frames' size fields from the nearest index entry below ``offset``, so the
        frames there must be in the file (every record below the partition's in-memory tail).
        """
        if offset >= self.end_offset:
            return self.size
        rel = offset - self.base_offset
        k = bisect_right(self._index_offsets, rel) - 1
        pos: int = self._index_positions[k]
        skip = rel - self._index_offsets[k]
        if skip == 0:
            return pos
        # Every frame after the entry and before the next one starts less than INDEX_BYTES
        # past it, so its size field lies within the first INDEX_BYTES + 4 bytes.
        data = os.pread(self._fd(), min(INDEX_BYTES + _SIZE, self.written - pos), pos)
        unpack = PREFIX.unpack_from
        at = 0
        try:
            for _ in range(skip):
                at += _SIZE + unpack(data, at)[0]
        except Exception as e:  # struct.error: the file is shorter than the index says
            raise CorruptLogError(
                f"cannot walk to offset {offset}: {e}", path=str(self.path), position=pos + at
            ) from e
        return pos + at

    def pos_bound(self, offset: int) -> int:
        """A position at or past ``offset``'s, from the index alone: the entry of ``offset``
        or the next one (at most ``INDEX_BYTES`` and a frame past it), else ``size``."""
        k = bisect_left(self._index_offsets, offset - self.base_offset)
        return self._index_positions[k] if k < len(self._index_positions) else self.size

    def split(self, first: int, cut: int) -> Segment:
        """End this segment before record ``first`` (at byte ``cut``); the rest, with its part
        of the index, goes to a new segment named after ``first``."""
        rel = first - self.base_offset
        new = Segment(self.path.with_name(segment_name(first)), first, self.base_pos + cut)
        k = bisect_left(self._index_offsets, rel)
        new.add(first, 0)  # a segment's first frame is always indexed
        for o, q in zip(self._index_offsets[k:], self._index_positions[k:], strict=True):
            if q > cut:
                new.add(self.base_offset + o, q - cut)
        del self._index_offsets[k:]
        del self._index_positions[k:]
        self.indexed_pos = self._index_positions[-1] if self._index_positions else -INDEX_BYTES
        new.end_offset, self.end_offset = self.end_offset, first
        new.size, self.size = self.size - cut, cut
        return new

    def read_at(self, position: int, length: int) -> bytes:
        """``length`` bytes of the file from ``position`` (all must be in the file)."""
        data = os.pread(self._fd(), length, position)
        if len(data) != length:
            raise CorruptLogError(
                f"short read ({len(data)} of {length} bytes)",
                path=str(self.path),
                position=position,
            )
        return data

    def _fd(self) -> int:
        if self._rfd is None:
            self._rfd = _fileio.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._rfd

    def close(self) -> None:
        """Close the read descriptor."""
        if self._rfd is not None:
            os.close(self._rfd)
            self._rfd = None


def load_segment(
    path: Path,
    base_offset: int,
    base_pos: int,
    *,
    last: bool,
    topic: str,
    partition: int,
    trusted: int = 0,
) -> tuple[Segment, bool]:
    """Rebuild a segment's index by scanning its file, verifying every frame.

    Returns the segment and whether it was truncated. Records below ``trusted`` (the offset
    the topic's last checkpoint made durable in this partition) must be intact: a bad frame
    there raises ``CorruptLogError`` naming the partition, file and offset, unless it is a
    torn write at the tail of the partition's last segment. Everything from ``trusted`` on is
    cut off: it was never fsynced, and after a failed fsync a re-read can even return pages
    that are not on the disk; the topic's write-ahead log holds every acknowledged record
    from ``trusted`` on and replays them.
    """
    data = path.read_bytes()
    seg = Segment(path, base_offset, base_pos)
    pos = 0
    end = len(data)
    expected = base_offset
    crc32 = zlib.crc32
    truncated = False
    while pos < end:
        if expected >= trusted:
            log.info(
                "cutting %s at byte %d (offset %d): past the checkpoint, the log replays it",
                path,
                pos,
                expected,
            )
            _fileio.truncate_file(path, pos)
            truncated = True
            break
        problem = None
        if end - pos < FRAME_OVERHEAD:
            problem = "truncated frame header"
        else:
            size, crc, offset, ts, key_len = FRAME_HEAD.unpack_from(data, pos)
            body_end = pos + PREFIX.size + size
            if size < FRAME_OVERHEAD - PREFIX.size or size > MAX_FRAME_BYTES:
                problem = f"implausible frame size {size}"
            elif body_end > end:
                problem = "frame runs past the end of the file"
            elif crc32(data[pos + PREFIX.size : body_end]) != crc:
                problem = "checksum mismatch"
            elif offset != expected or key_len > MAX_KEY_BYTES or key_len > size:
                problem = f"frame holds offset {offset}, expected {expected}"
        if problem is not None:
            # Torn (nothing valid follows the bad frame: an unfinished, unacknowledged write):
            # cut it off; the write-ahead log replays what was acked.
            if last and not _valid_frame_after(data, pos + 1, expected):
                log.warning(
                    "truncating %s at byte %d (offset %d): %s",
                    path,
                    pos,
                    expected,
                    problem,
                )
                _fileio.truncate_file(path, pos)
                truncated = True
                break
            raise CorruptLogError(
                problem,
                path=str(path),
                position=pos,
                topic=topic,
                partition=partition,
                offset=expected,
            )
        if pos - seg.indexed_pos >= INDEX_BYTES:
            seg.add(expected, pos)
        if expected == base_offset:
            seg.first_ts = ts
        seg.last_ts = ts
        expected += 1
        pos = body_end
    seg.size = seg.written = pos
    seg.end_offset = expected
    return seg, truncated


def _valid_frame_after(data: bytes, start: int, expected: int) -> bool:
    """Whether an intact frame with an offset after ``expected`` starts anywhere past ``start``."""
    end = len(data)
    unpack = FRAME_HEAD.unpack_from
    for q in range(start, end - FRAME_OVERHEAD + 1):
        size, crc, offset, _, key_len = unpack(data, q)
        if (
            expected < offset <= expected + (q - start) // FRAME_OVERHEAD + 1
            and FRAME_OVERHEAD - PREFIX.size <= size <= end - q - PREFIX.size
            and key_len <= size
            and zlib.crc32(data[q + PREFIX.size : q + PREFIX.size + size]) == crc
        ):
            return True
    return False

"""One segment file of a partition log: its in-memory position index, reads and recovery."""

from __future__ import annotations

import logging
import os
import zlib
from array import array
from pathlib import Path
from typing import Final

from . import _fileio
from .errors import CorruptLogError
from .protocol import FRAME_HEAD, FRAME_OVERHEAD, MAX_KEY_BYTES, PREFIX

log = logging.getLogger(__name__)

SUFFIX: Final = ".log"
# A frame larger than this is never written: a size field above it is garbage.
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024


def segment_name(base_offset: int) -> str:
    """The file name of the segment whose first record has ``base_offset``."""
    return f"{base_offset:020d}{SUFFIX}"


class Segment:
    """A segment file: records ``[base_offset, end_offset)`` and their byte positions.

    ``positions`` holds 8 bytes per record, so a million-record backlog costs 8 MB of memory;
    the records themselves stay on disk and are read with ``pread``.
    """

    __slots__ = (
        "_rfd",
        "base_offset",
        "base_pos",
        "first_ts",
        "last_ts",
        "path",
        "positions",
        "size",
        "written",
    )

    def __init__(self, path: Path, base_offset: int, base_pos: int) -> None:
        self.path = path
        self.base_offset = base_offset
        self.base_pos = base_pos  # bytes of the partition before this segment (for backlog sums)
        self.positions = array("Q")
        self.size = 0  # bytes assigned, including records whose write is still pending
        self.written = 0  # bytes in the file (written by this process, or found at recovery)
        self.first_ts = 0
        self.last_ts = 0
        self._rfd: int | None = None

    @property
    def end_offset(self) -> int:
        """One past the last record assigned to this segment."""
        return self.base_offset + len(self.positions)

    def pos_of(self, offset: int) -> int:
        """Byte position of ``offset`` in the file (``size`` for the end)."""
        i = offset - self.base_offset
        return self.positions[i] if i < len(self.positions) else self.size

    def read(self, start: int, stop: int) -> bytes:
        """The raw frames of records ``[start, stop)`` (all must be durable)."""
        if self._rfd is None:
            self._rfd = _fileio.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        first = self.pos_of(start)
        length = self.pos_of(stop) - first
        data = os.pread(self._rfd, length, first)
        if len(data) != length:
            raise CorruptLogError(
                f"short read ({len(data)} of {length} bytes)", path=str(self.path), position=first
            )
        return data

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
    positions = seg.positions
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
        positions.append(pos)
        if expected == base_offset:
            seg.first_ts = ts
        seg.last_ts = ts
        expected += 1
        pos = body_end
    seg.size = seg.written = pos
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

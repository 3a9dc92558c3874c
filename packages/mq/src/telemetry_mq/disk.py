"""The data volume's high watermark: how full the filesystem under the data directory is.

Invariants:

- Past the watermark (``used >= high_watermark x capacity``) publishes are refused with
  ``DiskFullError`` (HTTP 429 ``DISK_FULL``), long before the filesystem answers ENOSPC, and
  retention deletes consumed segments early (``retention.py``), down to ``PRESSURE_MARGIN``
  below the watermark so publishes do not flap between accepted and refused.
- Capacity is what the broker's user can fill: used + available blocks (as ``df`` counts),
  so blocks an ext4 volume reserves for root do not count as room.
- The check is cheap: one ``statvfs`` at most every ``interval`` seconds, whatever the publish
  rate; in between, the last figures stand, plus every byte accepted since (``wrote``: a
  publish counts its frames twice, for the write-ahead log and the partition file). Bytes
  accepted but not in the files when ``statvfs`` reads (the frames partitions buffer) count
  too (``unwritten``), and past the watermark each maintenance round writes them out first,
  so what retention frees is measured on the files. So a volume written faster than the
  watermark's room per interval is refused at the watermark, not at ENOSPC; the room need
  only hold the publishes in flight at that moment. Writes that must not be refused (acks,
  dead letters, checkpoints) go on past it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PRESSURE_MARGIN: Final = 0.05
"""Under pressure, retention frees space down to the watermark minus this fraction."""


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Bytes of the filesystem holding the data directory, as the broker's user sees them."""

    used: int
    free: int
    """Bytes the broker can still write (``f_bavail``)."""

    @property
    def capacity(self) -> int:
        """Used plus free: the most the broker's files can take."""
        return self.used + self.free


def disk_usage(path: Path) -> DiskUsage:
    """The usage of the filesystem holding ``path`` (one ``statvfs``)."""
    st = os.statvfs(path)
    return DiskUsage(used=(st.f_blocks - st.f_bfree) * st.f_frsize, free=st.f_bavail * st.f_frsize)


class DiskWatch:
    """Watches the data volume against its high watermark (a fraction of its capacity)."""

    def __init__(
        self,
        path: Path,
        high_watermark: float,
        *,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        unwritten: Callable[[], int] = lambda: 0,
    ) -> None:
        self.path = path
        self.high_watermark = high_watermark
        self.interval = interval
        self._clock = clock
        self._unwritten = unwritten
        self._checked = -float("inf")
        self._usage = DiskUsage(0, 0)
        self._written = 0

    def usage(self) -> DiskUsage:
        """The volume's usage, at most ``interval`` seconds old."""
        now = self._clock()
        if now - self._checked >= self.interval:
            self.refresh(now)
        return self._usage

    def refresh(self, now: float | None = None) -> DiskUsage:
        """Read the volume's usage now (after deleting files, for instance)."""
        self._usage = disk_usage(self.path)
        self._written = self._unwritten()  # accepted, not in the files yet
        self._checked = self._clock() if now is None else now
        return self._usage

    def wrote(self, size: int) -> None:
        """``size`` bytes were accepted for writing: they count as used until the next check."""
        self._written += size

    def watermark_bytes(self, usage: DiskUsage) -> int:
        """Bytes used at which the volume counts as full."""
        return int(usage.capacity * self.high_watermark)

    def used(self) -> int:
        """Bytes used as last read, plus those accepted for writing since."""
        return self.usage().used + self._written

    @property
    def full(self) -> bool:
        """Whether the volume is at or past its high watermark (publishes are refused)."""
        return self.used() >= self.watermark_bytes(self.usage())

    def excess(self) -> int:
        """Bytes to free to get back under the watermark with margin (0 when not full)."""
        usage = self.refresh()
        used = usage.used + self._written
        if used < self.watermark_bytes(usage):
            return 0
        target = int(usage.capacity * max(self.high_watermark - PRESSURE_MARGIN, 0.0))
        return used - target

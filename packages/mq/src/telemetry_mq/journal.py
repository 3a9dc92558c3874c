"""The group-state journal: an append-only, checksummed line file per consumer group.

Each line is ``<crc32 as 8 hex digits><JSON array>\\n``. Entries:

- ``["S", {"<partition>": [committed, done_runs, count_runs]}]``: a full snapshot (compaction);
- ``["A", partition, runs]``: offsets acked;
- ``["X", partition, runs]``: offsets moved to the dead-letter topic (done, like an ack);
- ``["D", partition, count_runs]``: offsets delivered, with their new delivery count.

``runs`` are ``[start, end)`` pairs; ``count_runs`` are ``[start, end, count]`` triples.
Compaction writes a snapshot to a temporary file, fsyncs it and renames it over the journal.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import orjson

from . import _fileio
from ._fileio import fsync_dir
from .errors import CorruptLogError
from .log import AppendFile

log = logging.getLogger(__name__)

Entry = list[Any]


def runs(offsets: Iterable[int]) -> list[list[int]]:
    """Compress ascending ``offsets`` into ``[start, end)`` runs."""
    out: list[list[int]] = []
    for o in offsets:
        if out and out[-1][1] == o:
            out[-1][1] = o + 1
        else:
            out.append([o, o + 1])
    return out


def count_runs(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Compress ascending ``(offset, count)`` pairs into ``[start, end, count]`` runs."""
    out: list[list[int]] = []
    for o, c in pairs:
        if out and out[-1][1] == o and out[-1][2] == c:
            out[-1][1] = o + 1
        else:
            out.append([o, o + 1, c])
    return out


def expand(run_list: Iterable[list[int]]) -> Iterator[int]:
    """The offsets of ``[start, end)`` runs."""
    for start, end, *_ in run_list:
        yield from range(start, end)


def encode_entry(entry: Entry) -> bytes:
    """One journal line."""
    body = orjson.dumps(entry)
    return b"%08x%b\n" % (zlib.crc32(body), body)


def read_journal(path: Path) -> list[Entry]:
    """Read every entry; truncate a torn last line, raise ``CorruptLogError`` on a bad middle."""
    data = path.read_bytes()
    entries: list[Entry] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line = data[pos:nl] if nl >= 0 else data[pos:]
        ok = False
        if nl >= 0 and len(line) > 8:
            try:
                ok = int(line[:8], 16) == zlib.crc32(line[8:])
            except ValueError:
                ok = False
        if not ok:
            if nl < 0 or not data[nl + 1 :].strip(b"\0"):
                log.warning("truncating torn tail of group journal %s at byte %d", path, pos)
                _fileio.truncate_file(path, pos)
                break
            raise CorruptLogError(
                "group journal line fails its checksum", path=str(path), position=pos
            )
        entries.append(orjson.loads(line[8:]))
        pos = nl + 1
    return entries


class GroupJournal(AppendFile):
    """The durable side of a group's state: buffered lines committed by the committer.

    A failed write or fsync (of an append or of a compaction) fails the journal for good and,
    through ``on_fail``, its topic (``AppendFile``).
    """

    def __init__(self, path: Path, snapshot: Callable[[], Entry], *, compact_bytes: int) -> None:
        self.path = path
        self._snapshot = snapshot
        self._compact_bytes = compact_bytes
        self._pending = bytearray()
        self._compact = False
        self.size = path.stat().st_size if path.exists() else 0
        # Owned by the committer between prepare() and finish(): a worker thread, or the
        # event loop for an inline job.
        self._fd: int | None = None
        self._unsynced = False
        self.failed: BaseException | None = None
        self.on_fail: Callable[[BaseException], None] = lambda _: None

    def append(self, entry: Entry) -> None:
        """Buffer one entry; ask for a compaction once the file has grown past its bound."""
        line = encode_entry(entry)
        self._pending += line
        self.size += len(line)
        if self.size > self._compact_bytes:
            self._compact = True

    def compact(self) -> None:
        """Rewrite the journal as one snapshot at the next commit."""
        self._compact = True

    def prepare(self) -> _JournalJob:
        """Detach the pending lines, or a snapshot replacing the whole file."""
        if self._compact:
            self._compact = False
            self._pending = bytearray()
            data = encode_entry(self._snapshot())
            self.size = len(data)
            return _JournalJob(self, bytes(data), replace=True, inline=False)
        data, self._pending = bytes(self._pending), bytearray()
        # An append to the open file may be written on the event loop.
        return _JournalJob(self, data, replace=False, inline=self._fd is not None)

    def _write(self, data: bytes, replace: bool, fsync: bool) -> float:
        self._check()
        if replace:
            tmp = self.path.with_suffix(".tmp")
            _fileio.write_file(tmp, data)
            _fileio.replace(tmp, self.path)
            fsync_dir(self.path.parent)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._unsynced = False
            return 0.0
        if data and self._fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            self._fd = _fileio.open(self.path, flags, 0o644)
        if self._fd is not None:
            self._append(data)
        if fsync and self._unsynced and self._fd is not None:
            started = perf_counter()
            _fileio.fdatasync(self._fd)
            self._unsynced = False
            return perf_counter() - started
        return 0.0

    def close(self) -> None:
        """Fsync and close the file (after the committer has stopped); a failed journal is
        closed without an fsync: nothing in it past the failure is trusted."""
        if self._fd is not None:
            if self._unsynced and self.failed is None:
                _fileio.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None


class _JournalJob:
    __slots__ = ("_data", "_journal", "_replace", "inline")

    def __init__(self, journal: GroupJournal, data: bytes, *, replace: bool, inline: bool) -> None:
        self._journal = journal
        self._data = data
        self._replace = replace
        self.inline = inline

    def run(self, fsync: bool) -> float:
        return self._journal._write(self._data, self._replace, fsync)

    def write(self) -> int | None:
        return self._journal._append(self._data)

    def synced(self) -> None:
        self._journal._synced()

    def finish(self, error: BaseException | None) -> None:
        if error is not None:
            log.error("group journal %s: write failed: %s", self._journal.path, error)
            self._journal._fail(error)

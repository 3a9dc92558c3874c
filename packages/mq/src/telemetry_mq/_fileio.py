"""The broker core's file system calls, in one place: the seam where tests inject disk faults.

Every write, fsync, fdatasync, open, rename, truncate, unlink and mkdir of the core (partition
logs, the write-ahead log, group journals, checkpoints, topic creation) goes through the names
below, looked up at call time (``_fileio.write(fd, data)``). Serving, they are the ``os``
functions themselves: a call costs the same module attribute lookup as ``os.write``, nothing
more. ``telemetry_mq.faults.Faults`` replaces them with wrappers that record each call and
fail chosen ones (ENOSPC, EIO, a short write), and sets ``helper_results`` to rewrite what the
fsync helper process answered, so its results can carry an errno too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

open = os.open  # noqa: A001 - the seam mirrors os
write = os.write
fsync = os.fsync
fdatasync = os.fdatasync
ftruncate = os.ftruncate
replace = os.replace
unlink = os.unlink
mkdir = os.mkdir

helper_results: Callable[[Sequence[int], list[tuple[int, float]]], list[tuple[int, float]]] | None
helper_results = None
"""When set (by ``Faults``), the committer passes the fsync helper's answers through it:
``(descriptors, [(errno, seconds), ...])`` in, the answers to act on out."""


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``write`` may write less than asked).

    On an error some of ``data`` may be in the file already: the caller decides what that
    means for the file (see "Storage errors" in docs/broker.md).
    """
    with memoryview(data) as whole:
        view = whole
        try:
            while view:
                view = view[write(fd, view) :]
        finally:
            # An error's traceback keeps this frame: a view left alive would stop the caller
            # from growing ``data`` (a bytearray it keeps buffering into).
            view.release()


def write_file(path: Path, data: bytes) -> None:
    """Create or overwrite ``path`` with ``data`` and fsync it (not its directory)."""
    fd = open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        fsync(fd)
    finally:
        os.close(fd)


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes and fsync it."""
    fd = open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        ftruncate(fd, size)
        fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Fsync a directory (so a created, renamed or deleted entry in it is durable)."""
    fd = open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path, *, missing_ok: bool = False) -> None:
    """Unlink ``path`` (``missing_ok``: a file already gone is fine)."""
    try:
        unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents (an existing directory is fine)."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        mkdir(path, 0o755)
    except FileExistsError:
        if not path.is_dir():
            raise

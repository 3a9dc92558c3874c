"""Disk faults for tests: fail, or cut short, chosen file system calls of the broker core.

``Faults`` swaps the functions of the seam module ``_fileio`` for wrappers, records every
call made through them (operation, path, open flags, bytes, errno) and applies the armed
faults::

    with Faults() as faults:
        faults.fail("write", "*/partitions/*.log", errno.ENOSPC, partial=100)
        ...  # the next write to a partition segment writes 100 bytes, the one after fails
        assert faults.calls_to("fdatasync", "*.wal")

Operations: ``open``, ``write``, ``fsync``, ``fdatasync`` (in this process, and the answers
of the fsync helper process, recorded with ``via="helper"``), ``ftruncate``, ``replace``,
``unlink`` and ``mkdir``. A descriptor's path comes from ``/proc/self/fd`` (Linux).
Only one ``Faults`` may be installed at a time; the broker serves unchanged without one.
"""

from __future__ import annotations

import errno as errnos
import fcntl
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any, Final

from . import _fileio

OPS: Final = ("open", "write", "fsync", "fdatasync", "ftruncate", "replace", "unlink", "mkdir")


@dataclass(frozen=True, slots=True)
class Call:
    """One call through the seam."""

    op: str
    path: str
    flags: int = 0
    """``open``: the flags asked for; ``write``/``fsync``/``fdatasync``: the descriptor's
    status flags (``fcntl F_GETFL``: ``O_DSYNC`` shows there)."""
    size: int = 0
    """``write``: bytes asked to write; ``ftruncate``: the new size."""
    errno: int = 0
    """0 when the call succeeded (a short write included)."""
    via: str = ""
    """``helper`` for an fdatasync done by the fsync helper process (else this process)."""


@dataclass(slots=True)
class Fault:
    """An armed fault: which calls it hits and what they do."""

    op: str
    pattern: str
    errno: int
    nth: int
    times: int | None
    partial: int | None
    seen: int = 0
    fired: int = 0
    cut_short: bool = False

    def hits(self, op: str, path: str) -> bool:
        """Count a matching call; whether this one must fail (or be cut short)."""
        if op != self.op or not fnmatchcase(path, self.pattern):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.fired >= self.times):
            return False
        return True


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"


def _status_flags(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return 0


def _error(code: int, path: str) -> OSError:
    return OSError(code, f"{os.strerror(code)} (injected)", path)


class Faults:
    """Records the core's file system calls and fails the armed ones (a context manager)."""

    _installed: Faults | None = None

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._saved: dict[str, Any] = {}

    # -- arming ----------------------------------------------------------------------------

    def fail(
        self,
        op: str,
        pattern: str = "*",
        errno: int = errnos.EIO,
        *,
        nth: int = 1,
        times: int | None = 1,
        partial: int | None = None,
    ) -> Fault:
        """Fail calls of ``op`` on paths matching ``pattern`` (``fnmatch``, whole path).

        The ``nth`` matching call and the ones after it fail with ``errno``, ``times`` of
        them (``None``: every one, a full disk). ``partial`` (``write`` only): the first
        call hit writes only that many bytes and returns the short count, as a write that
        ran out of space does; the next one hit fails.
        """
        if op not in OPS:
            raise ValueError(f"unknown operation {op!r}: one of {OPS}")
        if partial is not None and op != "write":
            raise ValueError("partial applies to writes only")
        fault = Fault(op, pattern, errno, nth, times, partial)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Disarm every fault (the calls are still recorded)."""
        with self._lock:
            self.faults.clear()

    def calls_to(self, op: str, pattern: str = "*") -> list[Call]:
        """The recorded calls of ``op`` on paths matching ``pattern``."""
        with self._lock:
            return [c for c in self.calls if c.op == op and fnmatchcase(c.path, pattern)]

    # -- installing ------------------------------------------------------------------------

    def install(self) -> None:
        """Put the wrappers in place of the seam's functions."""
        if Faults._installed is not None:
            raise RuntimeError("a Faults is installed already")
        Faults._installed = self
        wrappers: dict[str, Any] = {
            "open": self._open,
            "write": self._write,
            "fsync": self._fd_op("fsync", _fileio.fsync),
            "fdatasync": self._fd_op("fdatasync", _fileio.fdatasync),
            "ftruncate": self._ftruncate,
            "replace": self._path_op("replace", _fileio.replace),
            "unlink": self._path_op("unlink", _fileio.unlink),
            "mkdir": self._path_op("mkdir", _fileio.mkdir),
            "helper_results": self._helper_results,
        }
        for name, wrapper in wrappers.items():
            self._saved[name] = getattr(_fileio, name)
            setattr(_fileio, name, wrapper)

    def uninstall(self) -> None:
        """Restore the seam's functions."""
        for name, saved in self._saved.items():
            setattr(_fileio, name, saved)
        self._saved.clear()
        Faults._installed = None

    def __enter__(self) -> Faults:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- the wrappers ----------------------------------------------------------------------

    def _hit(self, op: str, path: str) -> tuple[Fault | None, bool]:
        """The fault this call meets, if any, and whether it is cut short (not failed)."""
        with self._lock:
            for fault in self.faults:
                if fault.hits(op, path):
                    if fault.partial is not None and not fault.cut_short:
                        fault.cut_short = True
                        return fault, True
                    fault.fired += 1
                    return fault, False
        return None, False

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        name = os.fsdecode(path)
        fault, _ = self._hit("open", name)
        if fault is not None:
            self._record(Call("open", name, flags, errno=fault.errno))
            raise _error(fault.errno, name)
        fd: int = self._saved["open"](path, flags, mode, **kw)
        self._record(Call("open", name, flags))
        return fd

    def _write(self, fd: int, data: Any) -> int:
        path = _path_of(fd)
        flags = _status_flags(fd)
        size = len(data)
        fault, short = self._hit("write", path)
        if fault is not None:
            if short:
                assert fault.partial is not None
                written: int = self._saved["write"](fd, memoryview(data)[: fault.partial])
                self._record(Call("write", path, flags, size))
                return written
            self._record(Call("write", path, flags, size, fault.errno))
            raise _error(fault.errno, path)
        written = self._saved["write"](fd, data)
        self._record(Call("write", path, flags, size))
        return written

    def _fd_op(self, op: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            path = _path_of(fd)
            flags = _status_flags(fd)
            fault, _ = self._hit(op, path)
            if fault is not None:
                self._record(Call(op, path, flags, errno=fault.errno))
                raise _error(fault.errno, path)
            real(fd)
            self._record(Call(op, path, flags))

        return call

    def _ftruncate(self, fd: int, size: int) -> None:
        path = _path_of(fd)
        fault, _ = self._hit("ftruncate", path)
        if fault is not None:
            self._record(Call("ftruncate", path, size=size, errno=fault.errno))
            raise _error(fault.errno, path)
        self._saved["ftruncate"](fd, size)
        self._record(Call("ftruncate", path, size=size))

    def _path_op(self, op: str, real: Callable[..., None]) -> Callable[..., None]:
        def call(path: Any, *args: Any, **kw: Any) -> None:
            name = os.fsdecode(path)
            fault, _ = self._hit(op, name)
            if fault is not None:
                self._record(Call(op, name, errno=fault.errno))
                raise _error(fault.errno, name)
            real(path, *args, **kw)
            self._record(Call(op, name))

        return call

    def _helper_results(
        self, fds: Sequence[int], results: list[tuple[int, float]]
    ) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        for fd, (code, seconds) in zip(fds, results, strict=True):
            path = _path_of(fd)
            flags = _status_flags(fd)
            fault = self._hit("fdatasync", path)[0] if code == 0 else None
            if fault is not None:
                code = fault.errno
            self._record(Call("fdatasync", path, flags, errno=code, via="helper"))
            out.append((code, seconds))
        return out

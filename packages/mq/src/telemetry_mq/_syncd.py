"""The fsync helper process: ``fdatasync`` the file descriptors the broker sends it.

Run by ``telemetry_mq.syncer.SyncProcess`` as ``python -I -S _syncd.py <socket fd>``: standard
library only, so it starts in a few milliseconds. Each request on the socket (a
``SOCK_SEQPACKET`` pair) is an 8-byte ticket with file descriptors attached (``SCM_RIGHTS``);
the answer is the ticket followed by one ``(errno, seconds)`` pair per descriptor, errno 0
when the ``fdatasync`` succeeded. The helper exits when the broker closes its end or dies
(end of file); it ignores SIGINT and SIGTERM, so a stop signal sent to the whole process
group leaves the broker's graceful shutdown in charge.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from time import perf_counter

TICKET = struct.Struct("<Q")
RESULT = struct.Struct("<id")
MAX_FDS = 64  # descriptors per request; the broker never sends more


def fdatasync_each(
    fds: Sequence[int], fdatasync: Callable[[int], None] = os.fdatasync
) -> list[tuple[int, float]]:
    """``fdatasync`` each descriptor: its errno (0 = durable) and the seconds it took.

    The broker's thread fallback passes its own ``fdatasync`` (the core's file seam).
    """
    out: list[tuple[int, float]] = []
    for fd in fds:
        started = perf_counter()
        try:
            fdatasync(fd)
            error = 0
        except OSError as e:
            error = e.errno or -1
        out.append((error, perf_counter() - started))
    return out


def serve(sock: socket.socket) -> None:
    """Answer requests until the other end closes."""
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, TICKET.size, MAX_FDS)
        except ConnectionError:
            return
        if not msg:
            for fd in fds:
                os.close(fd)
            return
        try:
            results = fdatasync_each(fds)
        finally:
            for fd in fds:
                os.close(fd)
        out = [msg, *(RESULT.pack(error, seconds) for error, seconds in results)]
        try:
            sock.send(b"".join(out))
        except (BrokenPipeError, ConnectionError):
            return


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()

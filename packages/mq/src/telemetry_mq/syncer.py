"""An fsync helper process, so that a durable write never waits for a thread to get the GIL.

The broker's event loop thread is its bottleneck: it holds the GIL most of the time. A
worker thread that fsyncs must take the GIL once to start and once more to report back, and
each time it waits for the loop to let go of it: on a busy broker that wait, not the disk,
was most of a commit's latency (and the thread hand-offs cost the loop CPU time too).

``SyncProcess`` runs ``_syncd.py`` in a child process with its own interpreter. The loop
appends the bytes to the file itself (a write to the page cache: tens of µs), sends the
file's descriptor over a Unix socket (``SCM_RIGHTS``) and goes on; the helper calls
``fdatasync`` (which flushes the file's data whoever wrote it) and answers on the socket,
which the loop's selector sees like any other readable socket.

If the helper cannot start or dies, ``sync`` raises ``SyncerGoneError`` and the committer
fsyncs in its worker threads instead: slower, never less durable.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ._syncd import MAX_FDS, RESULT, TICKET

log = logging.getLogger(__name__)

_HELPER = Path(__file__).with_name("_syncd.py")

SyncResult = list[tuple[int, float]]
"""Per descriptor: errno (0 = durable) and seconds spent in ``fdatasync``."""


class SyncerGoneError(OSError):
    """The fsync helper process is not running (the caller fsyncs some other way)."""


class SyncProcess:
    """The broker side of the fsync helper: start it, send it descriptors, stop it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        proc: subprocess.Popen[bytes],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._proc = proc
        self._ticket = 0
        self._waiting: dict[int, asyncio.Future[SyncResult]] = {}
        self.alive = True
        loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    def start(cls) -> SyncProcess:
        """Start the helper (raises ``OSError`` when it cannot be started)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_HELPER), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(loop, ours, proc)

    @property
    def pid(self) -> int:
        """The helper's process id."""
        return self._proc.pid

    def sync(self, fds: Sequence[int]) -> asyncio.Future[SyncResult]:
        """``fdatasync`` each of ``fds`` in the helper; the future gets one result per fd.

        More than ``MAX_FDS`` descriptors go in several requests. Raises ``SyncerGoneError``
        (at once, or through the future) when the helper is gone.
        """
        if not self.alive:
            raise SyncerGoneError("the fsync helper is not running")
        if not fds:
            raise ValueError("no descriptors to sync")
        if len(fds) <= MAX_FDS:
            return self._request(fds)
        parts: list[asyncio.Future[SyncResult]] = []
        try:
            for i in range(0, len(fds), MAX_FDS):
                parts.append(self._request(fds[i : i + MAX_FDS]))
        except SyncerGoneError:
            for part in parts:  # failed by _gone already; nobody else will look
                if part.done():
                    part.exception()
            raise
        whole: asyncio.Future[SyncResult] = self._loop.create_future()

        def one_done(_: asyncio.Future[SyncResult]) -> None:
            if whole.done() or not all(part.done() for part in parts):
                return
            for part in parts:
                error = part.exception()
                if error is not None:
                    whole.set_exception(error)
                    return
            whole.set_result([result for part in parts for result in part.result()])

        for part in parts:
            part.add_done_callback(one_done)
        return whole

    def _request(self, fds: Sequence[int]) -> asyncio.Future[SyncResult]:
        self._ticket += 1
        ticket = self._ticket
        try:
            socket.send_fds(self._sock, [TICKET.pack(ticket)], list(fds))
        except OSError as e:  # includes a full socket buffer: never expected, handled alike
            self._gone(f"sending to it failed: {e}")
            raise SyncerGoneError(f"the fsync helper is not running: {e}") from e
        fut: asyncio.Future[SyncResult] = self._loop.create_future()
        self._waiting[ticket] = fut
        return fut

    def _on_readable(self) -> None:
        size = TICKET.size + RESULT.size * MAX_FDS
        while True:
            try:
                msg = self._sock.recv(size)
            except BlockingIOError:
                return
            except OSError as e:
                self._gone(f"reading from it failed: {e}")
                return
            if not msg:
                self._gone("it exited")
                return
            (ticket,) = TICKET.unpack_from(msg)
            fut = self._waiting.pop(ticket, None)
            if fut is not None and not fut.done():
                fut.set_result(
                    [
                        RESULT.unpack_from(msg, pos)
                        for pos in range(TICKET.size, len(msg), RESULT.size)
                    ]
                )

    def abandon(self, why: str) -> None:
        """Stop using the helper (it exits when its socket closes); waiters get
        ``SyncerGoneError``. ``close`` still reaps the process."""
        self._gone(why)

    def _gone(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if why == "closed":
            log.debug("fsync helper stopped")
        else:
            code = self._proc.poll()
            log.error(
                "fsync helper lost (%s; exit code %s): worker threads fsync instead", why, code
            )
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(SyncerGoneError(f"the fsync helper is gone: {why}"))

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the helper (it exits when its socket closes) and reap it."""
        self._gone("closed")
        try:
            await asyncio.wait_for(asyncio.to_thread(self._proc.wait), timeout)
        except TimeoutError:
            self._proc.kill()
            await asyncio.to_thread(self._proc.wait)

"""Group commit: write cycles batch the writes of every log and journal and fsync them.

Publishers and ackers hand their bytes to a *unit* (a topic's write-ahead log or a group
journal) and await ``Committer.request(unit)``. While one cycle is writing and fsyncing, new
requests pile up for the next cycle, so concurrent publishes share one fsync per file.

A cycle's plain appends to an open file are written on the event loop (page cache) and made
durable by the fsync helper process (``syncer.py``); the rest (opening a new segment,
rewriting a journal, or every job when the helper is not running) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Literal, Protocol

from . import _fileio
from ._syncd import fdatasync_each
from .errors import BrokerUnavailableError
from .syncer import SyncerGoneError, SyncProcess, SyncResult

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]


class Job(Protocol):
    """The detached pending work of one unit for one cycle."""

    @property
    def inline(self) -> bool:
        """Whether ``write`` may do the job on the event loop (a plain append to an open file)."""
        ...

    def run(self, fsync: bool) -> float:
        """Write (and fsync when asked) in a worker thread; return the seconds spent in fsync."""
        ...

    def write(self) -> int | None:
        """Inline jobs: append on the event loop, no fsync; return the descriptor holding
        data not yet durable (to ``fdatasync``), or None."""
        ...

    def synced(self) -> None:
        """The descriptor ``write`` returned was fdatasynced: its data is durable."""
        ...

    def finish(self, error: BaseException | None) -> None:
        """Back on the event loop: publish the outcome (advance the durable end, or fail)."""
        ...


class Unit(Protocol):
    """Something with buffered writes: a partition log or a group journal."""

    def prepare(self) -> Job:
        """Detach the pending writes into a job (on the event loop)."""
        ...


class Committer:
    """Runs write cycles for dirty units; resolves their waiters per the fsync policy.

    Callback driven, to keep the hops through the event loop few: the first request of an
    idle committer schedules a cycle (so the requests of one loop iteration share it); a
    cycle's jobs run in worker threads, whose completion callback finishes the jobs, resolves
    the waiters and starts the next cycle at once with whatever piled up meanwhile.
    """

    def __init__(
        self,
        *,
        policy: FsyncPolicy = "always",
        interval: float = 0.05,
        workers: int = 4,
        helper: bool = True,
        observe_fsync: Callable[[float], None] | None = None,
    ) -> None:
        self._policy: FsyncPolicy = policy
        self._want_helper = helper
        self._syncer: SyncProcess | None = None
        self._interval = interval
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mq-commit")
        self._observe = observe_fsync
        self._dirty: dict[Unit, asyncio.Future[None]] = {}
        self._unsynced: set[Unit] = set()
        self._force_fsync = False
        self._scheduled = False
        self._chunks_left = 0  # chunks of the running cycle still in worker threads
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Bind to the running loop, start the fsync helper (and the fsync ticker for the
        ``interval`` policy)."""
        self._loop = asyncio.get_running_loop()
        if self._want_helper and self._policy != "never":
            try:
                self._syncer = SyncProcess.start()
            except OSError as e:
                log.warning("fsync helper did not start (%s): worker threads fsync instead", e)
        if self._policy == "interval":
            self._ticker = asyncio.create_task(self._tick(), name="mq-fsync-ticker")

    def request(self, unit: Unit) -> asyncio.Future[None]:
        """Schedule ``unit``'s pending writes; the future resolves once they are committed.

        Raises ``BrokerUnavailableError`` once the committer is closed (its pool is gone).
        """
        if self._closed:
            raise BrokerUnavailableError("the broker is closed: nothing more is committed")
        fut = self._dirty.get(unit)
        if fut is None:
            loop = self._loop or asyncio.get_running_loop()
            fut = loop.create_future()
            self._dirty[unit] = fut
            self._idle.clear()
            if not self._chunks_left and not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._start_cycle)
        return fut

    async def sync(self, units: list[Unit]) -> None:
        """Write and fsync ``units`` now, whatever the policy."""
        self._force_fsync = True
        futures = [self.request(u) for u in units]
        if futures:
            await asyncio.wait(futures)

    async def close(self, units: list[Unit]) -> None:
        """Commit and fsync everything still pending, then stop."""
        await self.sync(units)
        self._closed = True  # from here on a request raises instead of waiting forever
        if self._ticker is not None:
            self._ticker.cancel()
        await self._idle.wait()
        if self._syncer is not None:
            await self._syncer.close()
        self._pool.shutdown(wait=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._unsynced:
                units, self._unsynced = list(self._unsynced), set()
                self._force_fsync = True
                for unit in units:
                    self.request(unit)

    def _run_chunk(self, jobs: list[Job], fsync: bool) -> list[BaseException | None]:
        errors: list[BaseException | None] = []
        for job in jobs:
            try:
                spent = job.run(fsync)
                if spent and self._observe is not None:
                    self._observe(spent)
                errors.append(None)
            except Exception as e:  # reported to the waiters of this unit only
                errors.append(e)
        return errors

    def _start_cycle(self) -> None:
        self._scheduled = False
        if self._chunks_left:
            return  # the running cycle starts the next one when it ends
        if not self._dirty:
            self._idle.set()
            return
        loop = self._loop
        assert loop is not None
        batch, self._dirty = self._dirty, {}
        fsync = self._policy == "always" or self._force_fsync
        self._force_fsync = False
        prepared: list[tuple[Unit, Job, asyncio.Future[None]]] = [
            (unit, unit.prepare(), fut) for unit, fut in batch.items()
        ]
        syncer = self._syncer if self._syncer is not None and self._syncer.alive else None
        inline = [item for item in prepared if syncer is not None and item[1].inline]
        threaded = [item for item in prepared if syncer is None or not item[1].inline]
        n = min(self._workers, len(threaded))
        self._chunks_left = n + (1 if inline else 0)
        for i in range(n):
            chunk = threaded[i::n]
            done = self._pool.submit(self._run_chunk, [job for _, job, _ in chunk], fsync)
            done.add_done_callback(
                partial(self._from_thread, loop, partial(self._chunk_done, chunk, fsync))
            )
        if inline:
            assert syncer is not None
            self._run_inline(syncer, inline, fsync)

    def _run_inline(
        self,
        syncer: SyncProcess,
        chunk: list[tuple[Unit, Job, asyncio.Future[None]]],
        fsync: bool,
    ) -> None:
        """Append on the loop; the helper makes it durable (see the module docstring)."""
        loop = self._loop
        assert loop is not None
        errors: list[BaseException | None] = []
        fds: list[int] = []
        owners: list[int] = []  # the chunk index of each descriptor's job
        for i, (_, job, _) in enumerate(chunk):
            try:
                fd = job.write()
            except Exception as e:  # reported to the waiters of this unit only
                errors.append(e)
                continue
            errors.append(None)
            if fsync and fd is not None:
                fds.append(fd)
                owners.append(i)
        if not fds:
            loop.call_soon(self._chunk_finished, chunk, fsync, errors)
            return
        on_done = partial(self._inline_synced, chunk, fsync, errors, owners, fds)
        try:
            syncer.sync(fds).add_done_callback(on_done)
        except Exception as e:  # gone, or anything unforeseen: the worker threads take over
            if not isinstance(e, SyncerGoneError):
                syncer.abandon(f"a request failed: {e!r}")
            failed: asyncio.Future[SyncResult] = loop.create_future()
            failed.set_exception(e if isinstance(e, SyncerGoneError) else SyncerGoneError(str(e)))
            on_done(failed)

    def _inline_synced(
        self,
        chunk: list[tuple[Unit, Job, asyncio.Future[None]]],
        fsync: bool,
        errors: list[BaseException | None],
        owners: list[int],
        fds: list[int],
        done: asyncio.Future[SyncResult],
    ) -> None:
        try:
            results = done.result()
        except SyncerGoneError:
            # The descriptors stay open until this cycle ends: fsync them in a thread (and,
            # the helper being gone, every later cycle runs in the threads too).
            loop = self._loop
            assert loop is not None
            retry = self._pool.submit(fdatasync_each, fds, _fileio.fdatasync)
            retry.add_done_callback(
                partial(
                    self._from_thread,
                    loop,
                    partial(self._thread_synced, chunk, fsync, errors, owners),
                )
            )
            return
        rewrite = _fileio.helper_results
        if rewrite is not None:  # a test's fault injection (telemetry_mq.faults)
            results = rewrite(fds, results)
        self._apply_sync(chunk, fsync, errors, owners, results)

    def _thread_synced(
        self,
        chunk: list[tuple[Unit, Job, asyncio.Future[None]]],
        fsync: bool,
        errors: list[BaseException | None],
        owners: list[int],
        done: Future[SyncResult],
    ) -> None:
        try:
            results = done.result()
        except BaseException as e:  # the pool itself failed
            results = [(-1, 0.0)] * len(owners)
            log.error("fsync in a worker thread failed: %s", e)
        self._apply_sync(chunk, fsync, errors, owners, results)

    def _apply_sync(
        self,
        chunk: list[tuple[Unit, Job, asyncio.Future[None]]],
        fsync: bool,
        errors: list[BaseException | None],
        owners: list[int],
        results: SyncResult,
    ) -> None:
        for i, (errno, seconds) in zip(owners, results, strict=True):
            if errno:
                reason = os.strerror(errno) if errno > 0 else "unknown error"
                errors[i] = OSError(errno, f"fdatasync failed: {reason}")
                continue
            chunk[i][1].synced()
            if self._observe is not None:
                self._observe(seconds)
        self._chunk_finished(chunk, fsync, errors)

    @staticmethod
    def _from_thread(
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[Future[list[BaseException | None]]], None],
        done: Future[list[BaseException | None]],
    ) -> None:
        loop.call_soon_threadsafe(callback, done)

    def _chunk_done(
        self,
        chunk: list[tuple[Unit, Job, asyncio.Future[None]]],
        fsync: bool,
        done: Future[list[BaseException | None]],
    ) -> None:
        try:
            errors = done.result()
        except BaseException as e:  # the pool itself failed: every job of the chunk did
            errors = [e] * len(chunk)
        self._chunk_finished(chunk, fsync, errors)

    def _chunk_finished(
        self,
        chunk: list[tuple[Unit, Job, asyncio.Future[None]]],
        fsync: bool,
        errors: list[BaseException | None],
    ) -> None:
        for (unit, job, fut), error in zip(chunk, errors, strict=True):
            job.finish(error)
            if not fsync and error is None:
                self._unsynced.add(unit)
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                log.error("commit failed: %s", error)
                fut.set_exception(error)
                fut.exception()  # waiters that left early must not log "never retrieved"
        self._chunks_left -= 1
        if not self._chunks_left:
            self._start_cycle()  # at once: the requests that piled up during this cycle

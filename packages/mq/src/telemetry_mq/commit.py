"""Group commit: one writer task batches the writes of every log and journal and fsyncs them.

Publishers and ackers hand their bytes to a *unit* (a partition log or a group journal) and await
``Committer.request(unit)``. While one cycle is writing and fsyncing in worker threads, new
requests pile up for the next cycle, so concurrent publishes share one fsync per file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Protocol

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]


class Job(Protocol):
    """The detached pending work of one unit for one cycle."""

    def run(self, fsync: bool) -> float:
        """Write (and fsync when asked) in a worker thread; return the seconds spent in fsync."""
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
    """Runs write cycles for dirty units; resolves their waiters per the fsync policy."""

    def __init__(
        self,
        *,
        policy: FsyncPolicy = "always",
        interval: float = 0.05,
        workers: int = 4,
        observe_fsync: Callable[[float], None] | None = None,
    ) -> None:
        self._policy: FsyncPolicy = policy
        self._interval = interval
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mq-commit")
        self._observe = observe_fsync
        self._dirty: dict[Unit, asyncio.Future[None]] = {}
        self._unsynced: set[Unit] = set()
        self._wake = asyncio.Event()
        self._force_fsync = False
        self._closing = False
        self._last_sync = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task (and the fsync ticker for the ``interval`` policy)."""
        self._task = asyncio.create_task(self._run(), name="mq-committer")
        if self._policy == "interval":
            self._ticker = asyncio.create_task(self._tick(), name="mq-fsync-ticker")

    def request(self, unit: Unit) -> asyncio.Future[None]:
        """Schedule ``unit``'s pending writes; the future resolves once they are committed."""
        fut = self._dirty.get(unit)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._dirty[unit] = fut
            self._wake.set()
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
        self._closing = True
        self._wake.set()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._task is not None:
            await self._task
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._dirty:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._dirty = self._dirty, {}
            fsync = self._policy == "always" or self._force_fsync
            self._force_fsync = False
            prepared: list[tuple[Unit, Job, asyncio.Future[None]]] = [
                (unit, unit.prepare(), fut) for unit, fut in batch.items()
            ]
            n = min(self._workers, len(prepared))
            chunks = [prepared[i::n] for i in range(n)]
            results = await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, self._run_chunk, [j for _, j, _ in c], fsync)
                    for c in chunks
                )
            )
            for chunk, errors in zip(chunks, results, strict=True):
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

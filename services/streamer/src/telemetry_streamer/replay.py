"""The replay loop: claim sequence numbers, stamp the matching CSV rows, publish in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiopg
import orjson
from telemetry_kit import wait_or_stop
from telemetry_model import Sample, WireTemplate
from telemetry_mq import BrokerClient
from telemetry_store import (
    Claim,
    claim,
    cursor,
    finish,
    migrate_when_reachable,
    pending_chunks,
    release,
    renew,
    transaction,
)

from .metrics import StreamerMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Row:
    """A CSV row ready to stamp: the partition key and the pre-encoded static part."""

    key: str
    template: WireTemplate


def prepare(samples: Sequence[Sample]) -> list[Row]:
    """Pre-encode every sample once; the loop then only joins bytes."""
    return [Row(s.gpu.uuid, WireTemplate(s)) for s in samples]


class Pacer:
    """Spaces out work to at most ``rate`` items per second (0 means no limit)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = clock()

    def delay(self, items: int) -> float:
        """Account for ``items`` more items; return how long to wait before sending them."""
        if not self._interval:
            return 0.0
        now = self._clock()
        self._next = max(self._next, now - 1.0)  # allow a burst of at most one second
        wait = self._next - now
        self._next += items * self._interval
        return max(wait, 0.0)


class Replayer:
    """One streamer replica's loop over the shared stream.

    Each claimed chunk is a lease (``telemetry_store.claim``): renewed while the chunk is
    published, deleted with the next claim once the broker has acknowledged all of it. A chunk
    whose owner died is taken over by the next claim of any replica and published again with
    the times fixed in its claim, so a re-sent datapoint is byte for byte the same.
    """

    def __init__(
        self,
        *,
        rows: Sequence[Row],
        stream: str,
        topic: str,
        partitions: int,
        pool: aiopg.Pool,
        broker: BrokerClient,
        metrics: StreamerMetrics,
        chunk_size: int,
        batch_size: int,
        rate: float,
        loops: int = 0,
        lease: float = 30.0,
        owner: str | None = None,
    ) -> None:
        if not rows:
            raise ValueError("nothing to replay: the CSV has no valid rows")
        self._rows = rows
        self._stream = stream
        self._stream_json = orjson.dumps(stream)
        self._topic = topic
        self._partitions = partitions
        self._pool = pool
        self._broker = broker
        self._metrics = metrics
        self._chunk = chunk_size
        self._batch = batch_size
        self._pacer = Pacer(rate)
        # Datapoint times advance one rate interval per sequence number within a chunk.
        self._tick_ns = round(1e9 / rate) if rate > 0 else 0
        self._limit = loops * len(rows) if loops else None
        self._lease = lease
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._done: Claim | None = None  # published; the next claim deletes its row
        self.healthy = False
        self.finished = False

    async def run(self, stop: asyncio.Event, migrate: bool = False) -> None:
        """Replay until ``stop`` is set (or the configured loops are done).

        A claimed chunk is published to its end before stopping, so a graceful stop leaves no
        gap; a chunk the broker could not take before the stop is released for another replica
        at once, and one left by a crash is taken over when its lease runs out.
        With ``migrate``, the database is migrated first (retrying until it answers).
        """
        if migrate and not await migrate_when_reachable(self._pool, stop):
            return
        while not stop.is_set():
            try:
                await self._broker.create_topic(self._topic, partitions=self._partitions)
                break
            except Exception:
                log.exception("creating topic %s failed; retrying", self._topic)
                await wait_or_stop(stop, 1.0)
        while not stop.is_set():
            try:
                chunk = await self._claim()
            except Exception:
                self.healthy = False
                log.exception("claiming from the work index failed; retrying")
                await wait_or_stop(stop, 1.0)
                continue
            if chunk is None:  # the configured loops are all claimed
                if await self._loops_done(stop):
                    return
                continue
            if not await self._publish_chunk(chunk, stop):
                return
        await self._finish_last()

    async def _claim(self) -> Claim | None:
        async with transaction(self._pool) as cur:
            chunk = await claim(
                cur,
                self._stream,
                self._chunk,
                owner=self.owner,
                lease=self._lease,
                tick_ns=self._tick_ns,
                limit=self._limit,
                done=self._done,
            )
        self._done = None
        if chunk is not None:
            self._metrics.claims.inc()
            if chunk.takeover:
                self._metrics.takeovers.inc()
                log.warning(
                    "taking over seq %d..%d of stream %s, left by a streamer that stopped",
                    chunk.start,
                    chunk.stop - 1,
                    self._stream,
                )
        return chunk

    async def _loops_done(self, stop: asyncio.Event) -> bool:
        """True once no chunk below the limit is left; until then, wait for the replicas that
        hold one to finish it, or for its lease to run out (the next claim takes it over)."""
        try:
            async with cursor(self._pool) as cur:
                left = await pending_chunks(cur, self._stream, limit=self._limit)
        except Exception:
            log.exception("reading the work index failed; retrying")
            left = -1
        if left == 0:
            log.info("configured loops done", extra={"stream": self._stream})
            self.finished = True
            return True
        await wait_or_stop(stop, min(1.0, self._lease / 4))
        return stop.is_set()

    async def _publish_chunk(self, chunk: Claim, stop: asyncio.Event) -> bool:
        """Publish ``chunk`` batch by batch under its lease; False if the replica must stop."""
        stop_at = chunk.stop if self._limit is None else min(chunk.stop, self._limit)
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(chunk, lost))
        try:
            for start in range(chunk.start, stop_at, self._batch):
                if lost.is_set():
                    # Another replica took the chunk over (this one was cut off for longer
                    # than the lease): it publishes all of it, so leave it to that one.
                    self._metrics.leases_lost.inc()
                    log.warning(
                        "lost the lease on seq %d..%d of stream %s; leaving it to its new owner",
                        chunk.start,
                        chunk.stop - 1,
                        self._stream,
                    )
                    return True
                end = min(start + self._batch, stop_at)
                if not await self._publish(chunk, start, end, stop):
                    await self._give_up(chunk, start)
                    return False
        except asyncio.CancelledError:
            # Cancelled past the shutdown timeout: hand the chunk on rather than let its lease
            # run out first, but briefly (the shutdown waits for this task).
            with contextlib.suppress(TimeoutError):
                await asyncio.shield(asyncio.wait_for(self._give_up(chunk, chunk.start), 2.0))
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        self._done = chunk
        return True

    async def _keep_lease(self, chunk: Claim, lost: asyncio.Event) -> None:
        """Renew the lease every third of its length until cancelled (or the chunk is lost)."""
        while True:
            await asyncio.sleep(self._lease / 3)  # a timer, not synchronization
            try:
                async with cursor(self._pool) as cur:
                    held = await renew(cur, chunk, self._lease)
            except Exception as e:
                log.warning("renewing the lease on seq %d.. failed (%s)", chunk.start, e)
                continue
            if not held:
                lost.set()
                return

    async def _give_up(self, chunk: Claim, unpublished: int) -> None:
        try:
            async with cursor(self._pool) as cur:
                await release(cur, chunk)
        except Exception:
            log.exception("releasing seq %d..%d failed", chunk.start, chunk.stop - 1)
            how = "when its lease runs out"
        else:
            how = "at once"
        log.error(
            "stopping with seq %d..%d of stream %s unpublished; another streamer takes it %s",
            unpublished,
            chunk.stop - 1,
            self._stream,
            how,
        )

    async def _finish_last(self) -> None:
        """Delete the last published chunk's row (a failure only costs a re-publication)."""
        if self._done is None:
            return
        try:
            async with cursor(self._pool) as cur:
                await finish(cur, self._done)
        except Exception:
            log.exception(
                "marking seq %d..%d done failed; it will be published again (duplicates only)",
                self._done.start,
                self._done.stop - 1,
            )
        self._done = None

    async def _publish(self, chunk: Claim, start: int, end: int, stop: asyncio.Event) -> bool:
        wait = self._pacer.delay(end - start)
        if wait:
            await asyncio.sleep(wait)  # rate limiting, not synchronization
        n = len(self._rows)
        records = []
        for seq in range(start, end):
            row = self._rows[seq % n]
            records.append((row.key, row.template.encode(self._stream_json, seq, chunk.ts_us(seq))))
        while True:
            began = time.perf_counter()
            try:
                await self._broker.publish(self._topic, records)
            except Exception:
                # The client already retried with backoff; keep the claimed rows and try again,
                # so nothing claimed is skipped while the broker is away.
                self.healthy = False
                self._metrics.publish_failures.labels(self._topic).inc()
                log.exception("publish of seq %d..%d failed; retrying", start, end - 1)
                if stop.is_set():
                    return False
                await wait_or_stop(stop, 1.0)
                continue
            break
        self.healthy = True
        self._metrics.publish_seconds.labels(self._topic).observe(time.perf_counter() - began)
        self._metrics.published.labels(self._topic).inc(end - start)
        self._metrics.loop.set((end - 1) // n)
        return True

"""The replay loop: claim sequence numbers, stamp the matching CSV rows, publish in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiopg
import orjson
from telemetry_kit import wait_or_stop
from telemetry_model import Sample, WireTemplate
from telemetry_mq import BrokerClient
from telemetry_store import Claim, claim, migrate_when_reachable, transaction

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
    """One streamer replica's loop over the shared stream."""

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
        self._loops = loops
        self.healthy = False
        self.finished = False

    async def run(self, stop: asyncio.Event, migrate: bool = False) -> None:
        """Replay until ``stop`` is set (or the configured loops are done).

        A claimed chunk is published to its end before stopping, so a graceful stop leaves
        no gap; only a broker that stays away through the shutdown can leave one (logged).
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
            stop_at = chunk.stop
            if self._loops:
                stop_at = min(stop_at, self._loops * len(self._rows))
                if chunk.start >= stop_at:
                    log.info("configured loops done", extra={"stream": self._stream})
                    self.finished = True
                    return
            for start in range(chunk.start, stop_at, self._batch):
                end = min(start + self._batch, stop_at)
                if not await self._publish(start, end, stop):
                    log.error(
                        "stopping with seq %d..%d of stream %s unpublished",
                        start,
                        stop_at - 1,
                        self._stream,
                    )
                    return

    async def _claim(self) -> Claim:
        async with transaction(self._pool) as cur:
            chunk = await claim(cur, self._stream, self._chunk)
        self._metrics.claims.inc()
        return chunk

    async def _publish(self, start: int, end: int, stop: asyncio.Event) -> bool:
        wait = self._pacer.delay(end - start)
        if wait:
            await asyncio.sleep(wait)  # rate limiting, not synchronization
        n = len(self._rows)
        ts = time.time_ns() // 1000
        records = []
        for seq in range(start, end):
            row = self._rows[seq % n]
            records.append((row.key, row.template.encode(self._stream_json, seq, ts)))
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

"""The worker loop: fetch batches, store each in one transaction, then ack. Never ack first."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiopg
from telemetry_kit import wait_or_stop
from telemetry_model import Datapoint, DecodeError, decode
from telemetry_mq import Batch, BrokerClient
from telemetry_store import migrate_when_reachable

from .metrics import CollectorMetrics
from .store import Registry, store_batch

log = logging.getLogger(__name__)


class Consumer:
    """All the worker loops of one collector process."""

    def __init__(
        self,
        *,
        broker: BrokerClient,
        pool: aiopg.Pool,
        metrics: CollectorMetrics,
        topic: str,
        group: str,
        batch_size: int,
        max_wait: float,
        ack_wait: float,
    ) -> None:
        self._broker = broker
        self._pool = pool
        self._metrics = metrics
        self._topic = topic
        self._group = group
        self._batch_size = batch_size
        self._max_wait = max_wait
        self._ack_wait = ack_wait
        self._registry = Registry()
        self.healthy = False

    async def run(self, stop: asyncio.Event, workers: int, migrate: bool = True) -> None:
        """Run ``workers`` loops until ``stop`` is set; each finishes its batch first.

        Nothing is fetched before the database answers (and is migrated, with ``migrate``).
        """
        if not await migrate_when_reachable(self._pool, stop, apply=migrate):
            return
        await asyncio.gather(*(self._worker(i, stop) for i in range(workers)))

    async def _worker(self, index: int, stop: asyncio.Event) -> None:
        failures = 0
        # Committed batches whose acks ride on the next fetch: one round trip per fetch, which
        # leases records of several partitions (one batch each) at once.
        done: list[Batch] = []
        while not stop.is_set():
            try:
                batches = await self._broker.fetch_many(
                    self._topic,
                    self._group,
                    max_records=self._batch_size,
                    max_wait=self._max_wait,
                    ack_wait=self._ack_wait,
                    ack=done or None,
                )
            except Exception:
                # ``done`` is kept: the next fetch sends the same acks again (safe to repeat).
                self.healthy = False
                failures += 1
                log.exception("fetch failed (worker %d)", index)
                await wait_or_stop(stop, _backoff(failures))
                continue
            done = []
            self.healthy = True
            if not batches:
                continue
            if await self.handle(*batches):
                done = batches
                failures = 0
            else:
                failures += 1
                await wait_or_stop(stop, _backoff(failures))
        for batch in done:
            try:
                await self._broker.ack(batch)
            except Exception:
                # Stored already: the redelivery is absorbed by the idempotent insert.
                log.exception("final ack failed (worker %d); the batch will be redelivered", index)

    async def handle(self, *batches: Batch) -> bool:
        """Store fetched batches in one transaction (invalid records go to the DLQ).

        True if stored; on failure every batch is nacked for redelivery. The caller acks
        stored batches (after the commit, never before): the worker loop piggybacks the acks
        on its next fetch.
        """
        began = time.perf_counter()
        points: list[Datapoint] = []
        encoded: list[bytes] = []
        rejects: list[tuple[Batch, list[int], str]] = []
        for batch in batches:
            invalid: list[int] = []
            reasons: list[str] = []
            for record in batch.records:
                try:
                    points.append(decode(record.value))
                except DecodeError as e:
                    invalid.append(record.offset)
                    reasons.append(f"offset {record.offset}: {e}")
                    continue
                encoded.append(record.value)
            if invalid:
                rejects.append((batch, invalid, "; ".join(reasons)[:1000]))
        outcome = "stored"
        try:
            for batch, invalid, reason in rejects:
                await self._broker.reject(batch, offsets=invalid, error=reason)
                self._metrics.rejected.labels(self._topic).inc(len(invalid))
            inserted = await store_batch(self._pool, self._registry, points, encoded)
        except Exception as e:
            outcome = "failed"
            log.exception("storing %d batches failed; nacking them for redelivery", len(batches))
            error = f"{type(e).__name__}: {e}"[:1000]
            for batch in batches:
                try:
                    await self._broker.nack(batch, delay=1.0, error=error)
                except Exception:
                    log.exception("nack failed; the lease will expire and redeliver")
            inserted = 0
        else:
            self._metrics.stored.labels(self._topic).inc(inserted)
            self._metrics.duplicates.labels(self._topic).inc(len(encoded) - inserted)
        duration = time.perf_counter() - began
        self._metrics.batches.labels(self._topic, self._group, outcome).inc(len(batches))
        self._metrics.batch_seconds.labels(self._topic).observe(duration)
        log.info(
            "batches %s",
            outcome,
            extra={
                "topic": self._topic,
                "group": self._group,
                # partition:first-last offset of each batch
                "offsets": " ".join(
                    f"{b.partition}:{b.records[0].offset}-{b.records[-1].offset}"
                    for b in batches
                    if b.records
                ),
                "delivery_count": max(
                    (r.delivery_count for b in batches for r in b.records), default=0
                ),
                "outcome": outcome,
                "records": sum(len(b.records) for b in batches),
                "inserted": inserted,
                "duration_ms": round(duration * 1000, 1),
            },
        )
        return outcome == "stored"


def _backoff(failures: int) -> float:
    return min(5.0, 0.2 * 2.0 ** min(failures, 8)) * random.uniform(0.5, 1.0)

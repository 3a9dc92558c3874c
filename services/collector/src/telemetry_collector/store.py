"""Write one fetched batch to PostgreSQL idempotently, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import aiopg
from telemetry_model import Datapoint, Gpu
from telemetry_store import (
    BEGIN_INGEST,
    GpuSighting,
    IngestBounds,
    Stored,
    ensure_streams,
    ingest_bounds,
    store_datapoints,
    transaction,
    upsert_gpus,
)

# A known GPU's last_seen is refreshed at most this often per collector process, so
# concurrent batches rarely contend on the gpus rows.
LAST_SEEN_REFRESH_US = 5_000_000


@dataclass
class Registry:
    """What this process has already written about GPUs and streams (after commit only)."""

    gpus: dict[str, tuple[tuple[object, ...], int]] = field(default_factory=dict)
    streams: set[str] = field(default_factory=set)

    def stale_gpus(self, points: Sequence[Datapoint]) -> list[GpuSighting]:
        """The GPU rows this batch must upsert: new, changed, or last_seen gone stale."""
        ranges: dict[str, tuple[Gpu, int, int]] = {}
        for p in points:
            seen = ranges.get(p.gpu.uuid)
            if seen is None:
                ranges[p.gpu.uuid] = (p.gpu, p.ts_us, p.ts_us)
            else:
                ranges[p.gpu.uuid] = (p.gpu, min(seen[1], p.ts_us), max(seen[2], p.ts_us))
        sightings = [
            GpuSighting(
                g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, first, last
            )
            for g, first, last in ranges.values()
        ]
        stale = []
        for s in sightings:
            known = self.gpus.get(s.uuid)
            if (
                known is None
                or known[0] != _meta(s)
                or s.last_us - known[1] >= LAST_SEEN_REFRESH_US
            ):
                stale.append(s)
        return stale

    def remember(self, sightings: Sequence[GpuSighting], streams: set[str]) -> None:
        """Record what a committed batch wrote."""
        for s in sightings:
            self.gpus[s.uuid] = (_meta(s), s.last_us)
        self.streams |= streams


def _meta(s: GpuSighting) -> tuple[object, ...]:
    return (s.hostname, s.index, s.device, s.model, s.driver_version)


@dataclass(frozen=True, slots=True)
class Committed:
    """What a committed batch did, and the bounds its transaction stored it under."""

    stored: Stored
    bounds: IngestBounds


async def store_batch(
    pool: aiopg.Pool, registry: Registry, points: Sequence[Datapoint], encoded: Sequence[bytes]
) -> Committed:
    """Store a batch; return what was new, expired and late. Commits before returning."""
    sightings = registry.stale_gpus(points)
    streams = {p.stream for p in points} - registry.streams
    # The bounds of the insert (retention horizon, sealed minutes) come with the BEGIN.
    async with transaction(pool, begin=BEGIN_INGEST) as cur:
        bounds = await ingest_bounds(cur, fetched=True)
        if streams:
            await ensure_streams(cur, sorted(streams))
        await upsert_gpus(cur, sightings)
        stored = await store_datapoints(cur, encoded, [p.ts_us for p in points], bounds)
    registry.remember(sightings, streams)
    return Committed(stored, bounds)

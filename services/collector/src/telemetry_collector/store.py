"""Write one fetched batch to PostgreSQL idempotently, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import aiopg
from telemetry_model import Datapoint
from telemetry_store import GpuSighting, ensure_streams, insert_datapoints, transaction, upsert_gpus

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
        ranges: dict[str, GpuSighting] = {}
        for p in points:
            g = p.gpu
            seen = ranges.get(g.uuid)
            if seen is None:
                ranges[g.uuid] = GpuSighting(
                    g.uuid,
                    g.hostname,
                    g.index,
                    g.device,
                    g.model,
                    g.driver_version,
                    p.ts_us,
                    p.ts_us,
                )
            elif p.ts_us < seen.first_us or p.ts_us > seen.last_us:
                ranges[g.uuid] = GpuSighting(
                    g.uuid,
                    g.hostname,
                    g.index,
                    g.device,
                    g.model,
                    g.driver_version,
                    min(seen.first_us, p.ts_us),
                    max(seen.last_us, p.ts_us),
                )
        stale = []
        for uuid, s in ranges.items():
            known = self.gpus.get(uuid)
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


async def store_batch(
    pool: aiopg.Pool, registry: Registry, points: Sequence[Datapoint], encoded: Sequence[bytes]
) -> int:
    """Store a batch; return how many datapoints were new. Commits before returning."""
    sightings = registry.stale_gpus(points)
    streams = {p.stream for p in points} - registry.streams
    async with transaction(pool) as cur:
        if streams:
            await ensure_streams(cur, sorted(streams))
        await upsert_gpus(cur, sightings)
        inserted = await insert_datapoints(cur, encoded)
    registry.remember(sightings, streams)
    return inserted

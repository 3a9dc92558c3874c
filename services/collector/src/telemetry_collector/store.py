"""Write one fetched batch to PostgreSQL idempotently, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import aiopg
from telemetry_model import METRICS_BY_NAME, Datapoint, Gpu
from telemetry_store import (
    BEGIN_INGEST,
    GpuSighting,
    IngestBounds,
    Stored,
    ensure_metrics,
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
    # DCGM fields outside the catalog known to be registered (a streamer's allow-list keeps
    # them; the insert looks metrics up by name, so each must have its row first).
    metrics: set[str] = field(default_factory=set)
    # The metrics each GPU's row is known to list (gpus.metric_ids): one more is upserted.
    gpu_metrics: dict[str, frozenset[str]] = field(default_factory=dict)

    def stale_gpus(self, points: Sequence[Datapoint]) -> list[GpuSighting]:
        """The GPU rows this batch must upsert: new, changed, with a metric their row does
        not list yet, or last_seen gone stale."""
        ranges: dict[str, tuple[Gpu, int, int]] = {}
        names: dict[str, set[str]] = {}
        for p in points:
            seen = ranges.get(p.gpu.uuid)
            if seen is None:
                ranges[p.gpu.uuid] = (p.gpu, p.ts_us, p.ts_us)
                names[p.gpu.uuid] = {p.metric}
            else:
                ranges[p.gpu.uuid] = (p.gpu, min(seen[1], p.ts_us), max(seen[2], p.ts_us))
                names[p.gpu.uuid].add(p.metric)
        sightings = [
            GpuSighting(
                g.uuid,
                g.hostname,
                g.index,
                g.device,
                g.model,
                g.driver_version,
                first,
                last,
                mig_profile=g.mig_profile,
                mig_instance=g.mig_instance,
                parent_uuid=g.parent_uuid,
                metrics=tuple(sorted(names[g.uuid])),
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
                or not self.gpu_metrics.get(s.uuid, frozenset()).issuperset(s.metrics)
            ):
                stale.append(s)
        return stale

    def unknown_metrics(self, points: Sequence[Datapoint]) -> set[str]:
        """The fields outside the catalog this batch carries that are not registered yet."""
        return {p.metric for p in points if p.metric not in METRICS_BY_NAME} - self.metrics

    def remember(
        self,
        sightings: Sequence[GpuSighting],
        streams: set[str],
        metrics: AbstractSet[str] = frozenset(),
    ) -> None:
        """Record what a committed batch wrote."""
        for s in sightings:
            self.gpus[s.uuid] = (_meta(s), s.last_us)
            self.gpu_metrics[s.uuid] = self.gpu_metrics.get(s.uuid, frozenset()).union(s.metrics)
        self.streams |= streams
        self.metrics |= metrics


def _meta(s: GpuSighting) -> tuple[object, ...]:
    return (s.hostname, s.index, s.device, s.model, s.driver_version, s.mig_profile)


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
    metrics = registry.unknown_metrics(points)
    # The bounds of the insert (retention horizon, sealed minutes) come with the BEGIN.
    async with transaction(pool, begin=BEGIN_INGEST) as cur:
        bounds = await ingest_bounds(cur, fetched=True)
        if streams:
            await ensure_streams(cur, sorted(streams))
        if metrics:
            # A streamer registers them first, with unit and description from the exporter's
            # HELP text; this only makes sure (a name already there is left alone).
            await ensure_metrics(cur, {name: ("", "") for name in metrics})
        await upsert_gpus(cur, sightings)
        stored = await store_datapoints(cur, encoded, [p.ts_us for p in points], bounds)
    registry.remember(sightings, streams, metrics)
    return Committed(stored, bounds)

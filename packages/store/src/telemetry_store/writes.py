"""The collector's write path: one statement per batch, duplicates ignored.

The batch travels as one JSON array (the datapoints' own wire form, joined, never
re-encoded) into ``json_to_recordset``: the fastest path aiopg offers (no COPY).

``telemetry`` is partitioned by time (``partitions``). Each insert transaction first takes
``INGEST_LOCK`` shared and reads ``telemetry_bounds`` in the same round trip:

- a datapoint older than ``accept_from`` (the raw retention's horizon) is refused: its day
  is expired or about to be dropped, and its minute was rolled up from the data then stored;
- a datapoint whose interval has no partition gets one first (normally the maintenance job
  has created it days ahead; this only happens when it has not run);
- a datapoint older than ``sealed_to`` (a minute the rollups may already hold) marks its
  minute in ``telemetry_late``, so the maintenance job aggregates that minute again.

The maintenance job moves ``accept_from`` and ``sealed_to`` only under ``INGEST_LOCK``
exclusive, so an insert transaction sees the bounds that hold until it commits: no row lands
in a partition being dropped, and no row inserted into a sealed minute goes unmarked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from .partitions import MINUTE_US, ensure_raw_partitions, forget_partitions
from .pool import Cursor
from .timesql import _micros

# Shared by every insert transaction; exclusive while the maintenance job moves the bounds.
INGEST_LOCK: Final = 0x7E1E_0003


@dataclass(frozen=True, slots=True)
class GpuSighting:
    """What one batch says about one GPU: its metadata and the time range it was seen in."""

    uuid: str
    hostname: str
    index: int
    device: str
    model: str
    driver_version: str | None
    first_us: int
    last_us: int


# One pass in uuid order, as one INSERT ... ON CONFLICT DO UPDATE, so concurrent upserts lock
# rows in the same order and cannot deadlock. The id is given explicitly: a known GPU's own
# id, and a value drawn from the sequence only for a uuid without a row (COALESCE evaluates
# nextval only when the lookup finds nothing). Left to the column default, the id was drawn
# for every row, even for the known GPUs the statement then updates: each refresh spent a
# value, and the sequence would run out. A GPU inserted concurrently after this statement's
# snapshot meets the ON CONFLICT clause instead (one value spent, once per race).
_UPSERT_GPUS = """
INSERT INTO gpus AS g
    (id, uuid, hostname, gpu_index, device, model, driver_version, first_seen, last_seen)
OVERRIDING SYSTEM VALUE
SELECT coalesce((SELECT k.id FROM gpus k WHERE k.uuid = r.uuid),
                nextval(pg_get_serial_sequence('gpus', 'id'))),
       uuid, hostname, gpu_index, device, model, driver_version,
       'epoch'::timestamptz + first_us * interval '1 microsecond',
       'epoch'::timestamptz + last_us * interval '1 microsecond'
FROM json_to_recordset(%s::json) AS r(uuid text, hostname text, gpu_index smallint,
     device text, model text, driver_version text, first_us bigint, last_us bigint)
ORDER BY uuid
ON CONFLICT (uuid) DO UPDATE SET
    hostname = EXCLUDED.hostname,
    gpu_index = EXCLUDED.gpu_index,
    device = EXCLUDED.device,
    model = EXCLUDED.model,
    driver_version = EXCLUDED.driver_version,
    first_seen = LEAST(g.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(g.last_seen, EXCLUDED.last_seen)
"""

_INSERT_TELEMETRY = """
INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq, container, pod, namespace)
SELECT g.id, 'epoch'::timestamptz + b.ts * interval '1 microsecond', m.id, b.value,
       s.id, b.seq, b.container, b.pod, b.namespace
FROM json_to_recordset(%s::json) AS b(stream text, seq bigint, ts bigint, metric text,
     value double precision, uuid text, container text, pod text, namespace text)
JOIN gpus g ON g.uuid = b.uuid
JOIN metrics m ON m.name = b.metric
JOIN streams s ON s.name = b.stream
ON CONFLICT (stream_id, seq, ts) DO NOTHING
"""


async def upsert_gpus(cur: Cursor, sightings: Iterable[GpuSighting]) -> None:
    """Insert new GPUs and widen the first/last-seen range of known ones (in uuid order)."""
    rows = [
        {
            "uuid": s.uuid,
            "hostname": s.hostname,
            "gpu_index": s.index,
            "device": s.device,
            "model": s.model,
            "driver_version": s.driver_version,
            "first_us": s.first_us,
            "last_us": s.last_us,
        }
        for s in sightings
    ]
    if rows:
        await cur.execute(_UPSERT_GPUS, (orjson.dumps(rows).decode(),))


_BOUNDS: Final = (
    f"SELECT pg_advisory_xact_lock_shared({INGEST_LOCK});"
    f" SELECT {_micros('accept_from')}, {_micros('sealed_to')},"
    " extract(epoch FROM partition_width)::bigint * 1000000 FROM telemetry_bounds"
)
# A transaction's BEGIN with the bounds in the same round trip (``pool.transaction(begin=)``).
BEGIN_INGEST: Final = f"BEGIN; {_BOUNDS}"


@dataclass(frozen=True, slots=True)
class IngestBounds:
    """``telemetry_bounds`` as an insert transaction sees it (microseconds since the epoch)."""

    accept_us: int
    sealed_us: int
    width_us: int


async def ingest_bounds(cur: Cursor, *, fetched: bool = False) -> IngestBounds:
    """Take ``INGEST_LOCK`` shared and read the bounds; with ``fetched``, only read the rows of
    a transaction begun with ``BEGIN_INGEST``."""
    if not fetched:
        await cur.execute(_BOUNDS)
    accept_us, sealed_us, width_us = (int(x) for x in await cur.fetchone())
    return IngestBounds(accept_us, sealed_us, width_us)


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing a batch did: ``inserted`` new datapoints (the rest were duplicates or
    ``expired``), ``expired`` refused as older than the raw retention's horizon, ``late``
    inserted into minutes already sealed for the rollups, and raw ``partitions`` created."""

    inserted: int
    expired: int = 0
    late: int = 0
    partitions: tuple[str, ...] = ()


async def store_datapoints(
    cur: Cursor,
    encoded: Sequence[bytes],
    ts_us: Sequence[int],
    bounds: IngestBounds | None = None,
) -> Stored:
    """Insert wire-encoded datapoints whose times are ``ts_us`` (same order), in the caller's
    transaction; duplicates are skipped, expired ones refused (see the module docstring).
    ``bounds`` are the transaction's own (``ingest_bounds``), read here when not given.

    Every datapoint's GPU and stream must already be registered (``upsert_gpus``,
    ``streams.ensure_streams``), and its metric must be in the catalog.
    """
    if len(encoded) != len(ts_us):
        raise ValueError("encoded and ts_us differ in length")
    if not encoded:
        return Stored(0)
    if bounds is None:
        bounds = await ingest_bounds(cur)
    accept_us, sealed_us, width_us = bounds.accept_us, bounds.sealed_us, bounds.width_us
    if min(ts_us) >= accept_us:
        kept, times = encoded, ts_us
    else:
        pairs = [(e, t) for e, t in zip(encoded, ts_us, strict=True) if t >= accept_us]
        kept, times = [e for e, _ in pairs], [t for _, t in pairs]
    expired = len(encoded) - len(kept)
    if not kept:
        return Stored(0, expired)
    created = await ensure_raw_partitions(cur, width_us, times)
    try:
        await cur.execute(_INSERT_TELEMETRY, ((b"[" + b",".join(kept) + b"]").decode(),))
    except Exception:
        forget_partitions(cur)  # a partition dropped behind our back: look again next time
        raise
    inserted = int(cur.rowcount)
    late = [t for t in times if t < sealed_us]
    if late:
        minutes = sorted({t - t % MINUTE_US for t in late})
        await cur.execute(
            "INSERT INTO telemetry_late (minute)"
            " SELECT 'epoch'::timestamptz + m * interval '1 microsecond' FROM unnest(%s) AS m",
            (minutes,),
        )
    return Stored(inserted, expired, len(late), tuple(created))


async def insert_datapoints(cur: Cursor, encoded: Sequence[bytes]) -> int:
    """``store_datapoints`` for callers without the times at hand (read from the wire form);
    return how many datapoints were new."""
    times = [int(orjson.loads(e)["ts"]) for e in encoded]
    return (await store_datapoints(cur, encoded, times)).inserted

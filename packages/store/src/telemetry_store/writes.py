"""The collector's write path: one statement per batch, duplicates ignored.

The batch travels as one JSON array (the datapoints' own wire form, joined, never
re-encoded) into ``json_to_recordset``: the fastest path aiopg offers (no COPY).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from .pool import Cursor


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
    mig_profile: str | None = None
    mig_instance: int | None = None
    parent_uuid: str | None = None


# One pass in uuid order, as one INSERT ... ON CONFLICT DO UPDATE, so concurrent upserts lock
# rows in the same order and cannot deadlock. The id is given explicitly: a known GPU's own
# id, and a value drawn from the sequence only for a uuid without a row (COALESCE evaluates
# nextval only when the lookup finds nothing). Left to the column default, the id was drawn
# for every row, even for the known GPUs the statement then updates: each refresh spent a
# value, and the sequence would run out. A GPU inserted concurrently after this statement's
# snapshot meets the ON CONFLICT clause instead (one value spent, once per race).
_UPSERT_GPUS = """
INSERT INTO gpus AS g
    (id, uuid, hostname, gpu_index, device, model, driver_version, first_seen, last_seen,
     parent_uuid, mig_profile, mig_instance)
OVERRIDING SYSTEM VALUE
SELECT coalesce((SELECT k.id FROM gpus k WHERE k.uuid = r.uuid),
                nextval(pg_get_serial_sequence('gpus', 'id'))),
       uuid, hostname, gpu_index, device, model, driver_version,
       'epoch'::timestamptz + first_us * interval '1 microsecond',
       'epoch'::timestamptz + last_us * interval '1 microsecond',
       parent_uuid, mig_profile, mig_instance
FROM json_to_recordset(%s::json) AS r(uuid text, hostname text, gpu_index smallint,
     device text, model text, driver_version text, first_us bigint, last_us bigint,
     parent_uuid text, mig_profile text, mig_instance smallint)
ORDER BY uuid
ON CONFLICT (uuid) DO UPDATE SET
    hostname = EXCLUDED.hostname,
    gpu_index = EXCLUDED.gpu_index,
    device = EXCLUDED.device,
    model = EXCLUDED.model,
    driver_version = EXCLUDED.driver_version,
    parent_uuid = EXCLUDED.parent_uuid,
    mig_profile = EXCLUDED.mig_profile,
    mig_instance = EXCLUDED.mig_instance,
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
ON CONFLICT (stream_id, seq) DO NOTHING
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
            "parent_uuid": s.parent_uuid,
            "mig_profile": s.mig_profile,
            "mig_instance": s.mig_instance,
        }
        for s in sightings
    ]
    if rows:
        await cur.execute(_UPSERT_GPUS, (orjson.dumps(rows).decode(),))


# Only names missing from the snapshot reach the INSERT, so only they draw an id; a race
# between two first registrations of one name spends one value, once.
_ENSURE_METRICS = """
INSERT INTO metrics (id, name, unit, description)
SELECT nextval('metric_dynamic_ids'), f.name, f.unit, f.description
FROM unnest(%s::text[], %s::text[], %s::text[]) AS f(name, unit, description)
WHERE NOT EXISTS (SELECT 1 FROM metrics m WHERE m.name = f.name)
ON CONFLICT (name) DO NOTHING
"""


async def ensure_metrics(cur: Cursor, fields: Mapping[str, tuple[str, str]]) -> None:
    """Register metrics outside the catalog by name: ``{name: (unit, description)}``.

    Known names are left as they are (and draw no id); a new one gets the next id from 10000
    up. For the DCGM fields a streamer's allow-list keeps beyond the catalog.
    """
    if not fields:
        return
    names = sorted(fields)
    await cur.execute(
        _ENSURE_METRICS,
        (names, [fields[n][0] for n in names], [fields[n][1] for n in names]),
    )


async def insert_datapoints(cur: Cursor, encoded: Sequence[bytes]) -> int:
    """Insert wire-encoded datapoints; return how many were new (duplicates are skipped).

    Every datapoint's GPU and stream must already be registered (``upsert_gpus``,
    ``streams.ensure_streams``), and its metric in the catalog or registered
    (``ensure_metrics``).
    """
    if not encoded:
        return 0
    await cur.execute(_INSERT_TELEMETRY, ((b"[" + b",".join(encoded) + b"]").decode(),))
    return int(cur.rowcount)

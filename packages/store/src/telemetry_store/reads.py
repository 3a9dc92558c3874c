"""The API's read path: GPUs, their latest values, and keyset-paginated time windows.

Every function takes the cursor first (the caller owns the connection and transaction)
and returns plain frozen dataclasses. Windows are inclusive on both ends and ordered by
``(ts, stream_id, seq)``, the key of the ``telemetry_gpu_time`` index, so a page resumes
exactly after the last row of the previous one: no gap and no duplicate, even when many
datapoints share a timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from .pool import Cursor

Aggregate = Literal["avg", "min", "max"]
AGGREGATES: Final[tuple[Aggregate, ...]] = ("avg", "min", "max")


@dataclass(frozen=True, slots=True)
class GpuRow:
    """A stored GPU: ``id`` is the database key, ``uuid`` the identity users see."""

    id: int
    uuid: str
    hostname: str
    index: int
    device: str
    model: str
    driver_version: str | None
    first_seen: datetime
    last_seen: datetime

    @property
    def key(self) -> GpuKey:
        """This GPU's position in the list order."""
        return GpuKey(self.hostname, self.index, self.uuid)


@dataclass(frozen=True, slots=True)
class GpuKey:
    """A position in the GPU list, ordered by hostname, per-host index, uuid."""

    hostname: str
    index: int
    uuid: str


@dataclass(frozen=True, slots=True)
class LatestValue:
    """The most recent datapoint of one metric of one GPU."""

    metric_id: int
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Window:
    """One GPU's datapoints between ``start`` and ``end`` (both inclusive, ``None`` = open).

    ``metric_ids`` restricts the metrics; empty means all of them.
    """

    gpu_id: int
    start: datetime | None = None
    end: datetime | None = None
    metric_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PointKey:
    """A position in a window: the ``telemetry_gpu_time`` index order."""

    ts: datetime
    stream_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Point:
    """One stored datapoint."""

    ts: datetime
    metric_id: int
    value: float
    stream_id: int
    seq: int
    container: str | None
    pod: str | None
    namespace: str | None

    @property
    def key(self) -> PointKey:
        """This datapoint's position in the window order."""
        return PointKey(self.ts, self.stream_id, self.seq)


@dataclass(frozen=True, slots=True)
class BucketKey:
    """A position in a bucketed series: bucket start, then metric."""

    start: datetime
    metric_id: int


@dataclass(frozen=True, slots=True)
class Bucket:
    """The aggregate of one metric over ``[start, start + step)`` (clipped to the window)."""

    start: datetime
    metric_id: int
    value: float
    count: int

    @property
    def key(self) -> BucketKey:
        """This bucket's position in the series order."""
        return BucketKey(self.start, self.metric_id)


_GPU_COLUMNS: Final = (
    "g.id, g.uuid, g.hostname, g.gpu_index, g.device, g.model, g.driver_version,"
    " g.first_seen, g.last_seen"
)


async def list_gpus(
    cur: Cursor, *, limit: int, hostname: str | None = None, after: GpuKey | None = None
) -> list[GpuRow]:
    """GPUs with stored telemetry ordered by hostname, index, uuid; at most ``limit``."""
    where = ["EXISTS (SELECT 1 FROM telemetry t WHERE t.gpu_id = g.id)"]
    params: dict[str, Any] = {"limit": limit}
    if hostname is not None:
        where.append("g.hostname = %(hostname)s")
        params["hostname"] = hostname
    if after is not None:
        where.append("(g.hostname, g.gpu_index, g.uuid) > (%(a_host)s, %(a_index)s, %(a_uuid)s)")
        params.update(a_host=after.hostname, a_index=after.index, a_uuid=after.uuid)
    await cur.execute(
        f"SELECT {_GPU_COLUMNS} FROM gpus g WHERE {' AND '.join(where)}"
        " ORDER BY g.hostname, g.gpu_index, g.uuid LIMIT %(limit)s",
        params,
    )
    return [GpuRow(*row) for row in await cur.fetchall()]


async def find_gpu(cur: Cursor, uuid: str) -> GpuRow | None:
    """The GPU with this uuid, or ``None``."""
    await cur.execute(f"SELECT {_GPU_COLUMNS} FROM gpus g WHERE g.uuid = %s", (uuid,))
    row = await cur.fetchone()
    return None if row is None else GpuRow(*row)


_LATEST: Final = """
SELECT m.id, l.ts, l.value
FROM metrics m
CROSS JOIN LATERAL (
    SELECT t.ts, t.value FROM telemetry t
    WHERE t.gpu_id = %s AND t.metric_id = m.id
    ORDER BY t.ts DESC, t.stream_id DESC, t.seq DESC
    LIMIT 1
) l
ORDER BY m.id
"""


async def latest_values(cur: Cursor, gpu_id: int) -> list[LatestValue]:
    """The latest datapoint of each metric the GPU has, in catalog order."""
    await cur.execute(_LATEST, (gpu_id,))
    return [LatestValue(*row) for row in await cur.fetchall()]


def _window_filter(window: Window, params: dict[str, Any]) -> list[str]:
    where = ["gpu_id = %(gpu_id)s"]
    params["gpu_id"] = window.gpu_id
    if window.start is not None:
        where.append("ts >= %(start)s")
        params["start"] = window.start
    if window.end is not None:
        where.append("ts <= %(end)s")
        params["end"] = window.end
    if window.metric_ids:
        where.append("metric_id = ANY(%(metric_ids)s::smallint[])")
        params["metric_ids"] = list(window.metric_ids)
    return where


def window_query(
    window: Window, *, limit: int, after: PointKey | None = None
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of ``read_window`` (exposed for ``EXPLAIN``)."""
    params: dict[str, Any] = {"limit": limit}
    where = _window_filter(window, params)
    if after is not None:
        where.append("(ts, stream_id, seq) > (%(a_ts)s, %(a_stream)s, %(a_seq)s)")
        params.update(a_ts=after.ts, a_stream=after.stream_id, a_seq=after.seq)
    sql = (
        "SELECT ts, metric_id, value, stream_id, seq, container, pod, namespace"
        f" FROM telemetry WHERE {' AND '.join(where)}"
        " ORDER BY ts, stream_id, seq LIMIT %(limit)s"
    )
    return sql, params


async def read_window(
    cur: Cursor, window: Window, *, limit: int, after: PointKey | None = None
) -> list[Point]:
    """Up to ``limit`` datapoints of ``window`` strictly after ``after``, oldest first."""
    sql, params = window_query(window, limit=limit, after=after)
    await cur.execute(sql, params)
    return [Point(*row) for row in await cur.fetchall()]


async def read_buckets(
    cur: Cursor,
    window: Window,
    *,
    step: timedelta,
    origin: datetime,
    aggregate: Aggregate,
    limit: int,
    after: BucketKey | None = None,
) -> list[Bucket]:
    """Per-metric aggregates over ``step``-wide buckets aligned on ``origin``.

    Buckets are ordered by start time, then metric; only non-empty buckets are returned.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}")
    if step <= timedelta(0):
        raise ValueError("step must be positive")
    params: dict[str, Any] = {"limit": limit, "step": step, "origin": origin}
    where = _window_filter(window, params)
    having = ""
    if after is not None:
        # The first bound lets the index skip earlier rows; the HAVING clause is exact.
        where.append("ts >= %(a_start)s")
        having = (
            "HAVING (date_bin(%(step)s, ts, %(origin)s), metric_id) > (%(a_start)s, %(a_metric)s)"
        )
        params.update(a_start=after.start, a_metric=after.metric_id)
    await cur.execute(
        f"SELECT date_bin(%(step)s, ts, %(origin)s) AS bucket, metric_id, {aggregate}(value),"
        f" count(*) FROM telemetry WHERE {' AND '.join(where)}"
        f" GROUP BY 1, 2 {having} ORDER BY 1, 2 LIMIT %(limit)s",
        params,
    )
    return [Bucket(*row) for row in await cur.fetchall()]

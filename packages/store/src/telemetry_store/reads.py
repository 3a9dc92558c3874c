"""The API's read path: GPUs, their latest values, and keyset-paginated time windows.

Every function takes the cursor first (the caller owns the connection and transaction)
and returns plain frozen dataclasses. Windows are inclusive on both ends and ordered by
``(ts, stream_id, seq)``, the key of the ``telemetry_gpu_time`` index, so a page resumes
exactly after the last row of the previous one: no gap and no duplicate, even when many
datapoints share a timestamp.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Final, Literal

import orjson
import psycopg2.errors
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from telemetry_model import METRICS

from .errors import StoreError
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


def _gpus_query(
    *, limit: int, hostname: str | None = None, after: GpuKey | None = None
) -> tuple[str, dict[str, Any]]:
    where = ["EXISTS (SELECT 1 FROM telemetry t WHERE t.gpu_id = g.id)"]
    params: dict[str, Any] = {"limit": limit}
    if hostname is not None:
        where.append("g.hostname = %(hostname)s")
        params["hostname"] = hostname
    if after is not None:
        where.append("(g.hostname, g.gpu_index, g.uuid) > (%(a_host)s, %(a_index)s, %(a_uuid)s)")
        params.update(a_host=after.hostname, a_index=after.index, a_uuid=after.uuid)
    sql = (
        f"SELECT {_GPU_COLUMNS} FROM gpus g WHERE {' AND '.join(where)}"
        " ORDER BY g.hostname, g.gpu_index, g.uuid LIMIT %(limit)s"
    )
    return sql, params


async def list_gpus(
    cur: Cursor, *, limit: int, hostname: str | None = None, after: GpuKey | None = None
) -> list[GpuRow]:
    """GPUs with stored telemetry ordered by hostname, index, uuid; at most ``limit``."""
    sql, params = _gpus_query(limit=limit, hostname=hostname, after=after)
    await cur.execute(sql, params)
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


def _window_filter(window: Window, params: dict[str, Any], gpu: str = "%(gpu_id)s") -> list[str]:
    where = [f"gpu_id = {gpu}"]
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
    window: Window, *, limit: int, after: PointKey | None = None, gpu: str = "%(gpu_id)s"
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of ``read_window`` (exposed for ``EXPLAIN``); ``gpu`` is the
    SQL of the GPU id, ``window.gpu_id`` by default."""
    params: dict[str, Any] = {"limit": limit}
    where = _window_filter(window, params, gpu)
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


@dataclass(frozen=True, slots=True)
class JsonPage:
    """A page of a window rendered as JSON by PostgreSQL (see ``read_window_json``)."""

    items: str
    count: int
    last: PointKey | None


def _sql_text(text: str) -> str:
    """``text`` as an SQL string literal inside a psycopg2 query (``%`` doubled)."""
    return "'" + text.replace("'", "''").replace("%", "%%") + "'"


def _json(text: str) -> str:
    return orjson.dumps(text).decode()


# Each datapoint's JSON object up to its value, by metric id: '{"time":"\x01","metric":"NAME",
# "unit":"UNIT","value":' (chr(1) stands for the time, see _ITEM), from the catalog the store
# migrates into the metrics table; an id missing from it (a metric this code does not know)
# falls back to the table in the query.
_HEAD: Final = '{{"time":"\x01","metric":{},"unit":{},"value":'
_HEADS: Final = "ARRAY[{}]::text[]".format(
    ", ".join(
        _sql_text(_HEAD.format(_json(m.name), _json(m.unit)))
        if (m := {x.id: x for x in METRICS}.get(i)) is not None
        else "NULL"
        for i in range(1, max(x.id for x in METRICS) + 1)
    )
)
_STRING_OR_NULL: Final = "coalesce(to_json({})::text, 'null')"
# One datapoint as a JSON object, byte for byte what orjson makes of the API's dict, except
# the time: chr(1), which no JSON text holds unescaped, stands for it until the datapoints
# of that time get it together. A value PostgreSQL prints as an integer gets a ".0";
# NaN and infinities (ingestion refuses them) become null, as with orjson. (A value under
# 1e-4 or from 1e15 on may differ in notation only: 1.5e-05 for 0.000015.)
_ITEM: Final = (
    f'coalesce(({_HEADS})[metric_id], (SELECT \'{{"time":"\' || chr(1) || \'","metric":\''
    " || to_json(m.name) || ',\"unit\":' || to_json(m.unit) || ',\"value\":'"
    " FROM metrics m WHERE m.id = metric_id))"
    " || CASE WHEN value <> trunc(value) THEN value::text"
    " WHEN abs(value) < 1e15 THEN value::text || '.0'"
    " WHEN value > '-Infinity' AND value < 'Infinity' THEN value::text ELSE 'null' END"
    " || CASE WHEN container IS NULL AND pod IS NULL AND namespace IS NULL"
    ' THEN \',"container":null,"pod":null,"namespace":null}\''
    f" ELSE ',\"container\":' || {_STRING_OR_NULL.format('container')}"
    f" || ',\"pod\":' || {_STRING_OR_NULL.format('pod')}"
    f" || ',\"namespace\":' || {_STRING_OR_NULL.format('namespace')} || '}}' END"
)


def _rfc3339(column: str) -> str:
    """SQL of the timestamptz ``column`` as orjson writes a UTC datetime: RFC 3339 with "Z",
    and six fractional digits unless all are zero. (The UTC time as text is
    'YYYY-MM-DD HH:MM:SS[.f...]' without trailing zeros.)"""
    return (
        "(SELECT overlay(CASE WHEN length(t) = 19 THEN t ELSE rpad(t, 26, '0') END"
        f" PLACING 'T' FROM 11) || 'Z' FROM (SELECT ({column} AT TIME ZONE 'UTC')::text AS t) u)"
    )


_GPU_BY_UUID: Final = "(SELECT id FROM gpus WHERE uuid = %(uuid)s)"


def window_json_query(
    uuid: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    metric_ids: tuple[int, ...] = (),
    limit: int,
    after: PointKey | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of ``read_window_json`` (exposed for ``EXPLAIN``).

    ``window_query`` for one row past the page, numbered; the datapoints of one time are
    rendered together so that the time is formatted once per time, not per datapoint.
    """
    window = Window(0, start, end, metric_ids)
    inner, params = window_query(window, limit=limit + 1, after=after, gpu=_GPU_BY_UUID)
    del params["gpu_id"]
    params.update(uuid=uuid, page=limit)
    on_page = "FILTER (WHERE n <= %(page)s)"
    last = "FILTER (WHERE n = %(page)s)"
    sql = (
        f"SELECT EXISTS {_GPU_BY_UUID}, coalesce(string_agg(items, ',' ORDER BY ts), ''),"
        " coalesce(sum(count), 0)::int, coalesce(sum(rendered), 0)::int,"
        " max(last_ts), max(last_stream_id), max(last_seq), max(n) > %(page)s"
        " FROM (SELECT ts,"
        f"   replace(string_agg(j, ',' ORDER BY stream_id, seq) {on_page}, chr(1),"
        f"     {_rfc3339('ts')}) AS items,"
        f"   count(*) {on_page} AS count, count(j) {on_page} AS rendered,"
        f"   max(ts) {last} AS last_ts, max(stream_id) {last} AS last_stream_id,"
        f"   max(seq) {last} AS last_seq, max(n) AS n"
        f"   FROM (SELECT ts, stream_id, seq, {_ITEM} AS j,"
        "     row_number() OVER (ORDER BY ts, stream_id, seq) AS n"
        f"     FROM ({inner}) w) r"
        "   GROUP BY ts) g"
    )
    return sql, params


_PLACEHOLDER: Final = re.compile(r"%\((\w+)\)s")
# The statements prepared on each connection (psycopg2's, which aiopg wraps), by name.
_prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


@cache
def _statement(sql: str) -> tuple[str, str, str]:
    """The name, ``PREPARE`` and ``EXECUTE`` of ``sql`` (psycopg2 ``%(name)s`` parameters)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    body = _PLACEHOLDER.sub(number, sql).replace("%%", "%")
    name = "telemetry_" + hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:24]
    arguments = ", ".join(f"%({n})s" for n in names)
    return name, f"PREPARE {name} AS {body}", f"EXECUTE {name}({arguments})"


async def _execute_prepared(cur: Cursor, sql: str, params: dict[str, Any]) -> None:
    """Execute ``sql`` as a statement prepared once per connection.

    For the queries run on every request, whose parsing and planning cost a third of their
    execution. The shapes are few (which filters a window has), so each is one statement;
    their generic plans walk the same index as the custom ones (checked in the tests).
    """
    name, prepare, execute = _statement(sql)
    connection = cur.raw.connection
    known = _prepared.setdefault(connection, set())
    if name not in known:
        await cur.execute(prepare)
        known.add(name)
    try:
        await cur.execute(execute, params)
    except psycopg2.errors.InvalidSqlStatementName:
        # Deallocated behind our back (DISCARD ALL): prepare it again, at once unless the
        # failure aborted the caller's transaction.
        known.discard(name)
        if connection.get_transaction_status() != TRANSACTION_STATUS_IDLE:
            raise
        await cur.execute(prepare)
        known.add(name)
        await cur.execute(execute, params)


async def read_window_json(
    cur: Cursor,
    uuid: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    metric_ids: tuple[int, ...] = (),
    limit: int,
    after: PointKey | None = None,
) -> JsonPage | None:
    """``read_window`` of the GPU with this uuid as the API serves it, rendered by
    PostgreSQL; ``None`` when no GPU has this uuid.

    ``items`` holds the JSON objects of up to ``limit`` datapoints, comma-separated:
    ``{"time", "metric", "unit", "value", "container", "pod", "namespace"}``, byte for byte
    what orjson makes of them (times in UTC with ``Z``). ``last`` is the last one's key
    when more follow. PostgreSQL builds the text in C, on its own core, in the same round
    trip as the GPU lookup: the caller gets one string instead of parsing a thousand rows
    (timestamps into datetimes) and encoding them again.
    """
    sql, params = window_json_query(
        uuid, start=start, end=end, metric_ids=metric_ids, limit=limit, after=after
    )
    await _execute_prepared(cur, sql, params)
    found, items, count, rendered, ts, stream_id, seq, more = await cur.fetchone()
    if not found:
        return None
    if rendered != count:
        raise StoreError(f"{count - rendered} datapoints have a metric id the catalog lacks")
    return JsonPage(items, count, PointKey(ts, stream_id, seq) if more else None)


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


@dataclass(frozen=True, slots=True)
class GpuJsonPage:
    """A page of the GPU list rendered as JSON by PostgreSQL (see ``list_gpus_json``)."""

    items: str
    last: GpuKey | None


_GPU_ITEM: Final = (
    "'{\"id\":' || to_json(uuid) || ',\"hostname\":' || to_json(hostname)"
    " || ',\"index\":' || gpu_index || ',\"device\":' || to_json(device)"
    " || ',\"model\":' || to_json(model)"
    f" || ',\"driver_version\":' || {_STRING_OR_NULL.format('driver_version')}"
    f' || \',"first_seen":"\' || {_rfc3339("first_seen")}'
    f' || \'","last_seen":"\' || {_rfc3339("last_seen")} || \'"}}\''
)


async def list_gpus_json(
    cur: Cursor, *, limit: int, hostname: str | None = None, after: GpuKey | None = None
) -> GpuJsonPage:
    """``list_gpus`` as the API serves it, rendered by PostgreSQL: the JSON objects of up to
    ``limit`` GPUs, comma-separated (``{"id", "hostname", "index", "device", "model",
    "driver_version", "first_seen", "last_seen"}``, byte for byte what orjson makes of
    them), and the last one's key when more follow."""
    inner, params = _gpus_query(limit=limit + 1, hostname=hostname, after=after)
    params["page"] = limit
    last = "FILTER (WHERE n = %(page)s)"
    sql = (
        "SELECT coalesce(string_agg(j, ',' ORDER BY hostname, gpu_index, uuid)"
        "  FILTER (WHERE n <= %(page)s), ''),"
        f" max(hostname) {last}, max(gpu_index) {last}, max(uuid) {last}, max(n) > %(page)s"
        f" FROM (SELECT hostname, gpu_index, uuid, {_GPU_ITEM} AS j,"
        "   row_number() OVER (ORDER BY hostname, gpu_index, uuid) AS n"
        f"   FROM ({inner}) g) r"
    )
    await _execute_prepared(cur, sql, params)
    items, host, index, uuid, more = await cur.fetchone()
    return GpuJsonPage(items, GpuKey(host, index, uuid) if more else None)

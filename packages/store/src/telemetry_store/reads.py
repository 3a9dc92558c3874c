"""The API's read path: GPUs, their latest values, and keyset-paginated time windows.

Every function takes the cursor first (the caller owns the connection and transaction)
and returns plain frozen dataclasses. Windows are inclusive on both ends and ordered by
``(ts, stream_id, seq)``, the key of the ``telemetry_gpu_time`` index, so a page resumes
exactly after the last row of the previous one: no gap and no duplicate, even when many
datapoints share a timestamp.

What the API serves is rendered by PostgreSQL (the ``*_json`` functions), times included, so
any time the database holds renders, even one outside Python's years 1-9999 (a row stored
before ingestion checked its domain). Page keys carry times as integer microseconds since the
Unix epoch for the same reason.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Final, Literal

import orjson
import psycopg2.errors
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from telemetry_model import METRICS, to_micros

from .pool import Cursor
from .rollups import Segment, cover, rollup_state
from .timesql import BEGIN_US, END_US, _micros, at

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
    """A position in a window: the ``telemetry_gpu_time`` index order.

    ``ts_us`` is microseconds since the Unix epoch (any time PostgreSQL holds; see ``at``).
    """

    ts_us: int
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
        return PointKey(to_micros(self.ts), self.stream_id, self.seq)


@dataclass(frozen=True, slots=True)
class BucketKey:
    """A position in a bucketed series: bucket start (microseconds since the epoch), metric."""

    start_us: int
    metric_id: int


_GPU_COLUMNS: Final = (
    "g.id, g.uuid, g.hostname, g.gpu_index, g.device, g.model, g.driver_version,"
    " g.first_seen, g.last_seen"
)


def _gpus_query(
    *, limit: int, hostname: str | None = None, after: GpuKey | None = None
) -> tuple[str, dict[str, Any]]:
    # Raw datapoints, or (once those are past their retention) the hourly rollups.
    where = [
        "(EXISTS (SELECT 1 FROM telemetry t WHERE t.gpu_id = g.id)"
        " OR EXISTS (SELECT 1 FROM telemetry_1h h WHERE h.gpu_id = g.id))"
    ]
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
    """The conditions of ``window`` but its metrics (see ``_per_metric``)."""
    where = [f"gpu_id = {gpu}"]
    params["gpu_id"] = window.gpu_id
    if window.start is not None:
        where.append("ts >= %(start)s")
        params["start"] = window.start
    if window.end is not None:
        where.append("ts <= %(end)s")
        params["end"] = window.end
    return where


def _per_metric(
    columns: str, where: list[str], tail: str, params: dict[str, Any], ids: tuple[int, ...]
) -> str:
    """``SELECT columns FROM telemetry WHERE where tail`` once per metric of ``ids``, merged.

    Each metric is one range of ``telemetry_gpu_metric_time`` (gpu, metric, time): a metric
    the GPU never reported costs one index probe, however much else the GPU reported. (A
    single scan of the time index with ``metric_id = ANY(...)`` as a filter would walk every
    datapoint of the GPU in the window to find none.)
    """
    params["metric_ids"] = list(ids)
    conditions = " AND ".join([*where, "metric_id = m.id"])
    return (
        f"SELECT t.* FROM unnest(%(metric_ids)s::smallint[]) AS m(id)"
        f" CROSS JOIN LATERAL (SELECT {columns} FROM telemetry WHERE {conditions} {tail}) t"
    )


_POINT_COLUMNS: Final = "ts, metric_id, value, stream_id, seq, container, pod, namespace"
_POINT_ORDER: Final = "ORDER BY ts, stream_id, seq LIMIT %(limit)s"


def window_query(
    window: Window, *, limit: int, after: PointKey | None = None, gpu: str = "%(gpu_id)s"
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of ``read_window`` (exposed for ``EXPLAIN``); ``gpu`` is the
    SQL of the GPU id, ``window.gpu_id`` by default.

    Without a metric filter: one walk of ``telemetry_gpu_time`` that stops after ``limit``
    rows. With one: ``limit`` rows from each metric's range of ``telemetry_gpu_metric_time``,
    sorted together, so the work is bounded by ``limit`` x metrics whatever the data.
    """
    params: dict[str, Any] = {"limit": limit}
    where = _window_filter(window, params, gpu)
    if after is not None:
        where.append("(ts, stream_id, seq) > (%(a_ts)s, %(a_stream)s, %(a_seq)s)")
        params.update(a_ts=at(after.ts_us), a_stream=after.stream_id, a_seq=after.seq)
    if not window.metric_ids:
        sql = f"SELECT {_POINT_COLUMNS} FROM telemetry WHERE {' AND '.join(where)} {_POINT_ORDER}"
    else:
        merged = _per_metric(_POINT_COLUMNS, where, _POINT_ORDER, params, window.metric_ids)
        sql = f"SELECT {_POINT_COLUMNS} FROM ({merged}) w {_POINT_ORDER}"
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


def _metric_head(prefix: str, between: str = ',"unit":', suffix: str = ',"value":') -> str:
    """SQL of ``prefix + name + between + unit + suffix`` for the row's ``metric_id``, with
    name and unit as JSON strings.

    From a constant array built from the catalog (no join), else from the metrics table (a
    metric this code does not know), else, for an id neither knows (only a hand-written
    INSERT stores one), under the name "metric_<id>" with an empty unit, so it still renders.
    """
    by_id = {m.id: m for m in METRICS}
    heads = ", ".join(
        _sql_text(prefix + _json(m.name) + between + _json(m.unit) + suffix)
        if (m := by_id.get(i)) is not None
        else "NULL"
        for i in range(1, max(by_id) + 1)
    )
    pre, mid, post = _sql_text(prefix), _sql_text(between), _sql_text(suffix)
    return (
        f"coalesce((ARRAY[{heads}]::text[])[metric_id],"
        f" (SELECT {pre} || to_json(m.name) || {mid} || to_json(m.unit) || {post}"
        " FROM metrics m WHERE m.id = metric_id),"
        f" {pre} || '\"metric_' || metric_id || '\"' || {mid} || '\"\"' || {post})"
    )


_STRING_OR_NULL: Final = "coalesce(to_json({})::text, 'null')"
# '{"time":"\x01","metric":"NAME","unit":"UNIT","value":' (chr(1) stands for the time).
_POINT_HEAD: Final = _metric_head('{"time":"\x01","metric":')


def _value(column: str) -> str:
    """SQL of the double ``column`` as orjson writes a float. A value PostgreSQL prints as an
    integer gets a ".0"; NaN and infinities (ingestion refuses them) become null, as with
    orjson. (A value under 1e-4 or from 1e15 on may differ in notation only: 1.5e-05 for
    0.000015.)"""
    return (
        f"CASE WHEN {column} <> trunc({column}) THEN {column}::text"
        f" WHEN abs({column}) < 1e15 THEN {column}::text || '.0'"
        f" WHEN {column} > '-Infinity' AND {column} < 'Infinity' THEN {column}::text"
        " ELSE 'null' END"
    )


# One datapoint as a JSON object, byte for byte what orjson makes of the API's dict, except
# the time: chr(1), which no JSON text holds unescaped, stands for it until the datapoints
# of that time get it together.
_ITEM: Final = (
    f"{_POINT_HEAD} || {_value('value')}"
    " || CASE WHEN container IS NULL AND pod IS NULL AND namespace IS NULL"
    ' THEN \',"container":null,"pod":null,"namespace":null}\''
    f" ELSE ',\"container\":' || {_STRING_OR_NULL.format('container')}"
    f" || ',\"pod\":' || {_STRING_OR_NULL.format('pod')}"
    f" || ',\"namespace\":' || {_STRING_OR_NULL.format('namespace')} || '}}' END"
)


def _rfc3339(column: str) -> str:
    """SQL of the timestamptz ``column`` as orjson writes a UTC datetime: RFC 3339 with "Z",
    and six fractional digits unless all are zero.

    Years 0001-9999 take the fast path (the UTC time as text is 'YYYY-MM-DD HH:MM:SS[.f...]'
    without trailing zeros; the pool sets DateStyle ISO). Any other time PostgreSQL holds
    renders too, never as an error: other years in ISO 8601's expanded form with a sign
    (astronomical numbering: 44 BC is -0043), and ±infinity as 'infinity'/'-infinity'.
    """
    fast = (
        "(SELECT overlay(CASE WHEN length(t) = 19 THEN t ELSE rpad(t, 26, '0') END"
        f" PLACING 'T' FROM 11) || 'Z' FROM (SELECT ({column} AT TIME ZONE 'UTC')::text AS t) u)"
    )
    year = "lpad(abs(y)::text, greatest(4, length(abs(y)::text)), '0')"
    general = (
        f"(SELECT CASE WHEN y > 9999 THEN '+' WHEN y < 0 THEN '-' ELSE '' END || {year}"
        " || to_char(u, '-MM-DD\"T\"HH24:MI:SS')"
        " || CASE WHEN to_char(u, 'US') = '000000' THEN '' ELSE to_char(u, '.US') END || 'Z'"
        " FROM (SELECT u, CASE WHEN y0 < 0 THEN y0 + 1 ELSE y0 END AS y"
        f" FROM (SELECT u, extract(year FROM u)::int AS y0"
        f" FROM (SELECT {column} AT TIME ZONE 'UTC' AS u) a) b) w)"
    )
    return (
        f"CASE WHEN {column} >= timestamptz '0001-01-01 00:00:00+00'"
        f" AND {column} < timestamptz '10000-01-01 00:00:00+00' THEN {fast}"
        f" WHEN NOT isfinite({column}) THEN {column}::text ELSE {general} END"
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
        " coalesce(sum(count), 0)::int,"
        f" {_micros('max(last_ts)')}, max(last_stream_id), max(last_seq), max(n) > %(page)s"
        " FROM (SELECT ts,"
        f"   replace(string_agg(j, ',' ORDER BY stream_id, seq) {on_page}, chr(1),"
        f"     {_rfc3339('ts')}) AS items,"
        f"   count(*) {on_page} AS count,"
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
    found, items, count, ts, stream_id, seq, more = await cur.fetchone()
    if not found:
        return None
    return JsonPage(items, count, PointKey(int(ts), stream_id, seq) if more else None)


@dataclass(frozen=True, slots=True)
class BucketJsonPage:
    """A page of a bucketed series rendered as JSON by PostgreSQL (see ``read_buckets_json``).

    ``scanned`` is how many rows the page read (datapoints, or rollup rows where rollups
    serve); more than the ``max_rows`` asked
    for means the window holds more than that, and the page is incomplete.
    """

    items: str
    count: int
    last: BucketKey | None
    scanned: int


def _window_us(window: Window, after: BucketKey | None) -> tuple[int, int]:
    """The window as ``[lo, hi)`` in microseconds, narrowed to the buckets after ``after``."""
    lo = to_micros(window.start) if window.start is not None else BEGIN_US
    hi = to_micros(window.end) + 1 if window.end is not None else END_US
    if after is not None:
        lo = max(lo, after.start_us)
    return lo, hi


_AGGREGATE_SQL: Final = {"avg": "sum(s) / sum(n)", "min": "min(lo)", "max": "max(hi)"}


def buckets_json_query(
    window: Window,
    *,
    step: timedelta,
    origin: datetime,
    aggregate: Aggregate,
    limit: int,
    max_rows: int,
    after: BucketKey | None = None,
    segments: Sequence[Segment] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of ``read_buckets_json`` (exposed for ``EXPLAIN``).

    ``segments`` say which source serves which part of the window (``rollups.cover``);
    by default the raw datapoints serve all of it.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}")
    if step <= timedelta(0):
        raise ValueError("step must be positive")
    params: dict[str, Any] = {
        "page": limit,
        "step": step,
        "origin": origin,
        "scan": max_rows + 1,
        "gpu_id": window.gpu_id,
    }
    if segments is None:
        lo, hi = _window_us(window, after)
        segments = [Segment("telemetry", lo, hi)]
    resume = ""
    if after is not None:
        resume = "WHERE (bucket, metric_id) > (%(a_start)s, %(a_metric)s)"
        params.update(a_start=at(after.start_us), a_metric=after.metric_id)
    parts = []
    for i, seg in enumerate(segments):
        params[f"lo{i}"], params[f"hi{i}"] = at(seg.lo_us), at(seg.hi_us)
        if seg.source == "telemetry":
            where = ["gpu_id = %(gpu_id)s", f"ts >= %(lo{i})s", f"ts < %(hi{i})s"]
            columns = "ts AS t, metric_id, 1 AS n, value AS s, value AS lo, value AS hi"
            if window.metric_ids:
                parts.append(_per_metric(columns, where, "", params, window.metric_ids))
            else:
                parts.append(f"SELECT {columns} FROM telemetry WHERE {' AND '.join(where)}")
        else:
            metrics = ""
            if window.metric_ids:
                params["metric_ids"] = list(window.metric_ids)
                metrics = " AND metric_id = ANY(%(metric_ids)s::smallint[])"
            parts.append(
                "SELECT bucket AS t, metric_id, count AS n, sum AS s, min AS lo, max AS hi"
                f" FROM {seg.source} WHERE gpu_id = %(gpu_id)s"
                f" AND bucket >= %(lo{i})s AND bucket < %(hi{i})s{metrics}"
            )
    union = (
        " UNION ALL ".join(f"({p})" for p in parts)
        if parts
        else (
            "SELECT NULL::timestamptz AS t, NULL::smallint AS metric_id, 0 AS n,"
            " 0::float8 AS s, 0::float8 AS lo, 0::float8 AS hi WHERE false"
        )
    )
    # At most max_rows + 1 rows (datapoints, or rollup rows where rollups serve) are read,
    # whatever the window holds: one more than allowed tells the caller the window is too
    # large. Only then are they aggregated.
    item = (
        f"replace({_POINT_HEAD}, chr(1), {_rfc3339('bucket')}) || {_value('value')}"
        " || ',\"count\":' || n || '}'"
    )
    last = "FILTER (WHERE k = %(page)s)"
    sql = (
        f"WITH s AS MATERIALIZED (SELECT * FROM ({union}) u LIMIT %(scan)s),"
        " b AS MATERIALIZED ("
        " SELECT date_bin(%(step)s, t, %(origin)s) AS bucket, metric_id,"
        f" {_AGGREGATE_SQL[aggregate]} AS value, sum(n) AS n FROM s GROUP BY 1, 2),"
        " r AS (SELECT bucket, metric_id, value, n,"
        f" row_number() OVER (ORDER BY bucket, metric_id) AS k FROM b {resume})"
        f" SELECT coalesce(string_agg({item}, ',' ORDER BY k) FILTER (WHERE k <= %(page)s), ''),"
        " count(*) FILTER (WHERE k <= %(page)s),"
        f" {_micros(f'max(bucket) {last}')}, max(metric_id) {last}, max(k) > %(page)s,"
        " (SELECT count(*) FROM s)"
        " FROM r"
    )
    return sql, params


async def read_buckets_json(
    cur: Cursor,
    window: Window,
    *,
    step: timedelta,
    origin: datetime,
    aggregate: Aggregate,
    limit: int,
    max_rows: int,
    after: BucketKey | None = None,
) -> BucketJsonPage:
    """Per-metric aggregates over ``step``-wide buckets aligned on ``origin``, rendered by
    PostgreSQL as the API serves them: ``{"time", "metric", "unit", "value", "count"}``.

    Buckets are ordered by start time, then metric; only non-empty buckets are returned,
    up to ``limit``. Each part of the window is read from the coarsest source that answers
    it exactly (``rollups.cover``): the 1-hour or 1-minute rollups where the step and origin
    allow and they are complete, raw datapoints for the rest. At most ``max_rows`` + 1 rows
    are read (see ``BucketJsonPage``).
    """
    lo, hi = _window_us(window, after)
    state = await rollup_state(cur, lo, hi)
    segments = cover(
        lo,
        hi,
        step_us=step // timedelta(microseconds=1),
        origin_us=to_micros(origin),
        state=state,
    )
    sql, params = buckets_json_query(
        window,
        step=step,
        origin=origin,
        aggregate=aggregate,
        limit=limit,
        max_rows=max_rows,
        after=after,
        segments=segments,
    )
    await cur.execute(sql, params)
    items, count, start_us, metric_id, more, scanned = await cur.fetchone()
    last = BucketKey(int(start_us), metric_id) if more else None
    return BucketJsonPage(items, count, last, int(scanned))


@dataclass(frozen=True, slots=True)
class GpuSpan:
    """A stored GPU's database id and the times of its first and last datapoint (in
    microseconds since the epoch, any time PostgreSQL holds)."""

    id: int
    first_us: int
    last_us: int


async def find_gpu_span(cur: Cursor, uuid: str) -> GpuSpan | None:
    """The database id and seen range of the GPU with this uuid, or ``None``."""
    await cur.execute(
        f"SELECT id, {_micros('first_seen')}, {_micros('last_seen')} FROM gpus WHERE uuid = %s",
        (uuid,),
    )
    row = await cur.fetchone()
    return None if row is None else GpuSpan(row[0], int(row[1]), int(row[2]))


@dataclass(frozen=True, slots=True)
class GpuJsonPage:
    """A page of the GPU list rendered as JSON by PostgreSQL (see ``list_gpus_json``)."""

    items: str
    last: GpuKey | None


_GPU_FIELDS: Final = (
    "'{\"id\":' || to_json(uuid) || ',\"hostname\":' || to_json(hostname)"
    " || ',\"index\":' || gpu_index || ',\"device\":' || to_json(device)"
    " || ',\"model\":' || to_json(model)"
    f" || ',\"driver_version\":' || {_STRING_OR_NULL.format('driver_version')}"
    f' || \',"first_seen":"\' || {_rfc3339("first_seen")}'
    f' || \'","last_seen":"\' || {_rfc3339("last_seen")} || \'"\''
)
_GPU_ITEM: Final = f"{_GPU_FIELDS} || '}}'"
# The latest datapoint of each metric, as the GPU state lists them.
_LATEST_ITEM: Final = (
    f"{_metric_head('{"metric":')} || {_value('value')}"
    f" || ',\"time\":\"' || {_rfc3339('ts')} || '\"}}'"
)
_GPU_STATE: Final = (
    f"SELECT {_GPU_FIELDS} || ',\"metrics\":[' || coalesce(("
    f" SELECT string_agg({_LATEST_ITEM}, ',' ORDER BY metric_id)"
    " FROM (SELECT m.id AS metric_id, l.ts, l.value FROM metrics m CROSS JOIN LATERAL ("
    "  SELECT t.ts, t.value FROM telemetry t WHERE t.gpu_id = g.id AND t.metric_id = m.id"
    "  ORDER BY t.ts DESC, t.stream_id DESC, t.seq DESC LIMIT 1) l) v), '') || ']}'"
    " FROM gpus g WHERE g.uuid = %(uuid)s"
)


async def find_gpu_json(cur: Cursor, uuid: str) -> str | None:
    """The GPU with this uuid and the latest datapoint of each of its metrics, rendered by
    PostgreSQL as the API serves it, or ``None``.

    ``{"id", "hostname", "index", "device", "model", "driver_version", "first_seen",
    "last_seen", "metrics": [{"metric", "unit", "value", "time"}, ...]}`` (catalog order),
    byte for byte what orjson makes of it; every time renders (see ``_rfc3339``).
    """
    # Prepared: planning ten lateral reads over every partition costs more than running them.
    await _execute_prepared(cur, _GPU_STATE, {"uuid": uuid})
    row = await cur.fetchone()
    return None if row is None else str(row[0])


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

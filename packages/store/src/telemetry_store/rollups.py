"""1-minute and 1-hour rollups: how they are built, and which source serves which interval.

``telemetry_1m`` holds, per GPU, metric and minute, the count, min, max, sum and last value of
the raw datapoints; ``telemetry_1h`` the same per hour, built from the minutes. Both are
written only by the maintenance job, for closed intervals, as upserts of values computed from
scratch: recomputing an interval writes the same values, so a run that dies half-way is
simply run again. ``telemetry_bounds.rollup_1m_to`` / ``rollup_1h_to`` say how far each is
complete; a minute that got datapoints after it was rolled up is listed in ``telemetry_late``
until the job has aggregated it again (with the hour around it).

A bucketed read takes each part of its window from the coarsest source that holds it whole
and is up to date (``cover``): hours where the step and origin are whole hours, minutes where
they are whole minutes, raw datapoints for the rest (the window's ragged edges, what is not
rolled up yet, and late minutes not yet re-aggregated). So the answer is the one the raw data
gives (to float rounding: a sum of sums), only cheaper.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .partitions import HOUR_US, MINUTE_US, ROLLUP_1H, ROLLUP_1M
from .pool import Cursor
from .timesql import _micros, at

Source = Literal["telemetry", "telemetry_1m", "telemetry_1h"]

# The values of a minute: recomputed from raw rows in [a, b), read GPU by GPU from the covering
# (gpu_id, ts, ...) index (index-only once vacuumed). "last" is the value of the datapoint last
# in (ts, stream_id, seq) order, the order the latest state uses.
_MINUTES: Final = """
INSERT INTO telemetry_1m AS r (gpu_id, bucket, metric_id, count, min, max, sum, last)
SELECT gpu_id, date_bin('1 minute', ts, timestamptz '1970-01-01 00:00:00+00'), metric_id,
       count(*), min(value), max(value), sum(value),
       (array_agg(value ORDER BY ts DESC, stream_id DESC, seq DESC))[1]
FROM gpus g CROSS JOIN LATERAL (
    SELECT gpu_id, ts, metric_id, value, stream_id, seq FROM telemetry
    WHERE gpu_id = g.id AND ts >= %(a)s AND ts < %(b)s) t
GROUP BY 1, 2, 3
ON CONFLICT (gpu_id, bucket, metric_id) DO UPDATE SET
    count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
    last = EXCLUDED.last
WHERE (r.count, r.min, r.max, r.sum, r.last)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.min, EXCLUDED.max, EXCLUDED.sum, EXCLUDED.last)
"""

_HOURS: Final = """
INSERT INTO telemetry_1h AS r (gpu_id, bucket, metric_id, count, min, max, sum, last)
SELECT gpu_id, date_bin('1 hour', bucket, timestamptz '1970-01-01 00:00:00+00'), metric_id,
       sum(count), min(min), max(max), sum(sum), (array_agg(last ORDER BY bucket DESC))[1]
FROM gpus g CROSS JOIN LATERAL (
    SELECT gpu_id, bucket, metric_id, count, min, max, sum, last FROM telemetry_1m
    WHERE gpu_id = g.id AND bucket >= %(a)s AND bucket < %(b)s) t
GROUP BY 1, 2, 3
ON CONFLICT (gpu_id, bucket, metric_id) DO UPDATE SET
    count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
    last = EXCLUDED.last
WHERE (r.count, r.min, r.max, r.sum, r.last)
      IS DISTINCT FROM (EXCLUDED.count, EXCLUDED.min, EXCLUDED.max, EXCLUDED.sum, EXCLUDED.last)
"""


async def roll_minutes(cur: Cursor, a_us: int, b_us: int) -> int:
    """Upsert the 1-minute rollups of raw datapoints in ``[a_us, b_us)`` (whole minutes);
    return the rows written (unchanged ones are not)."""
    await cur.execute(_MINUTES, {"a": at(a_us), "b": at(b_us)})
    return int(cur.rowcount)


async def roll_hours(cur: Cursor, a_us: int, b_us: int) -> int:
    """Upsert the 1-hour rollups of the minutes in ``[a_us, b_us)`` (whole hours)."""
    await cur.execute(_HOURS, {"a": at(a_us), "b": at(b_us)})
    return int(cur.rowcount)


def runs(starts_us: Iterable[int], width_us: int) -> list[tuple[int, int]]:
    """Intervals ``[s, s + width)`` of ``starts_us`` merged where they touch."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(starts_us)):
        if out and out[-1][1] >= s:
            out[-1] = (out[-1][0], max(out[-1][1], s + width_us))
        else:
            out.append((s, s + width_us))
    return out


@dataclass(frozen=True, slots=True)
class RollupState:
    """How far each rollup is complete (``None``: not at all) and the late minutes below."""

    minutes_to_us: int | None
    hours_to_us: int | None
    late_minutes_us: tuple[int, ...] = ()


async def rollup_state(cur: Cursor, lo_us: int, hi_us: int) -> RollupState:
    """The rollups' watermarks and the late minutes in ``[lo_us, hi_us)``."""

    await cur.execute(
        f"SELECT {_micros('rollup_1m_to')}, {_micros('rollup_1h_to')},"
        " (SELECT coalesce(array_agg(DISTINCT"
        f"   {_micros('l.minute')}::bigint), '{{}}') FROM telemetry_late l"
        "   WHERE l.minute >= %(lo)s AND l.minute < %(hi)s)"
        " FROM telemetry_bounds",
        # an hour earlier, for the hour that holds lo; -infinity below PostgreSQL's range
        {"lo": at(lo_us - HOUR_US), "hi": at(hi_us)},
    )
    row = await cur.fetchone()
    if row is None:
        return RollupState(None, None)
    m, h, late = row
    return RollupState(
        None if m is None else int(m), None if h is None else int(h), tuple(int(x) for x in late)
    )


@dataclass(frozen=True, slots=True)
class Segment:
    """Times ``[lo_us, hi_us)`` read from ``source``."""

    source: Source
    lo_us: int
    hi_us: int


_LEVELS: Final[tuple[tuple[Source, int], ...]] = ((ROLLUP_1H, HOUR_US), (ROLLUP_1M, MINUTE_US))


def _ceil(t: int, width: int) -> int:
    return -(-t // width) * width


def cover(
    lo_us: int, hi_us: int, *, step_us: int, origin_us: int, state: RollupState
) -> list[Segment]:
    """Split ``[lo_us, hi_us)`` among the sources that answer it exactly, coarsest first.

    A rollup of width ``r`` serves only when the buckets are whole intervals of it
    (``step_us`` a multiple of ``r`` and ``origin_us`` on an ``r`` boundary), only where it
    is complete, and not on an interval holding a late minute not yet re-aggregated.
    """
    late = sorted(set(state.late_minutes_us))
    levels: list[tuple[Source, int, int]] = []
    for source, width in _LEVELS:
        to = state.hours_to_us if source == ROLLUP_1H else state.minutes_to_us
        if to is not None and step_us % width == 0 and origin_us % width == 0:
            levels.append((source, width, to))

    def split(lo: int, hi: int, rest: Sequence[tuple[Source, int, int]]) -> list[Segment]:
        if lo >= hi:
            return []
        if not rest:
            return [Segment("telemetry", lo, hi)]
        (source, width, to), finer = rest[0], rest[1:]
        a = _ceil(lo, width)
        b = min(hi - hi % width, to - to % width)
        if a >= b:
            return split(lo, hi, finer)
        out = split(lo, a, finer)
        bad = sorted({m - m % width for m in late if a <= m < b})
        pos = a
        for x in bad:
            out += [Segment(source, pos, x)] if pos < x else []
            out += split(x, x + width, finer)
            pos = x + width
        out += [Segment(source, pos, b)] if pos < b else []
        return out + split(b, hi, finer)

    merged: list[Segment] = []
    for seg in split(lo_us, hi_us, levels):
        if merged and merged[-1].source == seg.source and merged[-1].hi_us == seg.lo_us:
            merged[-1] = Segment(seg.source, merged[-1].lo_us, seg.hi_us)
        else:
            merged.append(seg)
    return merged

"""Time partitions of ``telemetry`` and its rollups: list, create, detach and drop them.

Every table here is partitioned by RANGE on its time column with no DEFAULT partition: a
DEFAULT partition would have to be scanned by every later partition creation, would keep the
planner from reading partitions in time order (latest-value and window queries would merge all
of them instead of stopping at the first), and forbids ``DETACH ... CONCURRENTLY``.

Partitions are created as plain tables and then attached (``telemetry_create_partition``,
migration 0020: ``ATTACH PARTITION`` takes SHARE UPDATE EXCLUSIVE on the parent, so inserts
and reads go on; ``CREATE TABLE ... PARTITION OF`` would take ACCESS EXCLUSIVE and queue every
writer behind the longest running query). Their indexes are named after the parent's
(``telemetry_p20261130_gpu_time``). They are aligned on multiples of their width from the Unix
epoch (a day: UTC midnights) and named ``<parent>_p<YYYYMMDD>`` (``_<HHMM>`` added when they
start inside a day).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .pool import Cursor
from .timesql import _micros, at

# Serialises partition DDL between collectors (on demand) and maintenance (ahead of time).
PARTITION_LOCK: Final = 0x7E1E_0002

RAW: Final = "telemetry"
ROLLUP_1M: Final = "telemetry_1m"
ROLLUP_1H: Final = "telemetry_1h"
MINUTE_US: Final = 60_000_000
HOUR_US: Final = 3_600_000_000
DAY_US: Final = 86_400_000_000
# Rollup partitions: one per week of minutes, one per four weeks of hours.
ROLLUP_WIDTH_US: Final = {ROLLUP_1M: 7 * DAY_US, ROLLUP_1H: 28 * DAY_US}
TABLES: Final = (RAW, ROLLUP_1M, ROLLUP_1H)


@dataclass(frozen=True, slots=True)
class Partition:
    """One attached partition: times ``lo_us <= t < hi_us`` (microseconds since the epoch)."""

    name: str
    lo_us: int
    hi_us: int
    detaching: bool = False


def floor_to(t_us: int, width_us: int) -> int:
    """``t_us`` rounded down to a multiple of ``width_us`` (from the epoch)."""
    return t_us - t_us % width_us


def partition_name(parent: str, lo_us: int) -> str:
    """The name of ``parent``'s partition starting at ``lo_us``."""
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=lo_us)
    name = f"{parent}_p{start:%Y%m%d}"
    if start.hour or start.minute:
        name += f"_{start:%H%M}"
    return name


def _check_parent(parent: str) -> str:
    if parent not in TABLES:
        raise ValueError(f"not a partitioned telemetry table: {parent!r}")
    return parent


async def list_partitions(cur: Cursor, parent: str) -> list[Partition]:
    """The partitions of ``parent`` in time order, read from the catalog."""
    await cur.execute(
        f"SELECT name, {_micros('lo')}, {_micros('hi')}, detaching"
        " FROM telemetry_partitions(%s::regclass)",
        (_check_parent(parent),),
    )
    return [Partition(n, int(lo), int(hi), d) for n, lo, hi, d in await cur.fetchall()]


def gaps(lo_us: int, hi_us: int, existing: Iterable[Partition]) -> list[tuple[int, int]]:
    """The parts of ``[lo_us, hi_us)`` no partition of ``existing`` covers."""
    out: list[tuple[int, int]] = []
    pos = lo_us
    for p in sorted(existing, key=lambda p: p.lo_us):
        if p.hi_us <= pos:
            continue
        if p.lo_us >= hi_us:
            break
        if p.lo_us > pos:
            out.append((pos, p.lo_us))
        pos = max(pos, p.hi_us)
        if pos >= hi_us:
            return out
    if pos < hi_us:
        out.append((pos, hi_us))
    return out


async def create_partitions(
    cur: Cursor, parent: str, width_us: int, starts_us: Iterable[int]
) -> list[str]:
    """Give every ``width_us``-wide interval holding one of ``starts_us`` a partition where none
    covers it yet (an interval partly covered gets partitions for its gaps); return the names
    created. Runs in the caller's transaction, under ``PARTITION_LOCK``.
    """
    _check_parent(parent)
    wanted = sorted({floor_to(t, width_us) for t in starts_us})
    if not wanted:
        return []
    existing = await list_partitions(cur, parent)
    if not any(gaps(lo, lo + width_us, existing) for lo in wanted):
        return []  # the usual case, without taking the lock
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    existing = await list_partitions(cur, parent)
    created: list[str] = []
    for lo in wanted:
        for g_lo, g_hi in gaps(lo, lo + width_us, existing):
            name = partition_name(parent, g_lo)
            await cur.execute(
                "SELECT telemetry_create_partition(%s, %s, %s, %s)",
                (parent, name, at(g_lo), at(g_hi)),
            )
            existing.append(Partition(name, g_lo, g_hi))
            created.append(name)
    return created


async def create_range(
    cur: Cursor, parent: str, width_us: int, lo_us: int, hi_us: int
) -> list[str]:
    """Partitions covering ``[lo_us, hi_us)`` wherever none does yet (see ``create_partitions``)."""
    starts = range(floor_to(lo_us, width_us), hi_us, width_us) if hi_us > lo_us else range(0)
    return await create_partitions(cur, parent, width_us, starts)


# The raw partitions each connection has seen, merged into covered ranges: a partition that
# holds a time at or after the horizon (telemetry_bounds.accept_from) is never dropped, so a
# time inside a range seen once needs no catalog look-up again on that connection.
_covered: weakref.WeakKeyDictionary[Any, list[tuple[int, int]]] = weakref.WeakKeyDictionary()


def _merge(parts: Sequence[Partition]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for p in sorted(parts, key=lambda p: p.lo_us):
        if p.detaching:
            continue
        if merged and merged[-1][1] >= p.lo_us:
            merged[-1] = (merged[-1][0], max(merged[-1][1], p.hi_us))
        else:
            merged.append((p.lo_us, p.hi_us))
    return merged


def _uncovered(ranges: Sequence[tuple[int, int]], times_us: Sequence[int]) -> list[int]:
    low, high = min(times_us), max(times_us)
    for lo, hi in ranges:
        if lo <= low and high < hi:
            return []  # the usual case: the whole batch inside one run of partitions
    return [t for t in times_us if not any(lo <= t < hi for lo, hi in ranges)]


async def ensure_raw_partitions(cur: Cursor, width_us: int, times_us: Sequence[int]) -> list[str]:
    """Make sure every time of ``times_us`` has a raw partition, creating what is missing (in the
    caller's transaction); return the names created. Cheap when they all exist: the ranges
    this connection has seen are remembered."""
    if not times_us:
        return []
    conn = cur.raw.connection
    known = _covered.get(conn)
    if known is not None and not _uncovered(known, times_us):
        return []
    parts = await list_partitions(cur, RAW)
    missing = _uncovered(_merge(parts), times_us)
    created = await create_partitions(cur, RAW, width_us, missing) if missing else []
    if created:
        parts = await list_partitions(cur, RAW)
    _covered[conn] = _merge(parts)
    return created


def forget_partitions(cur: Cursor) -> None:
    """Drop what this connection remembers of the raw partitions (after a failed insert)."""
    _covered.pop(cur.raw.connection, None)


async def detach_and_drop(cur: Cursor, parent: str, partition: Partition) -> float:
    """Detach ``partition`` from ``parent`` without blocking readers or writers, then drop it;
    return the seconds the detach took (the rest is the drop).

    ``cur`` must be in autocommit mode (``DETACH ... CONCURRENTLY`` runs in two transactions
    of its own). It waits for the transactions that use the parent to end, but takes no lock
    that stops new ones. A detach interrupted earlier is finished (``FINALIZE``).
    """
    _check_parent(parent)
    began = time.perf_counter()
    if partition.detaching:
        await cur.execute(f"ALTER TABLE {parent} DETACH PARTITION {partition.name} FINALIZE")
    else:
        await cur.execute(f"ALTER TABLE {parent} DETACH PARTITION {partition.name} CONCURRENTLY")
    detached = time.perf_counter() - began
    await cur.execute(f"DROP TABLE {partition.name}")
    return detached


async def drop_leftovers(cur: Cursor, parent: str) -> list[str]:
    """Drop tables named like ``parent``'s partitions that are no longer attached (a retention
    interrupted between its detach and its drop); return their names."""
    _check_parent(parent)
    await cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT c.relispartition"
        " AND c.relname ~ %s",
        (f"^{parent}_p[0-9]{{8}}(_[0-9]{{4}})?$",),
    )
    names = [row[0] for row in await cur.fetchall()]
    for name in names:
        await cur.execute(f"DROP TABLE {name}")
    return names

"""The maintenance job: partitions ahead, rollups, retention. One run, safe to start anywhere.

A run holds ``JOB_LOCK`` (a session advisory lock) for its whole length; a run that cannot
take it returns at once (``Report.skipped``), so a CronJob, a loop in the local stack and an
operator's manual run never work at the same time, and a run killed half-way releases the
lock with its connection. Each step commits on its own and is idempotent, so a killed run
loses and doubles nothing: the next one takes over where the last commit left.

1. Raw partitions from today to ``ahead`` (default 3 days) ahead.
2. The bounds, under ``INGEST_LOCK`` exclusive (waits for the insert transactions in flight,
   at most ``lock_timeout``): ``accept_from`` to now minus the raw retention (older rows are
   refused from then on) and ``sealed_to`` to the last minute closed ``rollup_delay`` ago.
3. 1-minute rollups from ``rollup_1m_to`` up to ``sealed_to``, ``chunk`` of raw time per
   transaction; 1-hour rollups from the minutes, a day per transaction; then the late minutes
   (``telemetry_late``) aggregated again, with their hours.
4. Retention: raw partitions wholly older than ``accept_from`` and rolled up are detached
   (``CONCURRENTLY``: no lock that stops readers or writers) and dropped; rollup partitions
   wholly past their own retention likewise. The partition being written is never among
   them (the raw retention is at least one partition wide).
5. ``maintenance_status``: the run's time and counters, which the API exports as metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import aiopg

from .partitions import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    RAW,
    ROLLUP_1H,
    ROLLUP_1M,
    ROLLUP_WIDTH_US,
    Partition,
    create_range,
    detach_and_drop,
    drop_leftovers,
    floor_to,
    list_partitions,
)
from .pool import Cursor
from .rollups import roll_hours, roll_minutes, runs
from .timesql import _micros, at
from .writes import INGEST_LOCK

log = logging.getLogger(__name__)

JOB_LOCK: Final = 0x7E1E_0004


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Policy:
    """How long each resolution is kept, and how the job cuts its work."""

    raw_retention: timedelta = timedelta(days=7)
    rollup_1m_retention: timedelta = timedelta(days=90)
    rollup_1h_retention: timedelta = timedelta(days=730)
    partition_width: timedelta = timedelta(days=1)
    ahead: timedelta = timedelta(days=3)
    rollup_delay: timedelta = timedelta(minutes=1)
    chunk: timedelta = timedelta(minutes=15)
    lock_timeout: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        hour = timedelta(hours=1)
        if self.partition_width < hour or self.partition_width % hour:
            raise ValueError("partition_width must be a whole number of hours")
        if DAY_US % _us(self.partition_width) and _us(self.partition_width) % DAY_US:
            raise ValueError("partition_width must divide a day or be whole days")
        if self.raw_retention < self.partition_width:
            raise ValueError("raw_retention must be at least one partition_width")
        if not self.raw_retention <= self.rollup_1m_retention <= self.rollup_1h_retention:
            raise ValueError("retention must not shrink from raw to 1m to 1h")
        if self.chunk < timedelta(minutes=1) or self.chunk % timedelta(minutes=1):
            raise ValueError("chunk must be a whole number of minutes")
        if self.ahead < timedelta(0) or self.rollup_delay < timedelta(0):
            raise ValueError("ahead and rollup_delay must not be negative")


@dataclass(slots=True)
class Report:
    """What one run did."""

    skipped: bool = False
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    drop_seconds: list[float] = field(default_factory=list)
    detach_seconds: list[float] = field(default_factory=list)
    # (start, end) of each drop on time.perf_counter()'s clock, to line up with other timings.
    drop_windows: list[tuple[float, float]] = field(default_factory=list)
    rows_1m: int = 0
    rows_1h: int = 0
    late_minutes: int = 0
    rollup_1m_to_us: int | None = None
    rollup_1h_to_us: int | None = None
    seconds: float = 0.0


@asynccontextmanager
async def _txn(cur: Cursor) -> AsyncIterator[Cursor]:
    await cur.execute("BEGIN")
    try:
        yield cur
    except BaseException:
        await cur.execute("ROLLBACK")
        raise
    await cur.execute("COMMIT")


async def _now_us(cur: Cursor) -> int:
    await cur.execute(f"SELECT {_micros('now()')}")
    return int((await cur.fetchone())[0])


async def _bounds(cur: Cursor) -> dict[str, int | None]:
    names = ("accept_from", "sealed_to", "rollup_1m_to", "rollup_1h_to")
    await cur.execute(f"SELECT {', '.join(_micros(n) for n in names)} FROM telemetry_bounds")
    row = await cur.fetchone()
    return {n: None if v is None else int(v) for n, v in zip(names, row, strict=True)}


class Maintenance:
    """One run of the job on one connection (``run``); ``now_us`` pins the clock for tests."""

    def __init__(self, cur: Cursor, policy: Policy, *, now_us: int | None = None) -> None:
        self.cur = cur
        self.policy = policy
        self.now_us = now_us
        self.report = Report()

    async def run(self) -> Report:
        """Every step in order (see the module docstring)."""
        began = time.perf_counter()
        now = self.now_us if self.now_us is not None else await _now_us(self.cur)
        await self.partitions_ahead(now)
        await self.move_bounds(now)
        await self.roll_up(now)
        await self.retention(now)
        self.report.seconds = time.perf_counter() - began
        return self.report

    async def partitions_ahead(self, now: int) -> None:
        """Raw partitions from the current one to ``ahead``; the width for on-demand ones."""
        width = _us(self.policy.partition_width)
        async with _txn(self.cur) as cur:
            await cur.execute(
                "UPDATE telemetry_bounds SET partition_width = %s WHERE partition_width <> %s",
                (self.policy.partition_width, self.policy.partition_width),
            )
            self.report.created += await create_range(
                cur, RAW, width, floor_to(now, width), now + _us(self.policy.ahead) + 1
            )

    async def move_bounds(self, now: int) -> None:
        """Raise ``accept_from`` and ``sealed_to`` while no insert transaction is in flight."""
        accept = now - _us(self.policy.raw_retention)
        sealed = floor_to(now - _us(self.policy.rollup_delay), MINUTE_US)
        timeout_ms = max(1, _us(self.policy.lock_timeout) // 1000)
        try:
            async with _txn(self.cur) as cur:
                await cur.execute(f"SET LOCAL lock_timeout = {timeout_ms}")
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
                await cur.execute(
                    "UPDATE telemetry_bounds SET accept_from = greatest(accept_from, %s),"
                    " sealed_to = greatest(sealed_to, %s)",
                    (at(accept), at(sealed)),
                )
        except Exception as e:
            if getattr(e, "pgcode", None) != "55P03":
                raise
            # Inserts held the lock for the whole timeout: try again next run rather than
            # keep every writer waiting behind this one.
            log.warning("the bounds stay as they are this run: %s", e)

    async def roll_up(self, now: int) -> None:
        """Advance the 1-minute, then the 1-hour rollups; re-aggregate late minutes."""
        bounds = await _bounds(self.cur)
        sealed = bounds["sealed_to"]
        assert sealed is not None  # NOT NULL
        raw = [p for p in await list_partitions(self.cur, RAW) if not p.detaching]
        oldest_1m = floor_to(now - _us(self.policy.rollup_1m_retention), MINUTE_US)
        start = bounds["rollup_1m_to"]
        if start is None:
            # From the first partition of the data's domain (telemetry_early holds only what a
            # hand-written INSERT stores before 1970).
            first = next((p.lo_us for p in raw if p.lo_us >= 0), sealed)
            start = floor_to(first, MINUTE_US)
        start = max(start, oldest_1m)
        if start < sealed:
            if bounds["rollup_1m_to"] is None:
                # The first run: no hour before the first minute has anything to roll up.
                async with _txn(self.cur) as cur:
                    await cur.execute(
                        "UPDATE telemetry_bounds SET rollup_1m_to = %s,"
                        " rollup_1h_to = coalesce(rollup_1h_to, %s)",
                        (at(start), at(floor_to(start, HOUR_US))),
                    )
            await self._advance_minutes(start, sealed, raw)
        bounds = await _bounds(self.cur)
        if bounds["rollup_1m_to"] is not None and bounds["rollup_1h_to"] is not None:
            oldest_1h = floor_to(now - _us(self.policy.rollup_1h_retention), HOUR_US)
            await self._advance_hours(
                max(bounds["rollup_1h_to"], oldest_1h), floor_to(bounds["rollup_1m_to"], HOUR_US)
            )
        await self._late_minutes()
        bounds = await _bounds(self.cur)
        self.report.rollup_1m_to_us = bounds["rollup_1m_to"]
        self.report.rollup_1h_to_us = bounds["rollup_1h_to"]

    async def _advance_minutes(self, start: int, end: int, raw: list[Partition]) -> None:
        """Roll up ``[start, end)`` a chunk per transaction, each moving ``rollup_1m_to``."""
        chunk = _us(self.policy.chunk)
        pos = start
        while pos < end:
            here = next((p for p in raw if p.lo_us <= pos < p.hi_us), None)
            if here is None:
                # Nothing is stored where no partition is: skip to the next one at once.
                later = [p.lo_us for p in raw if p.lo_us > pos]
                nxt = (
                    min(max(floor_to(later[0], MINUTE_US), pos + MINUTE_US), end) if later else end
                )
            else:
                nxt = min(pos + chunk, end)
            async with _txn(self.cur) as cur:
                if here is not None:
                    await create_range(cur, ROLLUP_1M, ROLLUP_WIDTH_US[ROLLUP_1M], pos, nxt)
                    self.report.rows_1m += await roll_minutes(cur, pos, nxt)
                await cur.execute("UPDATE telemetry_bounds SET rollup_1m_to = %s", (at(nxt),))
            pos = nxt

    async def _advance_hours(self, start: int, end: int) -> None:
        """Roll the minutes of ``[start, end)`` up into hours, a day per transaction."""
        pos = start
        while pos < end:
            nxt = min(pos + DAY_US, end)
            async with _txn(self.cur) as cur:
                await create_range(cur, ROLLUP_1H, ROLLUP_WIDTH_US[ROLLUP_1H], pos, nxt)
                self.report.rows_1h += await roll_hours(cur, pos, nxt)
                await cur.execute("UPDATE telemetry_bounds SET rollup_1h_to = %s", (at(nxt),))
            pos = nxt

    async def _late_minutes(self) -> None:
        """Aggregate again the minutes marked late below the watermark, with their hours."""
        while True:
            async with _txn(self.cur) as cur:
                await cur.execute(
                    f"SELECT l.id, {_micros('l.minute')} FROM telemetry_late l, telemetry_bounds b"
                    " WHERE l.minute < b.rollup_1m_to ORDER BY l.id LIMIT 10000"
                )
                rows = await cur.fetchall()
                if not rows:
                    return
                minutes = {int(m) for _, m in rows}
                for lo, hi in runs(minutes, MINUTE_US):
                    await create_range(cur, ROLLUP_1M, ROLLUP_WIDTH_US[ROLLUP_1M], lo, hi)
                    self.report.rows_1m += await roll_minutes(cur, lo, hi)
                hours_to = (await _bounds(cur))["rollup_1h_to"]
                hours = {floor_to(m, HOUR_US) for m in minutes}
                for lo, hi in runs((h for h in hours if hours_to and h < hours_to), HOUR_US):
                    await create_range(cur, ROLLUP_1H, ROLLUP_WIDTH_US[ROLLUP_1H], lo, hi)
                    self.report.rows_1h += await roll_hours(cur, lo, hi)
                # Exactly the rows read: a minute marked meanwhile stays for the next round.
                await cur.execute(
                    "DELETE FROM telemetry_late WHERE id = ANY(%s)", ([r[0] for r in rows],)
                )
                self.report.late_minutes += len(minutes)

    async def retention(self, now: int) -> None:
        """Drop the partitions past their retention (raw ones only once rolled up)."""
        bounds = await _bounds(self.cur)
        accept = bounds["accept_from"] or 0
        rolled = bounds["rollup_1m_to"]
        oldest_1m = now - _us(self.policy.rollup_1m_retention)
        oldest_1h = now - _us(self.policy.rollup_1h_retention)
        await self.cur.execute(f"SELECT {_micros('min(minute)')} FROM telemetry_late")
        late = (await self.cur.fetchone())[0]
        for p in await list_partitions(self.cur, RAW):
            expired = p.hi_us <= accept
            summarised = (rolled is not None and p.hi_us <= rolled) or p.hi_us <= oldest_1m
            if expired and summarised and (late is None or int(late) >= p.hi_us):
                await self._drop(RAW, p)
        hours_to = bounds["rollup_1h_to"]
        for p in await list_partitions(self.cur, ROLLUP_1M):
            if p.hi_us <= oldest_1m and (
                (hours_to is not None and p.hi_us <= hours_to) or p.hi_us <= oldest_1h
            ):
                await self._drop(ROLLUP_1M, p)
        for p in await list_partitions(self.cur, ROLLUP_1H):
            if p.hi_us <= oldest_1h:
                await self._drop(ROLLUP_1H, p)
        for parent in (RAW, ROLLUP_1M, ROLLUP_1H):
            self.report.dropped += await drop_leftovers(self.cur, parent)

    async def _drop(self, parent: str, partition: Partition) -> None:
        began = time.perf_counter()
        detach = await detach_and_drop(self.cur, parent, partition)
        seconds = time.perf_counter() - began
        log.info("dropped partition %s in %.3fs (detach %.3fs)", partition.name, seconds, detach)
        self.report.dropped.append(partition.name)
        self.report.drop_seconds.append(seconds)
        self.report.detach_seconds.append(detach)
        self.report.drop_windows.append((began, began + seconds))


async def run_maintenance(pool: aiopg.Pool, policy: Policy, *, now_us: int | None = None) -> Report:
    """One run of the job (see the module docstring); ``Report.skipped`` when another run
    holds the job lock. Records the outcome in ``maintenance_status`` either way."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_try_advisory_lock(%s)", (JOB_LOCK,))
        if not (await cur.fetchone())[0]:
            log.info("another maintenance run holds the lock; nothing to do")
            return Report(skipped=True)
        try:
            job = Maintenance(cur, policy, now_us=now_us)
            try:
                report = await job.run()
            except Exception as e:
                await _record_failure(cur, e)
                raise
            await _record_success(cur, report)
            return report
        finally:
            if not conn.closed:
                await cur.execute("SELECT pg_advisory_unlock(%s)", (JOB_LOCK,))


async def _record_success(cur: Cursor, r: Report) -> None:
    await cur.execute(
        "UPDATE maintenance_status SET last_success = now(), last_duration_s = %(s)s,"
        " runs = runs + 1, rows_1m = rows_1m + %(m)s, rows_1h = rows_1h + %(h)s,"
        " late_minutes = late_minutes + %(l)s,"
        " partitions_created = partitions_created + %(c)s,"
        " partitions_dropped = partitions_dropped + %(d)s",
        {
            "s": r.seconds,
            "m": r.rows_1m,
            "h": r.rows_1h,
            "l": r.late_minutes,
            "c": len(r.created),
            "d": len(r.dropped),
        },
    )


async def _record_failure(cur: Cursor, error: BaseException) -> None:
    try:
        conn: Any = cur.connection
        if conn.closed:
            return
        await cur.execute("ROLLBACK")  # whatever transaction the failure left open
        await cur.execute(
            "UPDATE maintenance_status SET runs = runs + 1, failures = failures + 1,"
            " last_error = %s, last_error_at = now()",
            (str(error)[:1000],),
        )
    except Exception:
        log.exception("could not record the failed run")

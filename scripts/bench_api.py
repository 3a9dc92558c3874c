"""Benchmark the API on 50 million raw datapoints and a year of rollups; write docs/benchmarks.md.

    uv run python scripts/bench_api.py [--rows 50000000] [--seconds 15] [--clients 8]

The database is ``API_BENCH_DATABASE_URL`` (a DSN whose database this script may fill), or
else an embedded PostgreSQL kept in ``.data/bench-api-pg`` so later runs reuse the data.
Raw datapoints are generated in SQL (``generate_series``): the CSV's 247 GPUs x 10 metrics over
7 days (the default raw retention), one scrape every ``7 days / (rows / 2,470)``, inserted
time-major like the collector writes them into the daily partitions. The maintenance job then
builds the 1-minute and 1-hour rollups of those days, and a year of 1-hour rollups before them is
generated (the 1-minute rollups only cover the raw days: their 90 days would be 320 M rows). The
API runs as its own process (``python -m telemetry_api``, one Hypercorn worker); ``--clients``
keep-alive connections send requests back to back, and each latency is one request's round trip.
The upgrade of an unpartitioned table (migration 0020) is timed on ``--upgrade-rows`` datapoints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
from psycopg2.extensions import parse_dsn
from telemetry_devstack import create_database, drop_database, embedded_server
from telemetry_model import read_samples, to_micros
from telemetry_store import Policy, create_pool, create_range, migrate, run_maintenance, transaction

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"
DOC = ROOT / "docs" / "benchmarks.md"
T0 = datetime(2025, 7, 11, 0, 0, tzinfo=UTC)  # the raw days: T0 .. T0 + RAW_DAYS
RAW_DAYS = 7
ROLLUP_DAYS = 365
METRICS = 10
BENCH_DB = "telemetry_bench_api_v2"
DAY_US = 86_400_000_000


def log(message: str) -> None:
    print(f"[bench:api] {message}", file=sys.stderr, flush=True)


# --- data ---------------------------------------------------------------------------------------


async def _migrate(dsn: str, target: int | None = None) -> None:
    pool = await create_pool(dsn, maxsize=1)
    try:
        await migrate(pool, target=target)
    finally:
        pool.close()
        await pool.wait_closed()


@dataclass
class Data:
    ticks: int
    interval_s: int
    seconds: float

    @property
    def end(self) -> datetime:
        return T0 + timedelta(seconds=(self.ticks - 1) * self.interval_s)


def _secondary_indexes(cur, table: str) -> list[tuple[str, str]]:
    """The indexes of ``table`` but its primary key, as (name, CREATE INDEX ...) to rebuild."""
    cur.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = %s::regclass AND NOT x.indisprimary",
        (table,),
    )
    return [(n, d.replace(" ON ONLY ", " ON ")) for n, d in cur.fetchall()]


def _fill(cur, stream: int, per_tick: int, ticks: int, interval_s: int, started: float) -> None:
    chunk = max(1, 2_000_000 // per_tick)
    for first in range(0, ticks, chunk):
        last = min(first + chunk, ticks) - 1
        cur.execute(
            "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
            " SELECT g.id, %(t0)s + t * %(step)s * interval '1 second', m,"
            "        round((50 + 50 * sin(t / 30.0 + g.id + m))::numeric, 2), %(stream)s,"
            "        t::bigint * %(per_tick)s + (g.id - 1) * 10 + (m - 1)"
            " FROM generate_series(%(first)s, %(last)s) AS t"
            " CROSS JOIN gpus g CROSS JOIN generate_series(1, 10) AS m"
            " ORDER BY t, g.id, m",
            {
                "t0": T0,
                "step": interval_s,
                "stream": stream,
                "per_tick": per_tick,
                "first": first,
                "last": last,
            },
        )
        log(f"  {(last + 1) * per_tick:,} rows ({time.perf_counter() - started:.0f}s)")


def _gpus(cur) -> int:
    gpus = {s.gpu.uuid: s.gpu for s in read_samples(CSV)}
    cur.execute("INSERT INTO streams (name) VALUES ('bench') ON CONFLICT DO NOTHING")
    for g in sorted(gpus.values(), key=lambda g: g.uuid):
        cur.execute(
            "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, driver_version,"
            " first_seen, last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, T0, T0),
        )
    cur.execute("SELECT id FROM streams WHERE name = 'bench'")
    return int(cur.fetchone()[0])


def _rebuild(cur, indexes: list[tuple[str, str]]) -> None:
    cur.execute("SET maintenance_work_mem = '512MB'")
    for name, definition in indexes:
        log(f"  building {name}")
        cur.execute(definition)


async def _raw_partitions(dsn: str) -> None:
    pool = await create_pool(dsn, maxsize=1, timeout=7200)
    try:
        async with transaction(pool) as cur:
            await create_range(
                cur, "telemetry", DAY_US, to_micros(T0), to_micros(T0) + RAW_DAYS * DAY_US
            )
    finally:
        pool.close()
        await pool.wait_closed()


async def _roll_up(dsn: str, now: datetime) -> None:
    pool = await create_pool(dsn, maxsize=1, timeout=7200)
    try:
        report = await run_maintenance(
            pool, Policy(chunk=timedelta(hours=1)), now_us=to_micros(now)
        )
        log(f"  maintenance: {report.rows_1m:,} minute rows, {report.rows_1h:,} hour rows,"
            f" {report.seconds:.0f}s")  # fmt: skip
        async with transaction(pool) as cur:
            lo = to_micros(T0) - ROLLUP_DAYS * DAY_US
            await create_range(cur, "telemetry_1h", 28 * DAY_US, lo, to_micros(T0))
    finally:
        pool.close()
        await pool.wait_closed()


def generate(dsn: str, rows: int) -> Data:
    """Fill the database with ``rows`` raw datapoints over RAW_DAYS days and their rollups, and
    a year of hourly rollups before them (skipped when already there)."""
    asyncio.run(_migrate(dsn))
    per_tick = len({s.gpu.uuid for s in read_samples(CSV)}) * METRICS
    ticks = -(-rows // per_tick)
    interval_s = max(1, RAW_DAYS * 86_400 // ticks)
    data = Data(ticks, interval_s, 0.0)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry")
        (have,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM telemetry_1h WHERE bucket < %s", (T0,))
        (old_hours,) = cur.fetchone()
        if have == ticks * per_tick and old_hours > 0:
            log(f"reusing {have:,} datapoints and {old_hours:,} older hourly rollups")
            conn.close()
            return data
        log(f"generating {ticks * per_tick:,} datapoints ({ticks} scrapes every {interval_s}s)")
        cur.execute("TRUNCATE telemetry, telemetry_1m, telemetry_1h, gpus RESTART IDENTITY")
        cur.execute(
            "UPDATE telemetry_bounds SET rollup_1m_to = NULL, rollup_1h_to = NULL,"
            " sealed_to = '-infinity', accept_from = '-infinity'"
        )
        stream = _gpus(cur)
        asyncio.run(_raw_partitions(dsn))
        # Secondary indexes are rebuilt after the load (faster than maintaining them per row);
        # their definitions come from the catalog, so they are exactly the migrated ones.
        indexes = _secondary_indexes(cur, "telemetry")
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        _fill(cur, stream, per_tick, ticks, interval_s, started)
        _rebuild(cur, indexes)
        cur.execute("UPDATE gpus SET first_seen = %s, last_seen = %s", (T0, data.end))
        cur.execute("UPDATE streams SET next_seq = %s WHERE id = %s", (ticks * per_tick, stream))
        log("  VACUUM ANALYZE telemetry")
        cur.execute("VACUUM ANALYZE telemetry")
        log("  rollups of the raw days (the maintenance job)")
        asyncio.run(_roll_up(dsn, data.end + timedelta(minutes=2)))
        log(f"  a year of hourly rollups before {T0:%Y-%m-%d}")
        indexes = _secondary_indexes(cur, "telemetry_1h")
        for first in range(ROLLUP_DAYS, 0, -30):
            cur.execute(
                "INSERT INTO telemetry_1h (gpu_id, bucket, metric_id, count, min, max, sum, last)"
                " SELECT g.id, h, m, 360, 40 + m, 60 + m, 360 * (50 + m), 50 + m"
                " FROM generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - interval"
                "  '1 hour', interval '1 hour') AS h CROSS JOIN gpus g"
                " CROSS JOIN generate_series(1, 10) AS m ORDER BY h, g.id, m",
                {"lo": T0 - timedelta(days=first), "hi": T0 - timedelta(days=max(first - 30, 0))},
            )
            log(f"    {first} days before ({time.perf_counter() - started:.0f}s)")
        cur.execute("VACUUM ANALYZE telemetry_1m")
        cur.execute("VACUUM ANALYZE telemetry_1h")
        cur.execute("VACUUM ANALYZE gpus")
    conn.close()
    data.seconds = time.perf_counter() - started
    return data


def sizes(dsn: str) -> list[tuple[str, int, int]]:
    """(table, rows, bytes with indexes) of the raw data and each rollup."""
    out = []
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for table in ("telemetry", "telemetry_1m", "telemetry_1h"):
                cur.execute(f"SELECT count(*) FROM {table}")
                (rows,) = cur.fetchone()
                cur.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(name::regclass)), 0)"
                    " FROM telemetry_partitions(%s)",
                    (table,),
                )
                (size,) = cur.fetchone()
                out.append((table, int(rows), int(size)))
    finally:
        conn.close()
    return out


def measure_upgrade(admin: str, rows: int) -> tuple[int, float]:
    """Time migration 0020 on a database of the previous schema holding ``rows`` datapoints."""
    dsn = create_database(admin)
    try:
        asyncio.run(_migrate(dsn, target=10))
        per_tick = len({s.gpu.uuid for s in read_samples(CSV)}) * METRICS
        ticks = -(-rows // per_tick)
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        started = time.perf_counter()
        with conn.cursor() as cur:
            stream = _gpus(cur)
            indexes = _secondary_indexes(cur, "telemetry")
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
            log(f"upgrade: {ticks * per_tick:,} datapoints in the unpartitioned table")
            _fill(cur, stream, per_tick, ticks, 10, started)
            _rebuild(cur, indexes)
            cur.execute("VACUUM ANALYZE telemetry")
            cur.execute("SELECT count(*) FROM telemetry")
            (have,) = cur.fetchone()
        conn.close()
        log("upgrade: migrating")
        began = time.perf_counter()
        asyncio.run(_migrate(dsn))
        return int(have), time.perf_counter() - began
    finally:
        drop_database(admin, parse_dsn(dsn)["dbname"])


def explain(dsn: str, sql: str, params: object) -> str:
    """The executed plan of one query, for the report."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            return "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()


def explain_window(dsn: str, uuid: str, start: datetime) -> str:
    """The executed plan of one window query (the SQL the API runs)."""
    from telemetry_store.reads import window_json_query

    sql, params = window_json_query(uuid, start=start, end=start + timedelta(hours=1), limit=1000)
    return explain(dsn, sql, params)


def explain_latest(dsn: str, uuid: str) -> str:
    """The executed plan of the latest state of one GPU."""
    from telemetry_store.reads import _GPU_STATE

    return explain(dsn, _GPU_STATE, {"uuid": uuid})


# --- the served API and the load -----------------------------------------------------------------


def start_api(dsn: str, clients: int, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The API on a free port it binds itself (API_PORT=0, reported in API_PORT_FILE)."""
    port_file = workdir / "api.port"
    env = {
        **os.environ,
        "API_DATABASE_URL": dsn,
        "API_HOST": "127.0.0.1",
        "API_PORT": "0",
        "API_PORT_FILE": str(port_file),
        "API_POOL_MAX_SIZE": str(clients),
        "API_POOL_MIN_SIZE": str(clients),
        "API_LOG_LEVEL": "WARNING",
        "API_LOG_FORMAT": "text",
    }
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "telemetry_api"], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            port = int(port_file.read_text())
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the API exited at start")
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the API did not become ready")


_CONTENT_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")
_CLOSE = re.compile(rb"(?i)connection:\s*close")


class Connection(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client: the load generator must cost less than the API.

    A protocol rather than streams: the response is collected as it arrives and the request
    wakes once, when the whole body is in (a 150 kB page comes in several reads).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.received = 0
        self.head: bytes | None = None
        self.size = 0  # of head and body, once the head is in
        self.waiter: asyncio.Future[tuple[bytes, bytes]] | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, "127.0.0.1", port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if self.head is None:
            joined = b"".join(self.chunks)
            end = joined.find(b"\r\n\r\n")
            if end < 0:
                self.chunks = [joined]
                return
            self.head = joined[: end + 4]
            match = _CONTENT_LENGTH.search(self.head)
            if match is None:
                self._finish(RuntimeError(f"no content-length in {self.head!r}"))
                return
            self.size = end + 4 + int(match.group(1))
            self.chunks = [joined]
        if self.received >= self.size:
            whole = b"".join(self.chunks)
            head, body = self.head, whole[len(self.head) : self.size]
            rest = whole[self.size :]  # empty: one request at a time
            self.chunks, self.received, self.head = [rest], len(rest), None
            self._finish((head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionError("the server closed the connection"))

    def _finish(self, result: tuple[bytes, bytes] | BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)

    async def get(self, path: str) -> tuple[int, bytes, bool]:
        """One request: (status, body, whether the server keeps the connection open)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head, body = await self.waiter
        return int(head[9:12]), body, _CLOSE.search(head) is None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one local process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(postmaster: int) -> float:
    """CPU of the PostgreSQL server: the postmaster and every process it forked."""
    total = cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def local_postmaster(dsn: str) -> int | None:
    """The PostgreSQL server's pid when it runs on this machine (to measure its CPU)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (backend,) = cur.fetchone()
        with open(f"/proc/{backend}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
    finally:
        conn.close()


@dataclass
class Result:
    name: str
    latencies: list[float]
    seconds: float
    errors: int
    mean_items: float
    cpu_ms: tuple[float | None, float | None, float]  # per request: API, PostgreSQL, load gen

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds


async def run_load(
    name: str,
    port: int,
    make_path: Callable[[random.Random], str],
    clients: int,
    seconds: float,
    pids: tuple[int | None, int | None] = (None, None),
) -> Result:
    latencies: list[float] = []
    items: list[int] = []
    errors = 0

    async def client(n: int, until: float, record: bool) -> None:
        nonlocal errors
        rng = random.Random(n)
        conn = await Connection.open(port)
        try:
            while time.perf_counter() < until:
                path = make_path(rng)
                started = time.perf_counter()
                status, body, keep_alive = await conn.get(path)
                elapsed = time.perf_counter() - started
                if not keep_alive:  # Hypercorn closes after keep_alive_max_requests
                    conn.close()
                    conn = await Connection.open(port)
                if not record:
                    continue
                if status != 200:
                    errors += 1
                latencies.append(elapsed)
                items.append(body.count(b'"time"') or body.count(b'"hostname"'))
        finally:
            conn.close()

    warm = time.perf_counter() + 2
    await asyncio.gather(*(client(n, warm, False) for n in range(clients)))
    api, postmaster = pids
    before = (
        cpu_seconds(api) if api else None,
        server_cpu_seconds(postmaster) if postmaster else None,
        time.process_time(),
    )
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(client(100 + n, until, True) for n in range(clients)))
    elapsed = time.perf_counter() - started
    n = max(len(latencies), 1)
    cpu_ms = (
        (cpu_seconds(api) - before[0]) / n * 1000 if api and before[0] is not None else None,
        (server_cpu_seconds(postmaster) - before[1]) / n * 1000
        if postmaster and before[1] is not None
        else None,
        (time.process_time() - before[2]) / n * 1000,
    )
    return Result(name, latencies, elapsed, errors, statistics.fmean(items) if items else 0, cpu_ms)


def scenarios(uuids: list[str], data: Data) -> dict[str, Callable[[random.Random], str]]:
    span = max((data.ticks - 1) * data.interval_s - 3600, data.interval_s)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    last_hour = data.end.replace(minute=0, second=0, microsecond=0)
    metrics = [s.metric for s in read_samples(CSV)[:METRICS]]

    def window(rng: random.Random) -> str:
        start = T0 + timedelta(seconds=rng.randrange(0, span, data.interval_s))
        end = start + timedelta(hours=1)
        return (
            f"/api/v1/gpus/{rng.choice(uuids)}/telemetry?start_time={start.strftime(fmt)}"
            f"&end_time={end.strftime(fmt)}&limit=1000"
        )

    def month(rng: random.Random) -> str:
        end = last_hour - timedelta(hours=rng.randrange(0, 24 * RAW_DAYS))
        start = end - timedelta(days=30)
        return (
            f"/api/v1/gpus/{rng.choice(uuids)}/telemetry?start_time={start.strftime(fmt)}"
            f"&end_time={end.strftime(fmt)}&step=1h&metric={rng.choice(metrics)}&limit=1000"
        )

    return {
        "one GPU, one-hour raw window, limit 1000": window,
        "one GPU, one metric, 30 days at 1-hour steps": month,
        "latest state of one GPU": lambda rng: f"/api/v1/gpus/{rng.choice(uuids)}",
        "GPU list (247 GPUs)": lambda rng: "/api/v1/gpus",
    }


TARGETS = {
    "one GPU, one-hour raw window, limit 1000": 25.0,
    "one GPU, one metric, 30 days at 1-hour steps": 50.0,
    "latest state of one GPU": 15.0,
    "GPU list (247 GPUs)": 50.0,
}


# --- report ---------------------------------------------------------------------------------------


def cpu_cell(r: Result) -> str:
    return " / ".join("n/a" if x is None else f"{x:.2f}" for x in r.cpu_ms)


def render(
    results: list[Result],
    args: argparse.Namespace,
    data: Data,
    plans: dict[str, str],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
    table_sizes: list[tuple[str, int, int]],
    upgrade: tuple[int, float, tuple[float, ...]] | None,
) -> str:
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in loads)
    rows = {t: n for t, n, _ in table_sizes}
    lines = [
        "## API",
        "",
        "Written by `task bench:api` (`scripts/bench_api.py`); do not edit by hand.",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `task bench:api`"
        f" (`uv run python scripts/bench_api.py --rows {args.rows} --seconds {args.seconds}"
        f" --clients {args.clients}`).",
        "",
        f"- Machine: {os.cpu_count()} cores shared with other work ({platform.machine()},"
        f" Python {platform.python_version()}); PostgreSQL 18 (embedded, default settings),"
        " the API (one Hypercorn worker) and the load generator all on it. Load average"
        f" before the load: {before}; after: {after}.",
        f"- Data: {rows['telemetry']:,} raw datapoints in `telemetry` (the CSV's 247 GPUs x 10"
        f" metrics, one scrape every {data.interval_s} s for {RAW_DAYS} days, in daily"
        f" partitions, inserted time-major as the collector writes them); their"
        f" {rows['telemetry_1m']:,} 1-minute rollups and the 1-hour rollups built by the"
        f" maintenance job; a year of 1-hour rollups before them: {rows['telemetry_1h']:,}"
        " hourly rows in all. VACUUM ANALYZE"
        + (f"; generated in {data.seconds:.0f} s." if data.seconds else "."),
        f"- Load: {args.clients} concurrent keep-alive clients, requests back to back, 2 s warm-up"
        f" then {args.seconds} s measured per scenario; latency is one request's round trip.",
        "",
        "| scenario | requests | p50 ms | p99 ms | target p99 | req/s | items/response | non-200"
        " | CPU ms/request: API / PostgreSQL / load gen |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        target = TARGETS.get(r.name)
        verdict = (
            "-" if target is None
            else f"< {target:.0f} ms: {'met' if r.pct(0.99) < target else 'NOT met'}"
        )  # fmt: skip
        lines.append(
            f"| {r.name} | {len(r.latencies):,} | {r.pct(0.50):.1f} | {r.pct(0.99):.1f}"
            f" | {verdict} | {r.rps:.0f} | {r.mean_items:.0f} | {r.errors} | {cpu_cell(r)} |"
        )
    if loads[0][0] > (os.cpu_count() or 1):
        lines += [
            "",
            f"The load average was {loads[0][0]:.2f} on {os.cpu_count()} cores when the load"
            " began: the latencies include waiting for the CPU behind other work, so the p99"
            " targets cannot be judged from this run. The CPU each request costs (last column)"
            " does not depend on that wait.",
        ]
    lines += [
        "",
        "With 8 clients back to back, a request mostly waits for the ones ahead of it: p50 is"
        " about 8 / (req/s). The API, PostgreSQL and the load generator share the cores, so"
        " what bounds the rate is the CPU one request costs in all three (last column;"
        ' PostgreSQL\'s is its postmaster and every process it forked, "n/a" for a remote'
        " server), and on a machine shared with other work, what the others leave. The"
        " 30-day query reads 720 hourly rollup rows of one metric (index-only, the"
        " partitions of those 30 days only) and the raw datapoints of the last, unfinished"
        " hour; the latest state reads the newest partitions first and stops at the first"
        " row of each metric.",
        "",
        "### Disk per stored datapoint",
        "",
        "| table | rows | bytes with indexes | bytes per row |",
        "| --- | ---: | ---: | ---: |",
    ]
    for table, n, size in table_sizes:
        lines.append(f"| `{table}` | {n:,} | {size:,} | {size / max(n, 1):.1f} |")
    lines += [
        "",
        "Sizes are of freshly loaded, vacuumed partitions (`pg_total_relation_size`: heap,"
        " indexes, TOAST, free space and visibility maps). A rollup row stands for every"
        " datapoint of its series in its minute or hour; docs/deployment.md turns these into"
        " a volume size.",
        "",
    ]
    if upgrade is not None:
        n, seconds, load = upgrade
        lines += [
            "### Upgrade of an unpartitioned table (migration 0020)",
            "",
            f"{n:,} datapoints in the previous schema's `telemetry` (indexes built, vacuumed)"
            f" migrated in {seconds:.1f} s: {seconds * 10_000_000 / max(n, 1):.1f} s per"
            " 10 M datapoints (load average before: "
            + " ".join(f"{x:.2f}" for x in load)
            + "). The table is attached whole as one partition: no row is copied; the time is"
            " one scan for its bounds and the new primary key (stream_id, seq, ts) built on"
            " it. The migration holds ACCESS EXCLUSIVE on `telemetry` for all of"
            " it (docs/deployment.md).",
            "",
        ]
    for title, plan in plans.items():
        lines += [f"{title} (`EXPLAIN (ANALYZE, BUFFERS)`; the SQL the API runs):", "", "```"]
        lines += [plan, "```", ""]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace the "## API" section of docs/benchmarks.md (other sections are left alone)."""
    text = DOC.read_text("utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## API\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text, "utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--upgrade-rows", type=int, default=10_000_000, help="0 skips it")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data" / "bench-api-pg",
        help="the embedded server's data directory (kept for the next run)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    with ExitStack() as stack:
        dsn = os.environ.get("API_BENCH_DATABASE_URL")
        admin = dsn
        if not dsn:
            admin = stack.enter_context(embedded_server(args.data_dir))
            dsn = create_database(admin, BENCH_DB, exist_ok=True)
        data = generate(dsn, args.rows)
        table_sizes = sizes(dsn)
        log(
            "sizes: "
            + ", ".join(f"{t} {n:,} rows {b / max(n, 1):.1f} B/row" for t, n, b in table_sizes)
        )
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT uuid, id FROM gpus ORDER BY uuid")
            ids = dict(cur.fetchall())
        conn.close()
        uuids = sorted(ids)
        postmaster = local_postmaster(dsn)
        from telemetry_model import METRICS_BY_NAME
        from telemetry_store import Window

        last_hour = data.end.replace(minute=0, second=0, microsecond=0)
        month_window = Window(
            ids[uuids[0]],
            last_hour - timedelta(days=30),
            last_hour,
            (METRICS_BY_NAME["DCGM_FI_DEV_GPU_UTIL"].id,),
        )
        plans = {
            "The one-hour window's plan": explain_window(dsn, uuids[0], T0 + timedelta(days=3)),
            "The latest state's plan": explain_latest(dsn, uuids[0]),
        }
        load_before = os.getloadavg()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
        api, port = start_api(dsn, args.clients, workdir)
        try:
            results = []
            cases = [(name, make, args.clients) for name, make in scenarios(uuids, data).items()]
            for name, make_path, clients in cases:
                log(f"load: {name}")
                result = asyncio.run(
                    run_load(name, port, make_path, clients, args.seconds, (api.pid, postmaster))
                )
                log(
                    f"  p50 {result.pct(0.5):.1f} ms, p99 {result.pct(0.99):.1f} ms,"
                    f" {result.rps:.0f} req/s, {result.errors} non-200,"
                    f" CPU ms/request {cpu_cell(result)} (API / PostgreSQL / load generator)"
                    f", load {os.getloadavg()[0]:.2f}"
                )
                results.append(result)
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(30)
        load_after = os.getloadavg()
        # The 30-day query as the API runs it: the rollup segments, then the plan.
        pool_sql = asyncio.run(_month_plan(dsn, month_window))
        plans["The 30-day, 1-hour-step query's plan"] = pool_sql
        upgrade = None
        if args.upgrade_rows and admin is not None:
            load = os.getloadavg()
            n, seconds = measure_upgrade(admin, args.upgrade_rows)
            log(f"upgrade: {n:,} datapoints in {seconds:.1f}s")
            upgrade = (n, seconds, load)
    section = render(results, args, data, plans, (load_before, load_after), table_sizes, upgrade)
    print(section)
    if not args.no_write:
        write_section(section)
        log(f"wrote the API section of {DOC.relative_to(ROOT)}")
    return 0


async def _month_plan(dsn: str, window: object) -> str:
    """The plan of the 30-day query with the sources ``read_buckets_json`` picks."""
    from telemetry_store import cover, cursor, rollup_state
    from telemetry_store.reads import _window_us, buckets_json_query

    pool = await create_pool(dsn, maxsize=1)
    try:
        async with cursor(pool) as cur:
            lo, hi = _window_us(window, None)  # type: ignore[arg-type]
            state = await rollup_state(cur, lo, hi)
            segments = cover(lo, hi, step_us=3_600_000_000, origin_us=lo, state=state)
            sql, params = buckets_json_query(
                window,  # type: ignore[arg-type]
                step=timedelta(hours=1),
                origin=window.start,  # type: ignore[attr-defined]
                aggregate="avg",
                limit=1000,
                max_rows=1_000_000,
                segments=segments,
            )
            await cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            return "\n".join(r[0] for r in await cur.fetchall())
    finally:
        pool.close()
        await pool.wait_closed()


if __name__ == "__main__":
    raise SystemExit(main())

"""The maintenance job as it runs in production: its own process, killed for real mid-run."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg2
from telemetry_api import Settings, create_app
from telemetry_api.maintenance import MaintenanceSettings, run_every
from telemetry_model import read_samples, to_micros
from telemetry_store import GpuSighting, ensure_streams, store_datapoints, transaction, upsert_gpus

from conftest import CSV_PATH

SAMPLES = read_samples(CSV_PATH)


async def fill(pool, start: datetime, minutes: int, gpus: int = 20) -> int:
    """The CSV's values for ``gpus`` GPUs, one scrape every 10 s from ``start``."""
    rows = [s for s in SAMPLES if s.gpu.uuid in sorted({x.gpu.uuid for x in SAMPLES})[:gpus]]
    async with transaction(pool) as cur:
        await ensure_streams(cur, ["s"])
        await upsert_gpus(
            cur,
            sorted(
                {
                    s.gpu.uuid: GpuSighting(
                        s.gpu.uuid,
                        s.gpu.hostname,
                        s.gpu.index,
                        s.gpu.device,
                        s.gpu.model,
                        None,
                        0,
                        0,
                    )
                    for s in rows
                }.values(),
                key=lambda g: g.uuid,
            ),
        )
    seq, total = 0, 0
    for k in range(0, minutes * 60, 10):
        points, times = [], []
        for i, s in enumerate(rows):
            ts = to_micros(start) + k * 1_000_000 + i * 1000
            points.append(orjson.dumps({
                "stream": "s", "seq": seq, "ts": ts, "metric": s.metric,
                "value": s.value + k % 7, "uuid": s.gpu.uuid,
                "container": None, "pod": None, "namespace": None,
            }))  # fmt: skip
            times.append(ts)
            seq += 1
        async with transaction(pool) as cur:
            total += (await store_datapoints(cur, points, times)).inserted
    return total


def job(dsn: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetry_api.maintenance"],
        env={
            **os.environ,
            "MAINTENANCE_DATABASE_URL": dsn,
            "MAINTENANCE_LOG_FORMAT": "text",
            **{f"MAINTENANCE_{k.upper()}": v for k, v in env.items()},
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def query(conn, sql: str, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


async def until(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


_MISMATCH = """
SELECT count(*) FROM {table} r FULL JOIN (
    SELECT gpu_id, metric_id, date_bin('{width}', ts, 'epoch') AS b, count(*) AS n,
           min(value) AS lo, max(value) AS hi, sum(value) AS s
    FROM telemetry WHERE ts < %s GROUP BY 1, 2, 3) t
  ON (t.gpu_id, t.metric_id, t.b) = (r.gpu_id, r.metric_id, r.bucket)
WHERE r.count IS DISTINCT FROM t.n OR r.min IS DISTINCT FROM t.lo
   OR r.max IS DISTINCT FROM t.hi OR abs(r.sum - t.s) > 1e-6 * abs(t.s)
"""


async def test_a_killed_rollup_run_loses_and_doubles_nothing(db, fresh_database_url):
    now = datetime.now(UTC)
    start = (now - timedelta(hours=3)).replace(second=0, microsecond=0)
    stored = await fill(db, start, 120)
    watch = psycopg2.connect(fresh_database_url)
    watch.autocommit = True
    holder = psycopg2.connect(fresh_database_url)
    proc = job(fresh_database_url, chunk_minutes="1")
    try:
        # Let it commit a few chunks, then hold the watermark's row: the next chunk writes
        # its rollup rows and waits, uncommitted, to move the watermark. Kill it there.
        first = to_micros(start)

        def advanced():
            (row,) = query(watch, "SELECT extract(epoch FROM rollup_1m_to) * 1e6"
                                  " FROM telemetry_bounds")  # fmt: skip
            return row[0] is not None and row[0] >= first + 3 * 60_000_000

        await until(advanced, what="three chunks committed")
        with holder.cursor() as cur:
            cur.execute("SELECT rollup_1m_to FROM telemetry_bounds FOR UPDATE")
            (held,) = cur.fetchone()

        def blocked():
            rows = query(
                watch,
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'UPDATE telemetry_bounds SET rollup_1m_to%%'",
            )
            return rows[0][0] if rows else None

        backend = await until(blocked, what="the job waiting on the watermark")
        (pending,) = query(watch, "SELECT count(*) FROM telemetry_1m WHERE bucket >= %s", held)
        assert pending[0] == 0  # its rows are not visible: uncommitted
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        holder.rollback()  # the orphaned backend finishes its statement, finds its client gone
        await until(
            lambda: not query(watch, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", backend),
            what="the killed job's backend to end",
        )
        # Nothing past the watermark it had committed, nothing lost before it.
        ((to,),) = query(watch, "SELECT rollup_1m_to FROM telemetry_bounds")
        assert to == held
        assert query(watch, "SELECT count(*) FROM telemetry_1m WHERE bucket >= %s", to) == [(0,)]
        assert query(watch, _MISMATCH.format(table="telemetry_1m", width="1 minute"), to) == [(0,)]
        # The next run takes over: the lock is free (the session died), and the result is
        # the raw data's aggregation, every datapoint once.
        again = job(fresh_database_url)
        out, _ = again.communicate(timeout=120)
        assert again.returncode == 0, out.decode()
        assert b"skipped" not in out
        ((to_1m, to_1h),) = query(watch, "SELECT rollup_1m_to, rollup_1h_to FROM telemetry_bounds")
        assert to_1m > start + timedelta(minutes=120)
        for table, width, bound in (
            ("telemetry_1m", "1 minute", to_1m),
            ("telemetry_1h", "1 hour", to_1h),
        ):
            assert query(watch, _MISMATCH.format(table=table, width=width), bound) == [(0,)]
            (total,) = query(watch, f"SELECT sum(count) FROM {table}")
            assert total[0] == stored, table
        ((runs, failures, success),) = query(
            watch, "SELECT runs, failures, last_success FROM maintenance_status"
        )
        assert (runs, failures) == (1, 0) and success is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
        holder.close()
        watch.close()


async def test_runs_at_once_take_turns_through_the_lock(db, fresh_database_url):
    procs = [job(fresh_database_url) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    conn = psycopg2.connect(fresh_database_url)
    try:
        ((runs,),) = query(conn, "SELECT runs FROM maintenance_status")
        skipped = sum("skipped" in o for o in outs)
        assert runs + skipped == 3 and runs >= 1
        # Partitions exist once each, whoever created them.
        (names,) = query(conn, "SELECT array_agg(name) FROM telemetry_partitions('telemetry')")
        assert len(names[0]) == len(set(names[0])) >= 4
    finally:
        conn.close()


async def test_the_api_exports_the_jobs_metrics_and_can_run_it(db, fresh_database_url):
    settings = Settings(database_url=fresh_database_url, maintenance_interval=3600)
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()

        async def scraped():
            body = (await (await client.get("/metrics")).get_data()).decode()
            line = next(
                (
                    ln
                    for ln in body.splitlines()
                    if ln.startswith("telemetry_maintenance_last_success_timestamp_seconds ")
                ),
                None,
            )
            return body if line is not None and float(line.split()[1]) > 0 else None

        deadline = time.monotonic() + 60
        body = None
        while body is None and time.monotonic() < deadline:
            body = await scraped()
            if body is None:
                await asyncio.sleep(0.2)  # the run in the app, then the next refresh
        assert body is not None, "the in-app run never showed as a success"
        value = float(
            next(
                ln for ln in body.splitlines()
                if ln.startswith("telemetry_maintenance_last_success_timestamp_seconds ")
            ).split()[1]
        )  # fmt: skip
        assert abs(value - time.time()) < 120
        assert 'telemetry_maintenance_rollup_lag_seconds{resolution="1m"}' in body
        assert 'telemetry_maintenance_partitions_total{action="created"}' in body


async def test_a_database_outage_is_one_warning_per_run_and_the_loop_goes_on(caplog):
    # A port bound but never listening: every connection is refused, as by a stopped server.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dsn = f"host=127.0.0.1 port={held.getsockname()[1]} dbname=x user=x connect_timeout=2"
        stop = asyncio.Event()
        caplog.set_level(logging.INFO, logger="telemetry_api.maintenance")
        loop = asyncio.create_task(run_every(dsn, MaintenanceSettings().policy(), 0.05, stop))

        def failed_runs() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "database unavailable" in r.getMessage()]

        deadline = time.monotonic() + 60
        while len(failed_runs()) < 3 and time.monotonic() < deadline and not loop.done():
            await asyncio.sleep(0.05)
        stop.set()
        assert await asyncio.wait_for(loop, 30) == 0
    runs = failed_runs()
    assert len(runs) >= 3, caplog.text
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in runs)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

"""The latest state of one GPU (``find_gpu_json``, as GET /api/v1/gpus/{id} reads it) on days of
daily partitions: every catalog metric probed (a GPU row that does not list its metrics) against
the metrics the GPU row lists (``gpus.metric_ids``).

    uv run python scripts/bench_latest_state.py [--days 7] [--interval 600] [--rounds 5]

A throwaway embedded PostgreSQL; the CSV's 247 GPUs, its ten metrics every ``--interval``
seconds over ``--days`` days (one partition a day, and the maintenance job's three ahead).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from telemetry_devstack import create_database, embedded_server
from telemetry_model import CSV_METRICS, METRICS, read_samples, to_micros
from telemetry_store import (
    GpuSighting,
    create_pool,
    cursor,
    ensure_streams,
    find_gpu_json,
    migrate,
    transaction,
    upsert_gpus,
)
from telemetry_store.partitions import create_range
from telemetry_store.reads import _GPU_STATE, _execute_prepared

CSV = Path(__file__).resolve().parent.parent / "data" / "dcgm_metrics_20250718_134233.csv"
DAY_US = 86_400_000_000
# The read before the GPU row listed its metrics: every metric of the metrics table.
EVERY_METRIC = _GPU_STATE.replace(
    " FROM unnest(coalesce(g.metric_ids, ARRAY(SELECT id FROM metrics))) AS m(id)",
    " FROM metrics m",
)
assert EVERY_METRIC != _GPU_STATE


async def read_state(cur: object, sql: str, uuid: str) -> dict[str, object]:
    """One GPU's latest state through ``sql`` (``find_gpu_json``'s when it is its own)."""
    if sql == _GPU_STATE:
        return dict(orjson.loads(await find_gpu_json(cur, uuid) or ""))  # type: ignore[arg-type]
    await _execute_prepared(cur, sql, {"uuid": uuid})  # type: ignore[arg-type]
    (text,) = await cur.fetchone()  # type: ignore[attr-defined]
    return dict(orjson.loads(text))


async def run(dsn: str, days: int, interval: int, rounds: int) -> None:
    pool = await create_pool(dsn, maxsize=1, timeout=3600)
    await migrate(pool)
    gpus = sorted({s.gpu.uuid: s.gpu for s in read_samples(CSV)}.values(), key=lambda g: g.uuid)
    names = tuple(m.name for m in CSV_METRICS)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    t0 = now - timedelta(days=days)
    async with transaction(pool) as cur:
        await ensure_streams(cur, ["bench"])
        sightings = [
            GpuSighting(
                g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version,
                to_micros(t0), to_micros(now), metrics=names,
            )
            for g in gpus
        ]  # fmt: skip
        await upsert_gpus(cur, sightings)
        await create_range(cur, "telemetry", DAY_US, to_micros(t0), to_micros(now) + 4 * DAY_US)
        ids = [m.id for m in CSV_METRICS]
        started = time.perf_counter()
        await cur.execute(
            "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
            " SELECT g.id, %(t0)s + t * %(step)s * interval '1 second', m, (t %% 100)::float8,"
            "  (SELECT id FROM streams WHERE name = 'bench'),"
            "  row_number() OVER (ORDER BY t, g.id, m)"
            " FROM generate_series(0, %(ticks)s - 1) AS t CROSS JOIN gpus g"
            " CROSS JOIN unnest(%(ids)s::smallint[]) AS m",
            {"t0": t0, "step": interval, "ticks": days * 86_400 // interval, "ids": ids},
        )
        rows = cur.rowcount
    async with cursor(pool) as cur:
        await cur.execute("VACUUM ANALYZE telemetry")
        await cur.execute("VACUUM ANALYZE gpus")
        await cur.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
        )
        (partitions,) = await cur.fetchone()
        await cur.execute("SELECT count(*) FROM metrics")
        (catalog,) = await cur.fetchone()
    print(
        f"{rows:,} datapoints, {len(gpus)} GPUs, {partitions} partitions,"
        f" {catalog} metrics in the catalog ({len(METRICS)} in telemetry_model),"
        f" loaded in {time.perf_counter() - started:.0f}s; {os.cpu_count()} cores,"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    for label, sql in (
        ("before: every metric of the catalog", EVERY_METRIC),
        ("after: the metrics the GPU row lists", _GPU_STATE),
    ):
        per_read: list[float] = []
        async with cursor(pool) as cur:
            for r in range(rounds + 1):
                begin = time.perf_counter()
                for g in gpus:
                    state = await read_state(cur, sql, g.uuid)
                    assert len(state["metrics"]) == len(names), state  # type: ignore[arg-type]
                if r:  # the first round warms the cache and prepares the statement
                    per_read.append((time.perf_counter() - begin) / len(gpus) * 1000)
        print(
            f"{label}: {statistics.median(per_read):.2f} ms per read (median of {rounds}"
            f" rounds over {len(gpus)} GPUs; min {min(per_read):.2f}, max {max(per_read):.2f});"
            f" load average {os.getloadavg()[0]:.2f}"
        )
    pool.close()
    await pool.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--interval", type=int, default=600, help="seconds between scrapes")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-latest-") as tmp,
        embedded_server(Path(tmp) / "pgdata", keep=False) as admin,
    ):
        asyncio.run(run(create_database(admin), args.days, args.interval, args.rounds))


if __name__ == "__main__":
    main()

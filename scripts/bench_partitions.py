"""The partitioned store against the unpartitioned one end to end; a partition dropped under ingest.

Runs the whole stack as processes (``telemetry_devstack.Stack``) on the embedded PostgreSQL (or
``--database-url``) with unlimited streamer rate, lets it warm up, then measures datapoints
stored per second in PostgreSQL and the broker's consumer lag over a fixed window. The result is
printed and written into the "Pipeline: partitioned against unpartitioned" section of
``docs/benchmarks.md``. (Freshness, throughput and the insert's ceiling: ``bench_pipeline.py``.)

Each round runs the stack twice on fresh databases, alternating: once as this tree is (the
time-partitioned ``telemetry``), once as ``--baseline`` was (the unpartitioned table; its
sources are taken with ``git archive`` and put first on the services' PYTHONPATH). Then, with
the partitioned table under the same load, a day's partition of ``--drop-rows`` old datapoints
is rolled up and dropped by the maintenance job while a probe stores small batches back to
back and records each one's latency.

    uv run task bench:partitions -- --streamers 2 --collectors 2 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from telemetry_devstack import Stack, StackConfig, create_database, embedded_server
from telemetry_store import (
    Policy,
    create_pool,
    cursor,
    ensure_streams,
    run_maintenance,
    store_datapoints,
    transaction,
)

ROOT: Final = Path(__file__).resolve().parent.parent
CSV: Final = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"
DOC: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "## Pipeline: partitioned against unpartitioned"


async def stored(dsn: str) -> int:
    """Rows in the telemetry table (an exact count)."""
    pool = await create_pool(dsn, maxsize=1)
    try:
        async with cursor(pool) as cur:
            await cur.execute("SELECT count(*) FROM telemetry")
            row = await cur.fetchone()
            return int(row[0])
    finally:
        pool.close()
        await pool.wait_closed()


async def lag(broker_url: str, topic: str) -> int:
    """Records not yet acked by the collectors' group."""
    async with aiohttp.ClientSession() as http, http.get(f"{broker_url}/v1/topics/{topic}") as r:
        body = await r.json()
    return sum(int(g.get("lag", 0)) for g in body.get("groups", []))


def baseline_tree(ref: str, into: Path) -> str:
    """The sources of ``ref`` (packages and services) unpacked under ``into``; their PYTHONPATH."""
    tar = subprocess.run(
        ["git", "archive", "--format=tar", ref, "packages", "services"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return os.pathsep.join(str(p) for p in sorted(into.glob("*/*/src")))


def default_baseline() -> str:
    """The commit before migration 0020 (telemetry partitioned) was added."""
    added = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--diff-filter=A", "--",
         "packages/store/src/telemetry_store/migrations/0020_partition_telemetry.sql"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return f"{added}^" if added else "HEAD"


def migrate_with(dsn: str, pythonpath: str | None) -> None:
    """Migrate ``dsn`` with this tree's code, or the baseline's (its PYTHONPATH)."""
    code = (
        "import asyncio, sys\n"
        "from telemetry_store import create_pool, migrate\n"
        "async def main():\n"
        "    pool = await create_pool(sys.argv[1], maxsize=1)\n"
        "    await migrate(pool)\n"
        "    pool.close(); await pool.wait_closed()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    subprocess.run([sys.executable, "-c", code, dsn], check=True, env=env)


async def measure(
    args: argparse.Namespace, dsn: str, data_dir: Path, pythonpath: str | None = None
) -> dict[str, float]:
    """Start the stack, warm up, measure the window, stop."""
    migrate_with(dsn, pythonpath)
    stack = Stack(
        StackConfig(
            database_url=dsn,
            data_dir=data_dir,
            csv_path=CSV,
            streamers=args.streamers,
            collectors=args.collectors,
            api_port=0,
            rate=0,
            log_format="json",
            maintenance_interval=0,
            extra_env={
                "COLLECTOR_WORKERS": str(args.workers),
                **({"PYTHONPATH": pythonpath} if pythonpath else {}),
            },
        ),
        sink=None,
    )
    await stack.start()
    try:
        assert stack.broker is not None
        await asyncio.sleep(args.warmup)  # let the pipeline reach steady state
        n0, t0 = await stored(dsn), time.perf_counter()
        await asyncio.sleep(args.seconds)  # the measured window
        n1, t1 = await stored(dsn), time.perf_counter()
        backlog = await lag(stack.broker.url, "telemetry")
    finally:
        await stack.stop()
    return {"stored_per_s": (n1 - n0) / (t1 - t0), "stored": n1, "lag": backlog}


async def _old_partition(dsn: str, rows: int) -> None:
    """A day ten days back holding ``rows`` datapoints, to be rolled up and dropped."""
    from telemetry_store import create_range

    pool = await create_pool(dsn, maxsize=1, timeout=3600)
    try:
        day = (time.time_ns() // 1000) // 86_400_000_000 * 86_400_000_000 - 10 * 86_400_000_000
        async with transaction(pool) as cur:
            await create_range(cur, "telemetry", 86_400_000_000, day, day + 1)
            await ensure_streams(cur, ["old"])
            await cur.execute(
                "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen,"
                " last_seen) SELECT 'GPU-old-' || g, 'old', g, 'nvidia0', 'H100', now(), now()"
                " FROM generate_series(0, 49) g ON CONFLICT DO NOTHING"
            )
            await cur.execute(
                "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
                " SELECT g.id, 'epoch'::timestamptz + (%(day)s + i * 86400000000::bigint"
                " / %(rows)s) * interval '1 microsecond', 1 + i %% 10, i %% 97,"
                " (SELECT id FROM streams WHERE name = 'old'), i"
                " FROM generate_series(0, %(rows)s - 1) i"
                " JOIN gpus g ON g.uuid = 'GPU-old-' || (i / 10 %% 50)",
                {"day": day, "rows": rows},
            )
            await cur.execute("ANALYZE telemetry")
    finally:
        pool.close()
        await pool.wait_closed()


async def _probe(dsn: str, stop: asyncio.Event, samples: list[tuple[float, float]]) -> None:
    """Store 100-datapoint batches back to back; record (start, seconds) of each."""
    pool = await create_pool(dsn, maxsize=1)
    try:
        async with transaction(pool) as cur:
            await ensure_streams(cur, ["probe"])
            await cur.execute("SELECT uuid FROM gpus WHERE hostname <> 'old' LIMIT 1")
            (uuid,) = await cur.fetchone()
        seq = 0
        while not stop.is_set():
            now_us = time.time_ns() // 1000
            encoded = [
                orjson.dumps({"stream": "probe", "seq": seq + i, "ts": now_us + i,
                              "metric": "DCGM_FI_DEV_GPU_TEMP", "value": 1.0, "uuid": uuid,
                              "container": None, "pod": None, "namespace": None})
                for i in range(100)
            ]  # fmt: skip
            began = time.perf_counter()
            async with transaction(pool) as cur:
                await store_datapoints(cur, encoded, [now_us + i for i in range(100)])
            samples.append((began, time.perf_counter() - began))
            seq += 100
            await asyncio.sleep(0.01)
    finally:
        pool.close()
        await pool.wait_closed()


async def measure_drop(args: argparse.Namespace, dsn: str, data_dir: Path) -> dict[str, Any]:
    """Roll up and drop an old day's partition under ingest; probe the store latency."""
    migrate_with(dsn, None)
    await _old_partition(dsn, args.drop_rows)
    stack = Stack(
        StackConfig(
            database_url=dsn,
            data_dir=data_dir,
            csv_path=CSV,
            streamers=args.streamers,
            collectors=args.collectors,
            api_port=0,
            rate=0,
            log_format="json",
            maintenance_interval=0,
            extra_env={"COLLECTOR_WORKERS": str(args.workers)},
        ),
        sink=None,
    )
    await stack.start()
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    try:
        await asyncio.sleep(args.warmup)
        probe = asyncio.create_task(_probe(dsn, stop, samples))
        await asyncio.sleep(10)
        pool = await create_pool(dsn, maxsize=1, timeout=3600)
        try:
            began = time.perf_counter()
            report = await run_maintenance(pool, Policy())
            ended = time.perf_counter()
        finally:
            pool.close()
            await pool.wait_closed()
        await asyncio.sleep(10)
        stop.set()
        await probe
    finally:
        await stack.stop()
    quiet = [d for t, d in samples if t < began - 1]
    during = [d for t, d in samples if began <= t <= ended]
    # Batches that started during a drop or ended while one ran.
    at_drops = [d for t, d in samples for lo, hi in report.drop_windows if lo - d <= t <= hi]
    return {
        "dropped": report.dropped,
        "drop_seconds": report.drop_seconds,
        "detach_seconds": report.detach_seconds,
        "run_seconds": ended - began,
        "rows_1m": report.rows_1m,
        "quiet_max_ms": max(quiet, default=0) * 1000,
        "quiet_p50_ms": statistics.median(quiet) * 1000 if quiet else 0,
        "during_max_ms": max(during, default=0) * 1000,
        "drops_max_ms": max(at_drops, default=0) * 1000,
        "at_drops": len(at_drops),
        "probes": len(samples),
    }


def machine() -> str:
    """CPU count and model, memory, kernel."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return f"{os.cpu_count()} CPUs ({model}), {mem_kib / 2**20:.1f} GiB RAM, {platform.release()}"


def write_section(text: str, heading: str = SECTION) -> None:
    """Replace the section under ``heading`` of docs/benchmarks.md (or append it)."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc.rstrip("\n") + "\n")


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streamers", type=int, default=2)
    p.add_argument("--collectors", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="worker loops per collector")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2, help="runs of each schema, alternating")
    p.add_argument("--baseline", help="git ref of the unpartitioned schema (default: before 0020)")
    p.add_argument("--drop-rows", type=int, default=2_000_000, help="0 skips the drop test")
    p.add_argument("--database-url", help="PostgreSQL admin DSN instead of the embedded server")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    baseline = args.baseline or default_baseline()
    started = dt.datetime.now(dt.UTC)
    runs: dict[str, list[tuple[float, float, tuple[float, ...]]]] = {"partitioned": [],
                                                                       "baseline": []}  # fmt: skip
    drop: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        pythonpath = baseline_tree(baseline, Path(tmp) / "baseline")

        def one(admin: str) -> None:
            nonlocal drop
            for r in range(args.rounds):
                order = ("baseline", "partitioned") if r % 2 == 0 else ("partitioned", "baseline")
                for kind in order:
                    load = os.getloadavg()
                    dsn = create_database(admin)
                    result = asyncio.run(
                        measure(args, dsn, Path(tmp) / f"{kind}-{r}",
                                pythonpath if kind == "baseline" else None)
                    )  # fmt: skip
                    runs[kind].append((result["stored_per_s"], result["lag"], load))
                    print(f"{kind} round {r}: {result['stored_per_s']:,.0f} stored/s"
                          f" (load {load[0]:.2f})", flush=True)  # fmt: skip
            if args.drop_rows:
                dsn = create_database(admin)
                drop = asyncio.run(measure_drop(args, dsn, Path(tmp) / "drop"))
                drop["load"] = os.getloadavg()
                print(f"drop: {drop}", flush=True)

        if args.database_url:
            one(args.database_url)
        else:
            with embedded_server(Path(tmp) / "pg", keep=False) as admin:
                one(admin)
    command = "uv run task bench:partitions -- " + " ".join(
        f"--{k} {v}"
        for k, v in (
            ("streamers", args.streamers),
            ("collectors", args.collectors),
            ("workers", args.workers),
            ("seconds", args.seconds),
            ("rounds", args.rounds),
            ("drop-rows", args.drop_rows),
        )
    )
    med = {k: statistics.median(x[0] for x in v) for k, v in runs.items()}
    ratio = med["partitioned"] / med["baseline"] if med["baseline"] else float("nan")
    rows = []
    for kind in ("baseline", "partitioned"):
        for i, (rate, backlog, load) in enumerate(runs[kind]):
            rows.append(
                f"| {kind} | {i + 1} | {args.streamers} | {args.collectors} | {args.workers}"
                f" | {rate:,.0f} | {backlog:,.0f} | {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} |"
            )
    table = "\n".join(rows)
    header = (
        "| schema | run | streamers | collectors | workers each | stored datapoints/s"
        " | consumer lag at the end | load before |"
    )
    drop_text = ""
    if drop is not None:
        slowest = max(drop["drop_seconds"], default=0.0)
        k = drop["drop_seconds"].index(slowest) if drop["drop_seconds"] else 0
        detach = drop["detach_seconds"][k] if drop["detach_seconds"] else 0.0
        drop_text = f"""
Retention under ingest: a day's partition of {args.drop_rows:,} datapoints ten days old, with the
stack above storing at full speed. One maintenance run rolled it up ({drop["rows_1m"]:,} minute
rows) and dropped it (`DETACH ... CONCURRENTLY`, then `DROP TABLE`): dropped
{", ".join(drop["dropped"]) or "nothing"}; the slowest drop took {slowest:.3f} s (target under
1 s: {"met" if slowest < 1 else "NOT met"}), of which {detach:.3f} s was the detach waiting for
the insert transactions in flight (it makes none of them wait), {slowest - detach:.3f} s the
`DROP TABLE`; the whole run {drop["run_seconds"]:.1f} s. A probe
stored 100-datapoint batches back to back ({drop["probes"]:,} batches): median
{drop["quiet_p50_ms"]:.1f} ms and longest {drop["quiet_max_ms"]:.1f} ms before the run; longest
{drop["drops_max_ms"]:.1f} ms of the {drop["at_drops"]} that overlapped a drop, and
{drop["during_max_ms"]:.1f} ms of all during the run (which also rolled up the old day and moved
the bounds under the ingest lock). Load average after:
{" ".join(f"{x:.2f}" for x in drop["load"])}.
"""
    text = f"""{SECTION}

Written by `task bench:partitions` (`scripts/bench_partitions.py`); do not edit by hand.

- Date: {started:%Y-%m-%d %H:%M} UTC; command: `{command}`
- Machine: {machine()}; the load average (1, 5, 15 min) before each run is in the table
- Setup: the whole stack as processes on one machine (broker with fsync on every publish,
  embedded PostgreSQL 18 with default settings, unlimited streamer rate), {args.warmup:.0f} s
  warm-up, then datapoints stored in PostgreSQL counted over {args.seconds:.0f} s, on a fresh
  database each run. "baseline" is the unpartitioned table of `{baseline}` (its code, migrated
  by it), "partitioned" this tree: daily partitions, the bounds read under a shared advisory
  lock per insert transaction, the partition check, the late-minute marks.

{header}
|---|---:|---:|---:|---:|---:|---:|---|
{table}

Median stored datapoints/s: partitioned {med["partitioned"]:,.0f}, baseline {med["baseline"]:,.0f}:
{ratio:.2f}x (target within 10 %: {"met" if ratio >= 0.9 else "NOT met"}).
{drop_text}
Everything (streamers, broker, collectors, PostgreSQL and the measuring process) shares the same
{os.cpu_count()} cores with whatever else the machine runs, so this is the pipeline's throughput on
one small, shared machine, not a per-part ceiling: the broker alone is measured in the Broker
section. Runs alternate between the schemas so that a change in the machine's load weighs on both.
"""
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote the {SECTION!r} section of {DOC}")


if __name__ == "__main__":
    main()

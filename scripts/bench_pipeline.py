"""End-to-end pipeline throughput: streamers -> broker -> collectors -> PostgreSQL.

Runs the whole stack as processes (``telemetry_devstack.Stack``) on the embedded PostgreSQL (or
``--database-url``) with unlimited streamer rate, lets it warm up, then measures datapoints
stored per second in PostgreSQL and the broker's consumer lag over a fixed window. The result is
printed and written into the "Pipeline" section of ``docs/benchmarks.md``.

    uv run task bench:pipeline -- --streamers 2 --collectors 2 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Final

import aiohttp
from telemetry_devstack import Stack, StackConfig, create_database, embedded_server
from telemetry_store import create_pool, cursor, migrate

ROOT: Final = Path(__file__).resolve().parent.parent
CSV: Final = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"
DOC: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "## Pipeline"


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


async def measure(args: argparse.Namespace, dsn: str, data_dir: Path) -> dict[str, float]:
    """Start the stack, warm up, measure the window, stop."""
    pool = await create_pool(dsn, maxsize=1)
    try:
        await migrate(pool)
    finally:
        pool.close()
        await pool.wait_closed()
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
            extra_env={"COLLECTOR_WORKERS": str(args.workers)},
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


def write_section(text: str) -> None:
    """Replace the Pipeline section of docs/benchmarks.md (or append it)."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
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
    p.add_argument("--database-url", help="PostgreSQL admin DSN instead of the embedded server")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    load = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        if args.database_url:
            dsn = create_database(args.database_url)
            result = asyncio.run(measure(args, dsn, Path(tmp)))
        else:
            with embedded_server(Path(tmp) / "pg", keep=False) as admin:
                dsn = create_database(admin)
                result = asyncio.run(measure(args, dsn, Path(tmp)))
    command = "uv run task bench:pipeline -- " + " ".join(
        f"--{k} {v}"
        for k, v in (
            ("streamers", args.streamers),
            ("collectors", args.collectors),
            ("workers", args.workers),
            ("seconds", args.seconds),
        )
    )
    rate = result["stored_per_s"]
    text = f"""{SECTION}

Written by `task bench:pipeline` (`scripts/bench_pipeline.py`); do not edit by hand.

- Date: {started:%Y-%m-%d %H:%M} UTC; command: `{command}`
- Machine: {machine()}; load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}
- Setup: the whole stack as processes on one machine (broker with fsync on every publish,
  embedded PostgreSQL 18 with default settings, unlimited streamer rate), {args.warmup:.0f} s
  warm-up, then datapoints stored in PostgreSQL counted over {args.seconds:.0f} s.

| streamers | collectors | workers each | stored datapoints/s | consumer lag at the end |
|---:|---:|---:|---:|---:|
| {args.streamers} | {args.collectors} | {args.workers} | {rate:,.0f} | {result["lag"]:,.0f} |

Everything (streamers, broker, collectors, PostgreSQL and the measuring process) shares the same
{os.cpu_count()} cores, so this is the pipeline's throughput on one small machine, not a per-part
ceiling: the broker alone is measured in the Broker section.
"""
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote the {SECTION!r} section of {DOC}")


if __name__ == "__main__":
    main()

"""The scrape source's benchmark: how many dcgm-exporter targets one streamer sustains.

One streamer scrapes stand-in dcgm-exporters (``telemetry_devstack.exporters``, the CSV's 31
hosts copied ``--replicas`` times) every ``--interval`` seconds, for each fleet size of
``--fleets`` (in copies of the 31 hosts), on a fresh stack and database each. Over
``--intervals`` intervals after a warm-up it counts the slots stored against the slots due
(targets x intervals), the datapoints stored per second and the streamer's CPU; a fleet is
sustained when every slot due was stored. The result goes into the "Scrape source" section of
``docs/benchmarks.md``.

    uv run task bench:pipeline -- --source scrape --fleets 1,2,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import aiohttp
from telemetry_devstack import Stack, StackConfig, create_database, embedded_server
from telemetry_store import create_pool, cursor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_partitions import lag, machine, migrate_with, write_section  # noqa: E402

ROOT: Final = Path(__file__).resolve().parent.parent
CSV: Final = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"
DOC: Final = ROOT / "docs" / "benchmarks.md"
SCRAPE_SECTION: Final = "## Scrape source"


async def scrape_counts(dsn: str) -> tuple[int, int, int]:
    """Slots stored, slots missed (all targets) and datapoints stored, now."""
    pool = await create_pool(dsn, maxsize=1)
    try:
        async with cursor(pool) as cur:
            await cur.execute(
                "SELECT (SELECT count(*) FROM scrape_slots),"
                " (SELECT coalesce(sum(missed), 0) FROM scrape_targets),"
                " (SELECT count(*) FROM telemetry)"
            )
            slots, missed, stored = await cur.fetchone()
            return int(slots), int(missed), int(stored)
    finally:
        pool.close()
        await pool.wait_closed()


async def metric(url: str, name: str) -> float:
    """The sum of a metric's samples on a service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


async def measure_scrape(
    args: argparse.Namespace, dsn: str, data_dir: Path, copies: int
) -> dict[str, float]:
    """One streamer on ``copies`` x 31 stand-in exporters: slots due and stored, CPU."""
    migrate_with(dsn, None)
    targets = 31 * copies
    stack = Stack(
        StackConfig(
            database_url=dsn,
            data_dir=data_dir,
            csv_path=CSV,
            streamers=1,
            collectors=args.collectors,
            api_port=0,
            log_format="json",
            source="scrape",
            scrape_interval=args.interval,
            exporter_args=["--replicas", str(copies)],
            maintenance_interval=0,
            extra_env={"COLLECTOR_WORKERS": str(args.workers)},
        ),
        sink=None,
    )
    await stack.start(timeout=180)
    try:
        streamer = stack.streamers[0]
        # Warm-up: every target held and scraped at least once, then one more interval.
        deadline = time.monotonic() + 10 * args.interval + 120
        while (await scrape_counts(dsn))[0] < targets and time.monotonic() < deadline:
            await asyncio.sleep(1)  # polling a condition with a deadline
        await asyncio.sleep(args.interval)
        slots0, missed0, stored0 = await scrape_counts(dsn)
        cpu0, t0 = await metric(streamer.url, "process_cpu_seconds_total"), time.perf_counter()
        await asyncio.sleep(args.intervals * args.interval)  # the measured window
        slots1, missed1, stored1 = await scrape_counts(dsn)
        cpu1, t1 = await metric(streamer.url, "process_cpu_seconds_total"), time.perf_counter()
        failures = await metric(streamer.url, "telemetry_streamer_scrape_failures_total")
        backlog = await lag(stack.broker.url, "telemetry") if stack.broker else 0
    finally:
        await stack.stop()
    window = t1 - t0
    due = targets * window / args.interval
    return {
        "targets": targets,
        "due": due,
        "slots": slots1 - slots0,
        "missed": missed1 - missed0,
        "stored_per_s": (stored1 - stored0) / window,
        "cpu": (cpu1 - cpu0) / window,
        "failures": failures,
        "lag": backlog,
    }


def main_scrape(args: argparse.Namespace) -> None:
    """The scrape source's benchmark: fleet after fleet, each on a fresh stack and database."""
    load = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    rows = []
    for copies in [int(c) for c in args.fleets.split(",")]:
        with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
            if args.database_url:
                dsn = create_database(args.database_url)
                r = asyncio.run(measure_scrape(args, dsn, Path(tmp), copies))
            else:
                with embedded_server(Path(tmp) / "pg", keep=False) as admin:
                    dsn = create_database(admin)
                    r = asyncio.run(measure_scrape(args, dsn, Path(tmp), copies))
        r["load"] = os.getloadavg()[0]
        print(r, flush=True)
        rows.append(r)
    after = os.getloadavg()
    window = args.intervals * args.interval
    sustained = [r for r in rows if r["slots"] >= round(r["due"]) - 1 and r["missed"] == 0]
    best = max(sustained, key=lambda r: r["targets"]) if sustained else None
    command = (
        f"uv run task bench:pipeline -- --source scrape --fleets {args.fleets}"
        f" --interval {args.interval:g} --intervals {args.intervals}"
    )
    columns = [
        "targets",
        "GPUs",
        "slots due",
        "slots stored",
        "slots missed",
        "stored datapoints/s",
        "streamer CPU",
        "CPU per slot",
        "scrape failures",
        "consumer lag at the end",
        "load (1 min) after",
    ]
    header = f"| {' | '.join(columns)} |\n|{'---:|' * len(columns)}"
    table = "\n".join(
        f"| {r['targets']:.0f} | {247 * copies_of(r):,.0f}"
        f" | {r['due']:,.0f} | {r['slots']:,.0f} | {r['missed']:,.0f}"
        f" | {r['stored_per_s']:,.0f} | {100 * r['cpu']:.0f} %"
        f" | {cpu_per_slot(r, window):.0f} ms | {r['failures']:,.0f}"
        f" | {r['lag']:,.0f} | {r['load']:.1f} |"
        for r in rows
    )
    reference = best or rows[0]
    ceiling = f"{args.interval * 1000 / cpu_per_slot(reference, window):,.0f}"
    verdict = (
        f"One streamer sustained **{best['targets']:.0f} targets** "
        f"({247 * copies_of(best):,} GPUs, "
        f"{best['stored_per_s']:,.0f} datapoints/s stored) at a {args.interval:g} s interval: "
        "every slot due was stored"
        if best
        else "No fleet size tried was sustained (a slot due was not stored)"
    )
    text = f"""{SCRAPE_SECTION}

Written by `task bench:pipeline -- --source scrape` (`scripts/bench_scrape.py`); do not edit by
hand.

- Date: {started:%Y-%m-%d %H:%M} UTC; command: `{command}`
- Machine: {machine()}; load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}
  (after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}); the machine is shared, other work ran on it
- Setup: the whole stack as processes on one machine: **one streamer**, {args.collectors}
  collectors ({args.workers} workers each), the broker (fsync on every publish), embedded
  PostgreSQL 18, and the stand-in exporters (`python -m telemetry_devstack.exporters
  --replicas N`: the CSV's 31 hosts N times, 8 GPUs each but host 012's 7, dcgm-exporter's 25
  default fields, 200 samples and about 50 kB a scrape). After a warm-up (every target scraped
  once, then one interval) the stored slots and datapoints are counted over {args.intervals}
  intervals of {args.interval:g} s. Slots due = targets x window / interval.

{header}
{table}

{verdict}. "Streamer CPU" is the streamer's share of one core over the window (its process CPU
time / wall time) and "CPU per slot" that time per stored slot (fetch, parse with
prometheus-client's parser, which is most of it, claim, publish). A fleet is sustained when every
slot due was stored: past that, the streamer does not get the CPU it needs on this machine, whose
{os.cpu_count()} cores it shares with the rest of the stack and other work (load above). On a core
of its own, one streamer would keep up with about {ceiling} targets at a {args.interval:g} s
interval (the interval divided by the CPU per slot of the largest sustained fleet).
"""
    print(text)
    if not args.no_write:
        write_section(text, SCRAPE_SECTION)
        print(f"wrote the {SCRAPE_SECTION!r} section of {DOC}")


def cpu_per_slot(row: dict[str, float], window: float) -> float:
    """The streamer's CPU milliseconds per stored slot (scrape, parse, claim, publish)."""
    return 1000 * row["cpu"] * window / max(row["slots"], 1)


def copies_of(row: dict[str, float]) -> int:
    """How many copies of the CSV's fleet a row measured (host 012 has one GPU less each)."""
    return round(row["targets"] / 31)


def main(argv: list[str] | None = None) -> None:
    """Entry point (``bench_pipeline.py --source scrape`` hands its other arguments here)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--collectors", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="worker loops per collector")
    p.add_argument(
        "--fleets", default="1,2,4,8", help="fleet sizes, in copies of the CSV's 31 hosts"
    )
    p.add_argument("--interval", type=float, default=10.0, help="seconds between scrapes")
    p.add_argument("--intervals", type=int, default=6, help="intervals measured")
    p.add_argument("--database-url", help="PostgreSQL admin DSN instead of the embedded server")
    p.add_argument("--no-write", action="store_true", help="print only")
    main_scrape(p.parse_args(argv))


if __name__ == "__main__":
    main()

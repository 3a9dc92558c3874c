"""How long the broker takes to start on a full volume, and its memory once open.

Run it as ``task bench:broker-startup -- --gib 5`` (``--write`` updates the "Broker start-up"
section of ``docs/benchmarks.md``). It fills a data directory with ``--gib`` GiB of records
(about 330-byte JSON values on a 16-partition topic, written through the broker core with
``fsync=never`` to be quick; a consumer group has read none of them, so retention keeps them
all), closes it, then starts ``python -m telemetry_broker`` on it and measures the time until
``/healthz`` answers (what the chart's startup probe waits for) and until ``/readyz`` answers
(the recovery scan done: every segment read and every frame checked), and the broker's RSS
once open: what the position index and the rest cost with that much retained.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from telemetry_devstack import ServiceProcess, free_port
from telemetry_mq import Broker, BrokerConfig

ROOT: Final = Path(__file__).resolve().parent.parent
DOC: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "## Broker start-up"
GiB: Final = 1024**3


async def fill(data: Path, nbytes: int) -> tuple[int, int]:
    """Write about ``nbytes`` of records to topic ``telemetry`` (16 partitions)."""
    broker = await Broker.open(
        data, BrokerConfig(fsync="never", maintenance_interval=None, max_backlog_bytes=1 << 62)
    )
    await broker.create_topic("telemetry", 16)
    await broker.fetch("telemetry", "collectors", max_records=1)  # a group that consumed nothing
    pad = "x" * 290
    records = 0
    topic = broker.topic("telemetry")
    while sum(p.size_bytes for p in topic.logs) < nbytes:
        batch = [
            (f"GPU-{i % 247:04d}", orjson.dumps({"i": records + i, "pad": pad}))
            for i in range(1000)
        ]
        await broker.publish("telemetry", batch)
        records += len(batch)
    size = sum(p.size_bytes for p in topic.logs)
    await broker.close()
    return records, size


async def _until_ok(session: aiohttp.ClientSession, url: str, proc: ServiceProcess) -> float:
    async with asyncio.timeout(1800):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the broker exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.monotonic()
            await asyncio.sleep(0.05)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def start(data: Path) -> tuple[float, float, float]:
    """Start the broker on ``data``: seconds to /healthz, to /readyz, and RSS (MiB) once open."""
    port = free_port()
    proc = ServiceProcess(
        "broker",
        "telemetry_broker",
        port=port,
        env={
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(port),
            "BROKER_DATA_DIR": str(data),
            "BROKER_LOG_FORMAT": "json",
        },
        sink=None,
    )
    t0 = time.monotonic()
    await proc.start()
    try:
        async with aiohttp.ClientSession() as session:
            healthz = await _until_ok(session, f"{proc.url}/healthz", proc) - t0
            ready = await _until_ok(session, f"{proc.url}/readyz", proc) - t0
        await asyncio.sleep(1.0)
        return healthz, ready, rss_mib(proc.pid)
    finally:
        await proc.stop()


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    ram = f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB RAM" if mem else "RAM unknown"
    cpu = model.group(1).strip() if model else platform.processor()
    return f"{os.cpu_count()} CPUs ({cpu}), {ram}, kernel {platform.release()}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_section(path: Path, section: str) -> None:
    """Replace the section (up to the next ``## ``) in ``path``, or append it."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    new = section.rstrip("\n").splitlines()
    start_at = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start_at is None:
        lines += ["", *new]
    else:
        end = next(
            (i for i in range(start_at + 1, len(lines)) if lines[i].startswith("## ")),
            len(lines),
        )
        lines[start_at:end] = [*new, ""] if end < len(lines) else new
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gib", type=float, nargs="+", default=[1.0, 5.0], help="volumes to fill")
    p.add_argument("--workdir", type=Path, default=None, help="where the data dirs go")
    p.add_argument("--write", action="store_true", help=f"update {SECTION!r} in {DOC}")
    args = p.parse_args()
    cmd = "task bench:broker-startup -- " + shlex.join(sys.argv[1:])
    started, load = dt.datetime.now(dt.UTC), loadavg()
    rows = []
    for gib in args.gib:
        with tempfile.TemporaryDirectory(prefix="bench-startup-", dir=args.workdir) as tmp:
            data = Path(tmp) / "data"
            records, size = asyncio.run(fill(data, int(gib * GiB)))
            os.sync()
            healthz, ready, rss = asyncio.run(start(data))
        row = (
            f"| {size / GiB:.2f} GiB | {records:,} | {healthz:.1f} s | {ready:.1f} s"
            f" | {rss:.0f} MiB |"
        )
        print(row, flush=True)
        rows.append(row)
    section = "\n".join(
        [
            SECTION,
            "",
            "Written by `task bench:broker-startup` (`scripts/bench_broker_startup.py`);"
            " do not edit by hand.",
            "",
            f"- Date: {started:%Y-%m-%d %H:%M} UTC; command: `{cmd}`",
            f"- Machine: {machine()}; load average before: {load}, after: {loadavg()}",
            "- Setup: a 16-partition topic filled with records of about 330-byte JSON values"
            " (default 64 MiB segments), closed cleanly, one group that consumed none of them;"
            " then `python -m telemetry_broker` started on it (the page cache warm from the fill:"
            " a cold start reads the volume from the device as well). `/healthz` is what the"
            " chart's startup probe (60 s) waits for; `/readyz` answers once recovery has read"
            " every segment and checked every frame; RSS once open.",
            "",
            "| retained | records | /healthz after | /readyz after | broker RSS once open |",
            "|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    print(section)
    if args.write:
        write_section(DOC, section)
        print(f"wrote {SECTION!r} in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

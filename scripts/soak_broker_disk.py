"""Soak the broker's disk and memory budgets on a small, size-limited filesystem.

Run it as ``task soak:broker-disk -- --minutes 30`` (as root: it mounts a tmpfs of ``--size``).
The broker (``python -m telemetry_broker`` with its default retention: consumed segments kept
an hour, no byte bound) keeps its data on that filesystem; producers publish as fast as the
broker takes them while one consumer group fetches and acks. An hour of records is much larger
than the filesystem, so the disk high watermark must answer (429 ``DISK_FULL``) before the
filesystem answers ENOSPC, and retention must delete consumed segments early to make room.

Every sample (``--sample-every``) records the broker's RSS, the filesystem's use, the records
acknowledged and delivered, the 429s and the broker's own metrics (bytes retention deleted
under disk pressure, index memory). At the end the broker is killed (``kill -9``) on its full
volume and restarted: the time until ``/healthz`` and until ``/readyz`` answer is what the
chart's startup probe and readiness must allow. The consumer then drains, and every
acknowledged record must have been delivered with the value it was published with.

Verdicts: no ENOSPC (no storage error or "No space left" in the broker's log, free space never
0), the watermark answered, nothing acknowledged lost; the RSS once retention deletes is
reported (first, last and highest sample). ``--write`` puts the figures in the "Broker disk
soak" section of ``docs/benchmarks.md``. The test suite runs a few seconds of it on a 24 MiB
filesystem (``tests/system/test_broker_disk.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from telemetry_devstack import ServiceProcess, free_port
from telemetry_mq import BacklogFullError, Batch, BrokerClient, DiskFullError, MQError

ROOT: Final = Path(__file__).resolve().parent.parent
DOC: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "## Broker disk soak"
TOPIC: Final = "soak"
GROUP: Final = "soak"
MiB: Final = 1024 * 1024
ENOSPC_MARKS: Final = ("No space left", "ENOSPC", "Errno 28", "STORAGE_ERROR")
DELETED_DISK: Final = "telemetry_broker_retention_deleted_bytes_total{disk}"
DELETED_AGE: Final = "telemetry_broker_retention_deleted_bytes_total{age}"
INDEX: Final = "telemetry_broker_index_bytes"


@dataclass
class Options:
    """What to run: the filesystem's size, the broker's settings and the load."""

    seconds: float = 1800.0
    size_bytes: int = 1024 * MiB
    partitions: int = 16
    segment_bytes: int = 64 * MiB
    wal_segment_bytes: int = 64 * MiB
    watermark: float = 0.9
    batch: int = 1000
    inflight: int = 4
    value_bytes: int = 330
    sample_every: float = 10.0
    maintenance_interval: float = 1.0
    broker_env: dict[str, str] = field(default_factory=dict)
    stop_when: Callable[[Soak], bool] | None = None
    """Stop feeding early once this holds (the test: the watermark answered, then room came)."""


@dataclass
class Sample:
    """One row of figures."""

    seconds: float
    rss_mib: float
    used_mib: float
    free_mib: float
    acknowledged: int
    delivered: int
    refused_disk: int
    refused_backlog: int
    deleted_disk_mib: float
    deleted_age_mib: float
    index_kib: float


@dataclass
class Result:
    """What the soak found."""

    capacity_mib: float
    samples: list[Sample]
    seconds: float
    acknowledged: int
    delivered: int
    redelivered: int
    refused_disk: int
    refused_backlog: int
    missing: int
    mismatched: int
    errors: list[str]
    enospc: list[str]
    min_free_bytes: int
    restart_used_mib: float
    restart_healthz_s: float
    restart_ready_s: float
    acknowledged_at_first_refusal: int | None = None

    def rss_after_deletions(self) -> tuple[float, float, float]:
        """RSS (MiB) at the first sample after retention deleted under pressure, at the last
        sample, and the highest in between."""
        after = [s for s in self.samples if s.deleted_disk_mib > 0] or self.samples
        return after[0].rss_mib, after[-1].rss_mib, max(s.rss_mib for s in after)

    def failures(self) -> list[str]:
        """The verdicts not met (empty: all met)."""
        out = []
        if self.enospc or self.min_free_bytes == 0:
            out.append(f"ENOSPC reached (lowest free {self.min_free_bytes} B): {self.enospc[:3]}")
        if not self.refused_disk:
            out.append("the disk watermark never answered 429 DISK_FULL")
        if self.missing or self.mismatched:
            out.append(f"{self.missing} acknowledged records missing, {self.mismatched} differ")
        if self.errors:
            out.append(f"unexpected errors: {self.errors[:3]}")
        return out


def _put(arr: array[int], i: int, v: int) -> None:
    """``arr[i] = v``, growing ``arr`` with zeros (in steps, not one element at a time)."""
    if i >= len(arr):
        arr.frombytes(bytes(arr.itemsize * (i + 1 - len(arr) + 65536)))
    arr[i] = v


class Soak:
    """The load and its bookkeeping: which record each (partition, offset) holds."""

    def __init__(self, opts: Options, mount: Path) -> None:
        self.opts = opts
        self.mount = mount
        # Per partition, indexed by offset: id + 1 of the record acknowledged there, and of the
        # record first delivered from there (0: none).
        self.published = [array("Q") for _ in range(opts.partitions)]
        self.delivered = [array("Q") for _ in range(opts.partitions)]
        self.acknowledged = 0
        self.delivered_count = 0
        self.redelivered = 0
        self.mismatched = 0
        self.refused_disk = 0
        self.refused_backlog = 0
        self.acknowledged_at_first_refusal: int | None = None
        self.errors: list[str] = []
        self.enospc: list[str] = []
        self.log_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.min_free = 1 << 62
        self.stop = asyncio.Event()
        self._next_id = 0
        self._pad = "x" * max(0, opts.value_bytes - 60)

    def on_log(self, _name: str, line: str) -> None:
        """A broker log line: any mention of a full disk counts as an ENOSPC."""
        self.log_tail.append(line[:500])
        if any(mark in line for mark in ENOSPC_MARKS):
            self.enospc.append(line[:300])

    def usage(self) -> tuple[int, int]:
        """Bytes used and free on the filesystem now (the lowest free is kept)."""
        st = os.statvfs(self.mount)
        free = st.f_bavail * st.f_frsize
        self.min_free = min(self.min_free, free)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, free

    def _batch(self) -> tuple[int, list[tuple[str, bytes]]]:
        """The next batch of records and the id of its first (ids follow each other)."""
        first = self._next_id
        self._next_id += self.opts.batch
        out = []
        for i in range(first, self._next_id):
            key = f"gpu-{i % 97}"
            out.append((key, orjson.dumps({"id": i, "key": key, "pad": self._pad})))
        return first, out

    async def produce(self, mq: BrokerClient) -> None:
        """Publish as fast as the broker takes it; a 429 waits its Retry-After."""
        while not self.stop.is_set():
            first, records = self._batch()
            try:
                positions = await mq.publish(TOPIC, records)
            except DiskFullError as e:
                self.refused_disk += 1
                if self.acknowledged_at_first_refusal is None:
                    self.acknowledged_at_first_refusal = self.acknowledged
                await asyncio.sleep(e.retry_after)
                continue
            except BacklogFullError as e:
                self.refused_backlog += 1
                await asyncio.sleep(e.retry_after)
                continue
            except MQError as e:
                self.errors.append(f"publish: {type(e).__name__}: {e}")
                await asyncio.sleep(1.0)
                continue
            for i, (p, o) in enumerate(positions):
                _put(self.published[p], o, first + i + 1)
            self.acknowledged += len(records)

    def _take(self, batches: list[Batch]) -> None:
        for batch in batches:
            seen = self.delivered[batch.partition]
            for d in batch.records:
                doc = orjson.loads(d.value)
                if doc["key"] != d.key:
                    self.mismatched += 1
                if d.offset < len(seen) and seen[d.offset]:
                    self.redelivered += 1
                    if seen[d.offset] != doc["id"] + 1:
                        self.mismatched += 1
                    continue
                _put(seen, d.offset, doc["id"] + 1)
                self.delivered_count += 1

    async def consume(self, mq: BrokerClient, until: asyncio.Event) -> None:
        """Fetch and ack (each fetch carries the acks of the previous one) until ``until``."""
        done: list[Batch] = []
        while not until.is_set():
            try:
                batches = await mq.fetch_many(
                    TOPIC, GROUP, max_records=2000, max_wait=0.5, ack=done or None
                )
            except MQError as e:
                self.errors.append(f"fetch: {type(e).__name__}: {e}")
                done = []
                await asyncio.sleep(1.0)
                continue
            self._take(batches)
            done = batches
        with contextlib.suppress(MQError):
            for batch in done:
                await mq.ack(batch)

    def missing(self) -> int:
        """Acknowledged records never delivered, or delivered holding another record."""
        missing = 0
        for pub, seen in zip(self.published, self.delivered, strict=True):
            n = min(len(pub), len(seen))
            if pub[:n] != seen[:n]:  # fast path: equal unless something is wrong
                missing += sum(1 for o in range(n) if pub[o] and pub[o] != seen[o])
            missing += sum(1 for v in pub[n:] if v)
        return missing


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The broker's metrics, summed over labels (``name{reason}`` where there is a reason)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                reason = s.labels.get("reason")
                name = f"{s.name}{{{reason}}}" if reason else s.name
                out[name] = out.get(name, 0.0) + s.value
        return out
    return {}


async def take_sample(
    soak: Soak, proc: ServiceProcess, session: aiohttp.ClientSession, seconds: float
) -> Sample:
    metrics = await scrape(session, proc.url)
    used, free = soak.usage()
    return Sample(
        seconds=seconds,
        rss_mib=rss_mib(proc.pid),
        used_mib=used / MiB,
        free_mib=free / MiB,
        acknowledged=soak.acknowledged,
        delivered=soak.delivered_count,
        refused_disk=soak.refused_disk,
        refused_backlog=soak.refused_backlog,
        deleted_disk_mib=metrics.get(DELETED_DISK, 0.0) / MiB,
        deleted_age_mib=metrics.get(DELETED_AGE, 0.0) / MiB,
        index_kib=metrics.get(INDEX, float("nan")) / 1024,
    )


def format_sample(s: Sample) -> str:
    return (
        f"{s.seconds:7.0f} s  RSS {s.rss_mib:6.1f} MiB  disk {s.used_mib:7.1f} used"
        f" {s.free_mib:7.1f} free MiB  acknowledged {s.acknowledged:>11,}"
        f"  delivered {s.delivered:>11,}  429 disk {s.refused_disk:>6,}"
        f" backlog {s.refused_backlog:>4,}  deleted under pressure {s.deleted_disk_mib:8.0f} MiB"
        f"  index {s.index_kib:7.1f} KiB"
    )


def broker_process(opts: Options, data: Path, soak: Soak) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        "broker",
        "telemetry_broker",
        port=port,
        env={
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(port),
            "BROKER_DATA_DIR": str(data),
            "BROKER_LOG_FORMAT": "json",
            "BROKER_TOPICS": f"{TOPIC}:{opts.partitions}",
            "BROKER_SEGMENT_BYTES": str(opts.segment_bytes),
            "BROKER_WAL_SEGMENT_BYTES": str(opts.wal_segment_bytes),
            "BROKER_DISK_HIGH_WATERMARK": str(opts.watermark),
            "BROKER_MAINTENANCE_INTERVAL": str(opts.maintenance_interval),
            **opts.broker_env,
        },
        sink=soak.on_log,
    )


async def _until_ok(
    session: aiohttp.ClientSession, url: str, proc: ServiceProcess, soak: Soak
) -> float:
    """Poll ``url`` until it answers 200; the monotonic time it did."""
    async with asyncio.timeout(600):
        while True:
            if proc.returncode is not None:
                tail = "\n".join(soak.log_tail)
                raise RuntimeError(f"the broker exited with {proc.returncode}; its log:\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.monotonic()
            await asyncio.sleep(0.05)


async def run_soak(opts: Options, mount: Path, log: Callable[[str], None] = print) -> Result:
    """Run the soak with the broker's data on ``mount`` (a size-limited filesystem)."""
    soak = Soak(opts, mount)
    proc = broker_process(opts, mount / "broker", soak)
    await proc.start()
    samples: list[Sample] = []
    try:
        await proc.wait_ready(60)
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with (
                BrokerClient(proc.url, max_retries=0, timeout=60.0) as producer,
                BrokerClient(proc.url, max_retries=0, timeout=60.0) as consumer,
            ):
                fed = asyncio.Event()
                producers = [
                    asyncio.create_task(soak.produce(producer)) for _ in range(opts.inflight)
                ]
                consuming = asyncio.create_task(soak.consume(consumer, fed))
                next_sample = started
                while proc.returncode is None:
                    now = time.monotonic()
                    soak.usage()
                    if now >= next_sample:
                        next_sample += opts.sample_every
                        samples.append(await take_sample(soak, proc, session, now - started))
                        log(format_sample(samples[-1]))
                    if now - started >= opts.seconds or (opts.stop_when and opts.stop_when(soak)):
                        break
                    await asyncio.sleep(min(0.25, opts.sample_every))
                else:
                    soak.errors.append(f"the broker exited with {proc.returncode}")
                soak.stop.set()
                await asyncio.gather(*producers)
                samples.append(await take_sample(soak, proc, session, time.monotonic() - started))
                log(format_sample(samples[-1]))
                fed.set()
                await consuming
            seconds = time.monotonic() - started

            # A crash on the full volume, and the restart the startup probe must allow for.
            used = soak.usage()[0]
            proc.kill()
            await proc.wait()
            proc = broker_process(opts, mount / "broker", soak)
            t0 = time.monotonic()
            await proc.start()
            healthz_s = await _until_ok(session, f"{proc.url}/healthz", proc, soak) - t0
            ready_s = await _until_ok(session, f"{proc.url}/readyz", proc, soak) - t0
            log(
                f"restart after kill -9 with {used / MiB:.0f} MiB used: /healthz after"
                f" {healthz_s:.1f} s, /readyz after {ready_s:.1f} s"
            )

            # Drain: every acknowledged record must come (again, if its ack was not durable).
            drained = asyncio.Event()
            async with BrokerClient(proc.url, max_retries=3, timeout=60.0) as consumer:
                draining = asyncio.create_task(soak.consume(consumer, drained))
                last, still = -1, 0.0
                while True:  # until all came and nothing more comes, or nothing comes for 5 s
                    await asyncio.sleep(0.5)
                    still = still + 0.5 if soak.delivered_count == last else 0.0
                    last = soak.delivered_count
                    if still >= 5.0 or (still and soak.delivered_count >= soak.acknowledged):
                        break
                drained.set()
                await draining
    finally:
        if await proc.stop() != 0:
            soak.errors.append("the broker did not stop cleanly")
    return Result(
        capacity_mib=sum(soak.usage()) / MiB,
        samples=samples,
        seconds=seconds,
        acknowledged=soak.acknowledged,
        delivered=soak.delivered_count,
        redelivered=soak.redelivered,
        refused_disk=soak.refused_disk,
        refused_backlog=soak.refused_backlog,
        missing=soak.missing(),
        mismatched=soak.mismatched,
        errors=soak.errors,
        enospc=soak.enospc,
        min_free_bytes=soak.min_free,
        restart_used_mib=used / MiB,
        restart_healthz_s=healthz_s,
        restart_ready_s=ready_s,
        acknowledged_at_first_refusal=soak.acknowledged_at_first_refusal,
    )


@contextlib.contextmanager
def tmpfs(size_bytes: int, parent: Path | None = None) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted on a fresh directory (needs root); unmounted after."""
    mount = Path(tempfile.mkdtemp(prefix="soak-disk-", dir=parent))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount)], check=True
        )
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        mount.rmdir()


# -- the command line and the report ------------------------------------------------------------


def parse_size(text: str) -> int:
    """``1g``, ``512m``, ``64k`` or bytes (powers of 1024)."""
    m = re.fullmatch(r"(\d+)([kmgt]?)i?b?", text.strip().lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(m.group(1)) * int(1024 ** " kmgt".index(m.group(2) or " "))


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return (
        f"{os.cpu_count()} CPUs ({model.group(1).strip() if model else platform.processor()}),"
        f" {int(mem.group(1)) / 1024 / 1024:.1f} GiB RAM, kernel {platform.release()}"
        if mem
        else f"{os.cpu_count()} CPUs, kernel {platform.release()}"
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def render(result: Result, opts: Options, cmd: str, started: dt.datetime, load: str) -> str:
    """The markdown section for docs/benchmarks.md."""
    first, last, peak = result.rss_after_deletions()
    rows = thin(result.samples, 31)
    failures = result.failures()
    lines = [
        SECTION,
        "",
        "Written by `task soak:broker-disk` (`scripts/soak_broker_disk.py`); do not edit by hand.",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; command: `{cmd}`",
        f"- Machine: {machine()}; load average before: {load}, after: {loadavg()}",
        f"- Setup: the broker's data on a {result.capacity_mib:,.0f} MiB tmpfs; topic of"
        f" {opts.partitions} partitions, {opts.segment_bytes // MiB} MiB segments,"
        f" {opts.wal_segment_bytes // MiB} MiB write-ahead log segments; default retention"
        f" (consumed segments kept an hour, no byte bound); disk high watermark"
        f" {opts.watermark:g}. {opts.inflight} producers publish batches of {opts.batch}"
        f" records (about {opts.value_bytes} bytes each) as fast as the broker takes them, one"
        " consumer fetches (fetch_many, 2,000 records) and acks; fsync on every publish.",
        "",
        "| time | broker RSS MiB | disk used MiB | free MiB | acknowledged | delivered |"
        " 429 DISK_FULL | deleted under pressure MiB | index KiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {s.seconds / 60:.1f} min | {s.rss_mib:.0f} | {s.used_mib:.0f} | {s.free_mib:.0f}"
            f" | {s.acknowledged:,} | {s.delivered:,} | {s.refused_disk:,}"
            f" | {s.deleted_disk_mib:,.0f} | {s.index_kib:,.0f} |"
            for s in rows
        ),
        "",
        f"- Fed for {result.seconds / 60:.1f} min: {result.acknowledged:,} records acknowledged"
        f" ({result.acknowledged / max(result.seconds, 1):,.0f}/s), {result.refused_disk:,}"
        f" publishes answered 429 DISK_FULL, {result.refused_backlog:,} 429 BACKLOG_FULL;"
        f" lowest free space {result.min_free_bytes / MiB:,.1f} MiB.",
        f"- Broker RSS once retention deleted under pressure: {first:.0f} MiB at the first"
        f" sample, {last:.0f} MiB at the last, {peak:.0f} MiB at most.",
        f"- Restart after `kill -9` with {result.restart_used_mib:,.0f} MiB on the volume:"
        f" `/healthz` after {result.restart_healthz_s:.1f} s, `/readyz` after"
        f" {result.restart_ready_s:.1f} s.",
        f"- Accounting: {result.delivered:,} records delivered ({result.redelivered:,}"
        f" redeliveries), {result.missing:,} acknowledged records missing,"
        f" {result.mismatched:,} delivered with another value.",
        "- Verdict: " + ("all met" if not failures else "NOT met: " + "; ".join(failures)),
        "",
    ]
    return "\n".join(lines)


def thin(samples: list[Sample], most: int) -> list[Sample]:
    if len(samples) <= most:
        return samples
    step = (len(samples) - 1) / (most - 1)
    return [samples[round(i * step)] for i in range(most)]


def write_section(path: Path, section: str) -> None:
    """Replace the section (up to the next ``## ``) in ``path``, or append it."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    new = section.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        lines += ["", *new]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*new, ""] if end < len(lines) else new
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="how long to feed the broker")
    p.add_argument("--size", type=parse_size, default=1024 * MiB, help="tmpfs size (1g)")
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--segment-bytes", type=parse_size, default=64 * MiB)
    p.add_argument("--wal-segment-bytes", type=parse_size, default=64 * MiB)
    p.add_argument("--watermark", type=float, default=0.9, help="BROKER_DISK_HIGH_WATERMARK")
    p.add_argument("--batch", type=int, default=1000, help="records per publish")
    p.add_argument("--inflight", type=int, default=4, help="concurrent publishes")
    p.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--mount-parent", type=Path, default=None, help="where to mount the tmpfs")
    p.add_argument("--broker-env", action="append", default=[], metavar="K=V")
    p.add_argument("--write", action="store_true", help=f"update {SECTION!r} in {DOC}")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("soak_broker_disk: mounting a tmpfs needs root", file=sys.stderr)
        return 2
    opts = Options(
        seconds=args.minutes * 60,
        size_bytes=args.size,
        partitions=args.partitions,
        segment_bytes=args.segment_bytes,
        wal_segment_bytes=args.wal_segment_bytes,
        watermark=args.watermark,
        batch=args.batch,
        inflight=args.inflight,
        sample_every=args.sample_every,
        broker_env=dict(kv.split("=", 1) for kv in args.broker_env),
    )
    cmd = "task soak:broker-disk -- " + shlex.join(sys.argv[1:])
    started, load = dt.datetime.now(dt.UTC), loadavg()
    print(f"{cmd}\nload average before: {load}", flush=True)
    with tmpfs(opts.size_bytes, args.mount_parent) as mount:
        result = asyncio.run(run_soak(opts, mount, lambda line: print(line, flush=True)))
    section = render(result, opts, cmd, started, load)
    print(section)
    if args.write:
        write_section(DOC, section)
        print(f"wrote {SECTION!r} in {DOC}")
    return 0 if not result.failures() else 1


if __name__ == "__main__":
    sys.exit(main())

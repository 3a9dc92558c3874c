"""The pipeline's promise, measured: freshness at fixed offered loads, throughput, the ceiling.

Runs the whole stack as processes (``telemetry_devstack.Stack``: streamers -> broker ->
collectors -> PostgreSQL, and the API) on the embedded PostgreSQL (or ``--database-url``), each
run on a fresh database and a fresh broker, and reports:

- **freshness** (commit time minus the datapoint's processing timestamp, the collectors'
  ``telemetry_collector_freshness_seconds``) at fixed offered loads (``--loads``, split over the
  streamers with ``STREAMER_RATE``): p50 and p99 from the histogram's buckets over the measured
  window, the share within 250 ms and 1 s (bucket bounds: exact), and the max from the
  collectors' round log lines (``oldest_age_ms``, exact); also the age of the newest datapoint
  the API can serve (``telemetry_api_newest_datapoint_age_seconds``, scraped once a second);
- the **highest offered load at which p99 freshness stays under one second** (and the load is
  held: at least 95 % of it published and stored), bisected between the loads that passed and
  failed, and the same test at 80 % of the throughput below;
- **throughput** at full speed (unlimited streamer rate), and in the same sitting the
  **ceiling**: the aiopg batch insert alone (``telemetry_store.store_datapoints`` in the
  collectors' transaction, as many processes and connections as collectors and workers, on
  the same table, pre-registered GPUs, no broker, no decoding), and the ratio;
- **CPU seconds per 100,000 stored datapoints** of each process kind (streamers, broker with
  its fsync helper, collectors, PostgreSQL with every backend, the API, this script), from
  ``/proc``, over each measured window.

The work is sized from a short calibration (a full-speed run: how long a stack takes to start
and stop here, and how fast it stores) so that the whole run fits ``--budget`` seconds; on a
machine 2-3x slower the windows shrink and the search takes fewer steps, down to the minimum
(every fixed load, one full-speed run and one ceiling run, 10 s windows). The load average is
recorded before and after every run.

``--compare REF`` adds full-speed runs of REF's code (``git archive``, first on the services'
PYTHONPATH, migrated by it), alternating with this tree's, and the ceiling with each: the
before/after of a change, same machine, same sitting.

    uv run task bench:pipeline
    uv run task bench:pipeline -- --compare HEAD~1 --only-throughput --rounds 3 --no-write

``--source scrape`` measures the scrape source instead (``bench_scrape.py``: how many
dcgm-exporter targets one streamer sustains; the "Scrape source" section).

    uv run task bench:pipeline -- --source scrape --fleets 1,2,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from psycopg2.extensions import parse_dsn
from telemetry_devstack import (
    ServiceProcess,
    Stack,
    StackConfig,
    create_database,
    drop_database,
    embedded_server,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_partitions import baseline_tree, machine, migrate_with, write_section  # noqa: E402

ROOT: Final = Path(__file__).resolve().parent.parent
CSV: Final = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"
DOC: Final = ROOT / "docs" / "benchmarks.md"
SECTION: Final = "## Pipeline"
TOPIC: Final = "telemetry"
FRESHNESS: Final = "telemetry_collector_freshness_seconds"
HELD: Final = 0.95  # a load is held when at least this share of it is published and stored
KINDS: Final = ("streamer", "broker", "collector", "postgres", "api", "bench")
MIN_WINDOW: Final = 10.0
MAX_WINDOW: Final = 30.0

Load = tuple[float, float, float]


# --- CPU from /proc ---------------------------------------------------------------------------

_TICK: Final = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds of it and of its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(b")", 1)[1].split()
        # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime cutime cstime (clock ticks)
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry.name)] = (int(fields[1]), ticks / _TICK)
    return table


def tree_cpu(table: dict[int, tuple[int, float]], roots: Iterable[int]) -> float:
    """CPU seconds of the processes ``roots`` and all their descendants (exited ones included:
    a process's reaped children count in its own ``cutime``/``cstime``)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def self_cpu() -> float:
    """This process's own CPU seconds (its children are the services, counted apart)."""
    t = os.times()
    return t.user + t.system


def postmaster_pid(dsn: str) -> int | None:
    """The PostgreSQL server's postmaster on this machine (the parent of a backend), if local."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (backend,) = cur.fetchone()
        table = proc_table()
        if backend not in table:
            return None  # a remote server
        parent = table[backend][0]
        try:
            cmd = Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            return None
        return parent if b"postgres" in cmd else None
    finally:
        conn.close()


# --- Prometheus text ---------------------------------------------------------------------------


@dataclass
class Scrape:
    """What one scrape of several processes says: counters summed, freshness buckets summed."""

    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def add(self, text: str) -> None:
        """Add one process's /metrics."""
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("topic", TOPIC) != TOPIC:
                    continue
                if s.name == f"{FRESHNESS}_bucket":
                    le = float(s.labels["le"])
                    self.buckets[le] = self.buckets.get(le, 0.0) + s.value
                elif s.name.endswith("_total") and len(s.labels) <= 1:
                    self.counters[s.name] = self.counters.get(s.name, 0.0) + s.value


def bucket_delta(
    before: dict[float, float], after: dict[float, float]
) -> list[tuple[float, float]]:
    """Cumulative (le, count) observed between two scrapes, ascending, +Inf last."""
    return sorted((le, after[le] - before.get(le, 0.0)) for le in after)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The q-quantile of cumulative ``buckets``, interpolated within its bucket the way
    PromQL's ``histogram_quantile`` does (``inf`` when it lies past the last finite bound,
    ``nan`` with no observations)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return math.inf
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return math.inf


def share_within(bound: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Share of observations at most ``bound`` (a bucket bound: exact)."""
    total = buckets[-1][1] if buckets else 0.0
    for le, count in buckets:
        if le == bound:
            return count / total if total else math.nan
    raise ValueError(f"{bound} is not a bucket bound")


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured window."""

    kind: str  # "full", "paced", "ceiling"
    code: str  # "this tree" or the compared ref
    offered: float | None  # datapoints/s offered (paced runs)
    seconds: float
    stored: float  # datapoints newly stored in the window
    published: float | None
    lag: int | None  # records not yet acked at the window's end
    buckets: list[tuple[float, float]]
    max_age: float | None  # seconds: the oldest datapoint committed in the window
    api_ages: list[float]
    cpu: dict[str, float]  # process kind -> CPU seconds in the window
    load: Load
    load_after: Load
    rows_checked: bool | None = None  # rows in the table == datapoints the collectors stored

    @property
    def stored_per_s(self) -> float:
        return self.stored / self.seconds

    @property
    def published_per_s(self) -> float | None:
        return None if self.published is None else self.published / self.seconds

    def p(self, q: float) -> float:
        return quantile(q, self.buckets)

    @property
    def held(self) -> bool:
        """The offered load was published and stored (at least ``HELD`` of it)."""
        if self.offered is None:
            return True
        published = self.published_per_s or 0.0
        return min(published, self.stored_per_s) >= HELD * self.offered

    @property
    def fresh(self) -> bool:
        """Held, with p99 freshness under one second (fewer than 1 % older than 1 s)."""
        return self.held and bool(self.buckets) and share_within(1.0, self.buckets) > 0.99

    def cpu_per_100k(self, kind: str) -> float:
        return self.cpu.get(kind, math.nan) / self.stored * 100_000 if self.stored else math.nan


@dataclass
class Settings:
    """How each run is shaped."""

    streamers: int
    collectors: int
    workers: int
    warmup: float
    window: float
    admin: str
    tmp: Path
    batch: int = 1000  # records per collector round (COLLECTOR_BATCH_SIZE) and ceiling batch
    drain: float = 30.0  # longest wait for the collectors to drain the topic after a run


async def _scrape(http: aiohttp.ClientSession, procs: Sequence[ServiceProcess]) -> Scrape:
    texts = await asyncio.gather(*(_get(http, f"{p.url}/metrics") for p in procs))
    scrape = Scrape()
    for text in texts:
        scrape.add(text)
    return scrape


async def _get(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as r:
        return await r.text()


async def _lag(http: aiohttp.ClientSession, broker_url: str) -> int:
    async with http.get(f"{broker_url}/v1/topics/{TOPIC}") as r:
        body = await r.json()
    return sum(int(g.get("lag", 0)) for g in body.get("groups", []))


def _cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    table = proc_table()
    out = {kind: tree_cpu(table, pids) for kind, pids in roots.items()}
    out["bench"] = self_cpu()
    return out


def _roots(stack: Stack, postmaster: int | None) -> dict[str, list[int]]:
    assert stack.broker is not None and stack.api is not None
    roots = {
        "streamer": [p.pid for p in stack.streamers],
        "broker": [stack.broker.pid],
        "collector": [p.pid for p in stack.collectors],
        "api": [stack.api.pid],
    }
    if postmaster is not None:
        roots["postgres"] = [postmaster]
    return roots


async def _sample_api(
    http: aiohttp.ClientSession, url: str, until: float, ages: list[float]
) -> None:
    """Scrape the API once a second (each scrape reads the newest datapoint anew)."""
    while time.monotonic() < until:
        try:
            text = await _get(http, f"{url}/metrics")
        except (aiohttp.ClientError, TimeoutError):
            text = ""
        for line in text.splitlines():
            if line.startswith("telemetry_api_newest_datapoint_age_seconds "):
                ages.append(float(line.split()[1]))
        await asyncio.sleep(1.0)  # the sampling period


async def run_stack(
    s: Settings, rate: float, *, code: str = "this tree", pythonpath: str | None = None
) -> Run:
    """One stack at ``rate`` datapoints/s in all (0: unlimited) on a fresh database."""
    dsn = create_database(s.admin)
    try:
        return await _run_stack(s, dsn, rate, code, pythonpath)
    finally:
        drop_database(s.admin, parse_dsn(dsn)["dbname"])


async def _run_stack(s: Settings, dsn: str, rate: float, code: str, pythonpath: str | None) -> Run:
    migrate_with(dsn, pythonpath)
    postmaster = postmaster_pid(dsn)
    rounds: list[tuple[float, float]] = []  # (arrival, oldest_age_ms) of each stored round

    def sink(name: str, line: str) -> None:
        if name.startswith("collector") and '"batches stored"' in line:
            with_age = orjson.loads(line).get("oldest_age_ms")
            if with_age is not None:
                rounds.append((time.monotonic(), float(with_age)))

    data_dir = Path(tempfile.mkdtemp(prefix="run-", dir=s.tmp))
    stack = Stack(
        StackConfig(
            database_url=dsn,
            data_dir=data_dir,
            csv_path=CSV,
            streamers=s.streamers,
            collectors=s.collectors,
            api_port=0,
            rate=rate / s.streamers if rate else 0,
            log_format="json",
            maintenance_interval=0,
            extra_env={
                "COLLECTOR_WORKERS": str(s.workers),
                "COLLECTOR_BATCH_SIZE": str(s.batch),
                **({"PYTHONPATH": pythonpath} if pythonpath else {}),
            },
        ),
        sink=sink,
    )
    load = os.getloadavg()
    await stack.start()
    ages: list[float] = []
    try:
        assert stack.broker is not None and stack.api is not None
        roots = _roots(stack, postmaster)
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(s.warmup)  # steady state
            c0, (m0, p0) = (
                _cpu(roots),
                await asyncio.gather(
                    _scrape(http, stack.collectors), _scrape(http, stack.streamers)
                ),
            )
            t0 = time.monotonic()
            sampler = asyncio.create_task(_sample_api(http, stack.api.url, t0 + s.window, ages))
            await asyncio.sleep(s.window)  # the measured window
            c1, (m1, p1) = (
                _cpu(roots),
                await asyncio.gather(
                    _scrape(http, stack.collectors), _scrape(http, stack.streamers)
                ),
            )
            t1 = time.monotonic()
            await sampler
            backlog = await _lag(http, stack.broker.url)
            # Exactly once, end to end: streamers stop gracefully (each publishes its claimed
            # chunk to its end), the collectors drain the topic, then the table must hold every
            # claimed sequence number once.
            await asyncio.gather(*(p.stop() for p in stack.streamers))
            drained = await _drain(http, stack.broker.url, s.drain)
    finally:
        await stack.stop()
    stored_name = "telemetry_collector_datapoints_stored_total"
    published_name = "telemetry_streamer_datapoints_published_total"
    in_window = [age for at, age in rounds if t0 <= at <= t1]
    run = Run(
        kind="paced" if rate else "full",
        code=code,
        offered=rate or None,
        seconds=t1 - t0,
        stored=m1.counters.get(stored_name, 0.0) - m0.counters.get(stored_name, 0.0),
        published=p1.counters.get(published_name, 0.0) - p0.counters.get(published_name, 0.0),
        lag=backlog,
        buckets=bucket_delta(m0.buckets, m1.buckets) if m1.buckets else [],
        max_age=max(in_window) / 1000 if in_window else None,
        api_ages=ages,
        cpu={k: c1[k] - c0[k] for k in c1 if k in c0},
        load=load,
        load_after=os.getloadavg(),
    )
    run.rows_checked = await _exactly_once(dsn) if drained else None
    return run


async def _drain(http: aiohttp.ClientSession, broker_url: str, timeout: float) -> bool:
    """Wait until every published record is acked; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _lag(http, broker_url) == 0:
            return True
        await asyncio.sleep(0.5)  # polling a condition with a deadline
    return False


async def _exactly_once(dsn: str) -> bool:
    """Every sequence number the streamers claimed is stored, once."""
    import aiopg

    async with aiopg.connect(dsn) as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT (SELECT sum(next_seq) FROM streams), (SELECT count(*) FROM telemetry),"
            " (SELECT count(DISTINCT (stream_id, seq)) FROM telemetry)"
        )
        claimed, rows, distinct = await cur.fetchone()
    return int(claimed) == int(rows) == int(distinct)


# --- the ceiling: the batch insert alone ------------------------------------------------------


async def insert_worker(dsn: str, name: str, connections: int, batch: int) -> dict[str, float]:
    """One process of the ceiling: ``connections`` loops storing ``batch``-datapoint
    transactions the way a collector does. Prints "ready" once set up, then reads the window
    (wall-clock start and end) from stdin; returns the rows whose commit fell inside it."""
    from telemetry_model import WireTemplate, read_samples
    from telemetry_store import (
        BEGIN_INGEST,
        GpuSighting,
        create_pool,
        ensure_streams,
        ingest_bounds,
        store_datapoints,
        transaction,
        upsert_gpus,
    )

    samples = read_samples(CSV)
    templates = [WireTemplate(x) for x in samples]
    now_us = time.time_ns() // 1000
    gpus = {x.gpu.uuid: x.gpu for x in samples}
    pool = await create_pool(dsn, minsize=connections, maxsize=connections)
    streams = [f"{name}-{i}" for i in range(connections)]
    async with transaction(pool) as cur:
        await ensure_streams(cur, streams)
        await upsert_gpus(
            cur,
            [GpuSighting(g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version,
                         now_us, now_us) for g in gpus.values()],
        )  # fmt: skip
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    start, begin, end = (float(x) for x in line.split())
    counted = [0]

    async def loop(i: int) -> None:
        stream = orjson.dumps(streams[i])
        seq, n = 0, len(templates)
        while time.time() < end:
            ts = time.time_ns() // 1000
            encoded = [templates[(seq + k) % n].encode(stream, seq + k, ts) for k in range(batch)]
            async with transaction(pool, begin=BEGIN_INGEST) as cur:
                bounds = await ingest_bounds(cur, fetched=True)
                stored = await store_datapoints(cur, encoded, [ts] * batch, bounds)
            if begin <= time.time() <= end:
                counted[0] += stored.inserted
            seq += batch

    await asyncio.sleep(max(0.0, start - time.time()))
    await asyncio.gather(*(loop(i) for i in range(connections)))
    pool.close()
    await pool.wait_closed()
    return {"stored": counted[0]}


async def run_ceiling(s: Settings) -> Run:
    """The batch insert alone: ``collectors`` processes of ``workers`` connections each."""
    dsn = create_database(s.admin)
    try:
        migrate_with(dsn, None)
        postmaster = postmaster_pid(dsn)
        load = os.getloadavg()
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, __file__, "_insert", dsn, f"ceiling-{i}", str(s.workers),
                str(s.batch), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            for i in range(s.collectors)
        ]  # fmt: skip
        for proc in procs:
            assert proc.stdout is not None
            if (await proc.stdout.readline()).strip() != b"ready":
                raise RuntimeError("an insert process failed to start")
        start = time.time() + 0.2
        begin, end = start + s.warmup, start + s.warmup + s.window
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start} {begin} {end}\n".encode())
            await proc.stdin.drain()
        roots = {"collector": [p.pid for p in procs]}
        if postmaster is not None:
            roots["postgres"] = [postmaster]
        await asyncio.sleep(max(0.0, begin - time.time()))
        c0, t0 = _cpu(roots), time.monotonic()
        await asyncio.sleep(max(0.0, end - time.time()))
        c1, t1 = _cpu(roots), time.monotonic()
        outputs = await asyncio.gather(*(p.communicate() for p in procs))
        results = [json.loads(out) for out, _ in outputs]
    finally:
        drop_database(s.admin, parse_dsn(dsn)["dbname"])
    return Run(
        kind="ceiling",
        code="this tree",
        offered=None,
        seconds=t1 - t0,
        stored=sum(r["stored"] for r in results),
        published=None,
        lag=None,
        buckets=[],
        max_age=None,
        api_ages=[],
        cpu={k: c1[k] - c0[k] for k in c1 if k in c0},
        load=load,
        load_after=os.getloadavg(),
    )


# --- sizing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much work fits the budget."""

    window: float
    warmup: float
    rounds: int  # full-speed + ceiling pairs (each with the compared ref too, if any)
    search_steps: int
    estimate: float  # seconds the plan should take


def plan(
    budget: float,
    overhead: float,
    loads: int,
    *,
    compare: bool = False,
    only_throughput: bool = False,
    rounds: int | None = None,
    window: float | None = None,
    warmup: float = 5.0,
    max_rounds: int = 3,
    max_steps: int = 3,
) -> Plan:
    """Fit the runs into ``budget`` seconds, given ``overhead`` seconds per run besides its
    warm-up and window (start, stop, a fresh database: from the calibration).

    First the minimum (every fixed load, the 80 % load, one full-speed and one ceiling run,
    each of the compared ref too); then, while the budget allows, longer windows, more search
    steps and more rounds, in that order of value.
    """
    per_round = 3 if compare else 2  # full, ceiling (, the ref's full)
    fixed = 0 if only_throughput else loads + 1

    def cost(w: float, r: int, steps: int) -> float:
        return (fixed + steps + r * per_round) * (overhead + warmup + w)

    lo_rounds = rounds or 1
    w = window or MIN_WINDOW
    steps = 0 if only_throughput else 1
    r = lo_rounds
    if window is None:
        while w < MAX_WINDOW and cost(w + 5, r, steps) <= budget:
            w += 5
    while not only_throughput and steps < max_steps and cost(w, r, steps + 1) <= budget:
        steps += 1
    while rounds is None and r < max_rounds and cost(w, r + 1, steps) <= budget:
        r += 1
    return Plan(w, warmup, r, steps, cost(w, r, steps))


# --- the report -------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "> 60,000"
    return f"{x * 1000:,.0f}"


def _load(x: Load) -> str:
    return " ".join(f"{v:.2f}" for v in x)


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 100:.1f} %"


def freshness_table(runs: Sequence[Run]) -> str:
    """One row per paced run, by offered load."""
    head = (
        "| offered datapoints/s | published/s | stored/s | held | p50 ms | p99 ms | max ms"
        " | within 250 ms | within 1 s | p99 < 1 s | API newest age ms (median / max)"
        " | lag at the end | CPU s per 100k: streamer / broker / collector / PostgreSQL"
        " | load before | load after |\n"
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|"
    )
    rows = []
    for r in sorted(runs, key=lambda r: r.offered or 0):
        api = (
            f"{_ms(statistics.median(r.api_ages))} / {_ms(max(r.api_ages))}" if r.api_ages else "-"
        )
        rows.append(
            f"| {r.offered:,.0f} | {r.published_per_s or 0:,.0f} | {r.stored_per_s:,.0f}"
            f" | {'yes' if r.held else 'no'} | {_ms(r.p(0.5))} | {_ms(r.p(0.99))}"
            f" | {_ms(r.max_age)} | {_pct(share_within(0.25, r.buckets)) if r.buckets else '-'}"
            f" | {_pct(share_within(1.0, r.buckets)) if r.buckets else '-'}"
            f" | {'yes' if r.fresh else 'no'} | {api} | {r.lag:,}"
            f" | {_cpu_split(r)} | {_load(r.load)} | {_load(r.load_after)} |"
        )
    return head + "\n" + "\n".join(rows)


def _cpu_split(r: Run) -> str:
    return " / ".join(
        "-" if math.isnan(v := r.cpu_per_100k(k)) else f"{v:.2f}"
        for k in ("streamer", "broker", "collector", "postgres")
    )


def throughput_table(runs: Sequence[Run]) -> str:
    """Full-speed and ceiling runs in the order they ran, with the CPU split."""
    head = (
        "| run | what | code | stored datapoints/s | lag at the end | CPU s per 100k datapoints:"
        " streamer / broker / collector / PostgreSQL / API / this script | CPU s in the window"
        " (all) | exactly once | load before | load after |\n"
        "|---:|---|---|---:|---:|---|---:|---|---|---|"
    )
    rows = []
    for i, r in enumerate(runs, 1):
        what = "the batch insert alone (ceiling)" if r.kind == "ceiling" else "full pipeline"
        split = " / ".join(
            "-" if math.isnan(v := r.cpu_per_100k(k)) else f"{v:.2f}"
            for k in ("streamer", "broker", "collector", "postgres", "api", "bench")
        )
        checked = {None: "-", True: "yes", False: "NO"}[r.rows_checked]
        rows.append(
            f"| {i} | {what} | {r.code} | {r.stored_per_s:,.0f}"
            f" | {'-' if r.lag is None else f'{r.lag:,}'} | {split}"
            f" | {sum(r.cpu.values()):.1f} | {checked} | {_load(r.load)} | {_load(r.load_after)} |"
        )
    return head + "\n" + "\n".join(rows)


def highest_fresh(runs: Sequence[Run]) -> float | None:
    """The highest offered load that passed, below every load that failed."""
    failed = [r.offered for r in runs if r.offered and not r.fresh]
    ceiling = min(failed, default=math.inf)
    passed = [r.offered for r in runs if r.offered and r.fresh and r.offered < ceiling]
    return max(passed, default=None)


# --- main -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, admin: str, tmp: Path) -> str:
    """Calibrate, plan, run; return the section's text."""
    started = dt.datetime.now(dt.UTC)
    clock0 = time.monotonic()
    loads = [float(x) for x in args.loads.split(",")] if args.loads else []
    s = Settings(args.streamers, args.collectors, args.workers, 3.0, 5.0, admin, tmp, args.batch)
    log = print if not args.quiet else (lambda *a, **k: None)
    # Calibration: one short full-speed run; its overhead is what the window does not explain.
    began = time.monotonic()
    calibration = await run_stack(s, 0)
    overhead = time.monotonic() - began - s.warmup - s.window
    log(f"calibration: {calibration.stored_per_s:,.0f} stored/s, {overhead:.1f} s of overhead"
        f" per run (load {_load(calibration.load)})", flush=True)  # fmt: skip
    p = plan(
        args.budget - (time.monotonic() - clock0),
        overhead,
        len(loads),
        compare=args.compare is not None,
        only_throughput=args.only_throughput,
        rounds=args.rounds,
        window=args.window,
    )
    log(f"plan: {p}", flush=True)
    s.warmup, s.window = p.warmup, p.window
    ref_path = baseline_tree(args.compare, tmp / "ref") if args.compare else None
    throughput: list[Run] = []
    for r in range(p.rounds):
        kinds = ["full", "ceiling"] + (["ref"] if args.compare else [])
        if r % 2:
            kinds.reverse()  # alternate: a drift in the machine's load weighs on every kind
        for kind in kinds:
            if kind == "ceiling":
                run = await run_ceiling(s)
            elif kind == "ref":
                run = await run_stack(s, 0, code=args.compare, pythonpath=ref_path)
            else:
                run = await run_stack(s, 0)
            throughput.append(run)
            log(f"{kind} ({run.code}): {run.stored_per_s:,.0f} stored/s (load {_load(run.load)})",
                flush=True)  # fmt: skip
    full = [r for r in throughput if r.kind == "full" and r.code == "this tree"]
    ceiling = [r for r in throughput if r.kind == "ceiling"]
    ref = [r for r in throughput if r.code != "this tree"]
    med_full = statistics.median(r.stored_per_s for r in full)
    med_ceiling = statistics.median(r.stored_per_s for r in ceiling)
    paced: list[Run] = []

    async def at(load: float) -> Run:
        run = await run_stack(s, load)
        paced.append(run)
        log(f"offered {load:,.0f}/s: stored {run.stored_per_s:,.0f}/s, p99 {_ms(run.p(0.99))} ms,"
            f" max {_ms(run.max_age)} ms, {'fresh' if run.fresh else 'NOT fresh'}"
            f" (load {_load(run.load)})", flush=True)  # fmt: skip
        return run

    eighty = round(0.8 * med_full, -2)
    if not args.only_throughput:
        for load in loads:
            await at(load)
        await at(eighty)
        for _ in range(p.search_steps):
            best = highest_fresh(paced) or 0.0
            above = [r.offered for r in paced if r.offered and r.offered > best and not r.fresh]
            top = min(above, default=None)
            if top is None:
                top = max(med_full, best) * 1.25  # everything passed: look above
            nxt = round((best + top) / 2, -2)
            if nxt <= best or nxt >= top or any(r.offered == nxt for r in paced):
                break
            await at(nxt)
    elapsed = time.monotonic() - clock0
    command = "uv run task bench:pipeline" + (f" -- {args.argv}" if args.argv else "")
    text = f"""{SECTION}

Written by `task bench:pipeline` (`scripts/bench_pipeline.py`); do not edit by hand.

- Date: {started:%Y-%m-%d %H:%M} UTC (the run took {elapsed / 60:.1f} min); command: `{command}`
- Machine: {machine()}; load average (1, 5, 15 min) before the run {_load(calibration.load)},
  and before and after each run in the tables. Everything (streamers, broker, collectors,
  PostgreSQL, the API and this script) shares these cores with whatever else the machine runs.
- Setup: {args.streamers} streamers, {args.collectors} collectors of {args.workers} workers
  (rounds of up to {args.batch} records), the broker with fsync before every publish ack,
  embedded PostgreSQL 18 with default settings (synchronous commit); each run on a fresh
  database and a fresh broker, {p.warmup:.0f} s of warm-up, then a {p.window:.0f} s window.
  Sized from a calibration run ({calibration.stored_per_s:,.0f} datapoints/s at full speed,
  {overhead:.0f} s to start and stop a stack) to fit {args.budget:.0f} s: {p.rounds} round(s) of
  full speed and ceiling, {p.search_steps} search step(s).
"""
    if paced:
        fresh_top = highest_fresh(paced)
        eighty_run = next((r for r in paced if r.offered == eighty), None)
        ten_k = next((r for r in paced if r.offered == 10_000), None)
        text += f"""
### Freshness at fixed offered loads

Freshness is commit time minus the datapoint's processing timestamp (the `ts` its streamer
stamped, one rate interval apart within a claimed chunk). p50 and p99 are interpolated within
the collectors' histogram buckets (as `histogram_quantile` does); the shares within 250 ms and 1 s
are exact (bucket bounds); max is exact (the oldest datapoint of each committed round, from the
collectors' log). "held": at least {HELD:.0%} of the offered load was published and stored. The
API column is `telemetry_api_newest_datapoint_age_seconds` scraped once a second: the age of the
newest datapoint a reader can get.

{freshness_table(paced)}

- Highest offered load with p99 freshness under 1 s (and held):
  **{"none" if fresh_top is None else f"{fresh_top:,.0f} datapoints/s"}**; the highest
  sustainable load (median stored datapoints/s at full speed, below) is {med_full:,.0f}/s, so
  {"-" if fresh_top is None else f"{fresh_top / med_full:.0%}"} of it (target at least 80 %:
  {"met" if fresh_top is not None and fresh_top >= 0.8 * med_full else "NOT met"}); at 80 % of it
  ({eighty:,.0f}/s) p99 is {_ms(eighty_run.p(0.99)) if eighty_run else "-"} ms
  ({"met" if eighty_run and eighty_run.fresh else "NOT met"}).
- At 10,000 datapoints/s: p99 {_ms(ten_k.p(0.99)) if ten_k else "-"} ms (target under 250 ms:
  {"met" if ten_k and ten_k.held and share_within(0.25, ten_k.buckets) > 0.99 else "NOT met"}).
"""
    text += f"""
### Throughput at {args.streamers}x{args.collectors}, its ceiling and the CPU split

Full speed: the streamers unlimited, stored datapoints/s counted by the collectors over the
window (and checked against the table's rows at the end: exactly once). The ceiling: the aiopg
batch insert alone, `store_datapoints` in the collectors' transaction ({args.collectors}
processes x {args.workers} connections, {args.batch} datapoints per transaction, the same
partitioned table, no broker, no decoding). CPU seconds per 100,000 stored datapoints from
`/proc` (each process with its children: the broker's fsync helper, every PostgreSQL backend);
in the ceiling rows "collector" is the inserting processes.

{throughput_table(throughput)}

- Median stored datapoints/s at full speed: **{med_full:,.0f}**; the ceiling:
  **{med_ceiling:,.0f}**; ratio **{med_full / med_ceiling:.0%}** (targets: at least 50,000/s:
  {"met" if med_full >= 50_000 else "NOT met"}; at least 60 % of the ceiling:
  {"met" if med_full >= 0.6 * med_ceiling else "NOT met"}).
"""
    if ref:
        med_ref = statistics.median(r.stored_per_s for r in ref)
        text += f"""- `{args.compare}` at full speed, alternating with this tree: median
  {med_ref:,.0f}/s; this tree {med_full / med_ref:.2f}x.
"""
    return text


def main() -> None:
    """Entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "_insert":
        dsn, name, conns, batch = sys.argv[2:6]
        result = asyncio.run(insert_worker(dsn, name, int(conns), int(batch)))
        print(json.dumps(result))
        return
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--source", choices=("csv", "scrape"), default="csv")
    chosen, rest = source.parse_known_args()
    if chosen.source == "scrape":
        import bench_scrape

        bench_scrape.main(rest)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streamers", type=int, default=2)
    p.add_argument("--collectors", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="worker loops per collector")
    p.add_argument("--batch", type=int, default=1000, help="records per collector round")
    p.add_argument("--loads", default="10000,20000,40000", help="offered datapoints/s, in all")
    p.add_argument("--budget", type=float, default=900.0, help="seconds the whole run may take")
    p.add_argument("--window", type=float, help="measured seconds per run (default: planned)")
    p.add_argument("--rounds", type=int, help="full-speed/ceiling rounds (default: planned)")
    p.add_argument("--compare", metavar="REF", help="also run REF's code at full speed")
    p.add_argument("--only-throughput", action="store_true", help="no paced runs")
    p.add_argument("--database-url", help="PostgreSQL admin DSN instead of the embedded server")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    args.argv = " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        if args.database_url:
            text = asyncio.run(bench(args, args.database_url, Path(tmp)))
        else:
            with embedded_server(Path(tmp) / "pg", keep=False) as admin:
                text = asyncio.run(bench(args, admin, Path(tmp)))
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
        print(f"wrote the {SECTION!r} section of {DOC}")


if __name__ == "__main__":
    main()

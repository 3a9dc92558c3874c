"""The chaos run: the whole stack as processes under seeded faults, then exact accounting.

Phases:

1. **Start**: an embedded PostgreSQL of the run's own, migrated; the broker on a fixed port
   (it comes back there after each kill), one collector, the API and one streamer.
2. **Faults** for ``minutes``: the schedule (``schedule.build_schedule``) kills the broker,
   collectors and streamers with SIGKILL (each replaced or restarted at once), crashes
   PostgreSQL (SIGKILL of the postmaster, then a start: crash recovery) and stops it for an
   outage, and scales each side 1 -> max -> 1 (leaving by SIGTERM or by SIGKILL). The API is
   probed throughout; it may answer 200 or, while the database is away, a 503 problem.
3. **Stop producing**: every streamer gets SIGTERM (it publishes its chunk to the end first).
   Chunks of killed streamers may still be claimed, so one more streamer runs with
   ``STREAMER_LOOPS`` set to the loops ``next_seq`` reached: it takes those chunks over, claims
   up to the end of that loop and finishes once no chunk of the stream is left. From then on
   ``next_seq`` is the run's final count.
4. **Drain and account**: every sequence number below ``next_seq`` stored, the consumer group
   with no lag and nothing in flight, no dead letter; every process stopped with SIGTERM
   exits 0 (those killed by the schedule do not count); then ``accounting.account``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TextIO

import aiohttp
import psycopg2
from telemetry_model import read_samples
from telemetry_store import create_pool, migrate

from ..postgres import create_database, embedded_server, start_server, stop_server
from ..procs import ServiceProcess, process_alive
from ..stack import Stack, StackConfig
from .accounting import Accounting, account
from .schedule import ChaosConfig, Event, Kind, build_schedule, describe, limit_for

log = logging.getLogger(__name__)

GROUP: Final = "collectors"
# SIGTERM to exit: the services' graceful (10 s) plus shutdown (8 s) budgets, with room.
STOP_TIMEOUT: Final = 40.0
# A service's start on a busy two-core machine (imports alone take seconds), and the broker's
# recovery of its log.
READY_TIMEOUT: Final = 180.0
# Messages of the services' logs the run counts.
_TAKEOVER: Final = "taking over seq"
_CLAIM_FAILED: Final = "claiming from the work index failed"
_OUT_OF_IDS: Final = "reached maximum value of sequence"
# Hypercorn's line once it listens: the service has its SIGTERM handler and is at work. A
# SIGTERM before that (while it still imports, which takes up to a minute on a busy machine)
# ends it with the signal's default action, before it has claimed or fetched anything.
_SERVING: Final = "Running on http"
# What the logging module prints when a record cannot be formatted.
_LOGGING_ERROR: Final = "--- Logging error ---"
# The streamers' client-side timeout of a statement (``telemetry_store.create_pool``).
_CLIENT_TIMEOUT: Final = 30.0
# How a claim fails on a connection the database dropped, or could not take.
_DROPPED_CONNECTION: Final = frozenset(
    {
        "psycopg2.OperationalError",  # refused, closed, starting up, shutting down
        "psycopg2.InterfaceError",  # connection already closed
        "psycopg2.errors.AdminShutdown",
        "psycopg2.errors.CrashShutdown",
        "psycopg2.errors.CannotConnectNow",
    }
)
# ... and how it may fail while the database is away: also the client's timeout.
_DATABASE_AWAY: Final = _DROPPED_CONNECTION | {"TimeoutError"}


@dataclass
class Outcome:
    """What a chaos run did and found."""

    seed: int
    minutes: float
    directory: str
    problems: list[str] = field(default_factory=list)
    planned: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    accounting: Accounting | None = None
    claims_new: int = 0
    takeovers: int = 0
    claim_failures: int = 0
    claim_failures_outside_db_faults: int = 0
    claim_errors_unexplained: list[str] = field(default_factory=list)
    processes_started: int = 0
    processes_killed: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    api_answers: dict[str, int] = field(default_factory=dict)
    error_lines: dict[str, int] = field(default_factory=dict)
    other_lines: int = 0
    dead_letters: int = -1
    lag: int = -1
    in_flight: int = -1
    max_streamers: int = 0
    max_collectors: int = 0
    fault_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True if nothing was wrong."""
        return not self.problems and self.accounting is not None

    @property
    def claims(self) -> int:
        """Claims made: new chunks plus chunks taken over from streamers that died."""
        return self.claims_new + self.takeovers

    def report(self) -> str:
        """The summary as text (the seed and the first problems if it failed)."""
        a = self.accounting
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        exits = Counter(self.exits.values())
        lines = [
            f"chaos run: seed {self.seed}, {self.minutes:g} min of faults,"
            f" {self.seconds:.0f} s in all ({self.directory})",
            f"faults done: {faults}",
            f"peak replicas: {self.max_streamers} streamers, {self.max_collectors} collectors",
            f"claims: {self.claims:,} ({self.claims_new:,} new chunks, {self.takeovers:,}"
            f" taken over); failed claims {self.claim_failures}:"
            f" {self.claim_failures - self.claim_failures_outside_db_faults} during a database"
            f" fault, {self.claim_failures_outside_db_faults - len(self.claim_errors_unexplained)}"
            f" later on a connection a fault had dropped, {len(self.claim_errors_unexplained)}"
            " otherwise",
        ]
        if a is not None:
            lines.append(
                f"datapoints: {a.stored:,} stored, next_seq {a.next_seq:,}; missing {a.missing},"
                f" twice {a.duplicated}, past next_seq {a.out_of_range}, off the CSV"
                f" {a.wrong_values}, chunks with inconsistent times {a.inconsistent_chunks},"
                f" chunks left {a.pending_chunks}"
            )
        lines += [
            f"broker: dead letters {self.dead_letters}, group lag {self.lag},"
            f" in flight {self.in_flight}",
            f"processes: {self.processes_started} started, {self.processes_killed} killed by"
            f" the schedule, {len(self.exits)} stopped with SIGTERM (exit codes"
            f" {dict(sorted(exits.items()))})",
            "API answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.api_answers.items())),
            "error log lines: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.error_lines.items())) or "none")
            + f"; lines that are not JSON: {self.other_lines}",
        ]
        if self.ok:
            lines.append("OK: every sequence number stored exactly once, as in the CSV")
        else:
            lines.append(f"FAILED (replay with --seed {self.seed}):")
            lines += [f"  - {p}" for p in self.problems[:20]]
            if len(self.problems) > 20:
                lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


def stable_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, for a broker restarted on it.

    Outgoing connections take their local ports from the ephemeral range, so none of them can
    hold this port while the broker is down between a kill and its restart.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(10_000, max(low, 10_001)), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class _ChaosStack(Stack):
    """The devstack ``Stack`` plus replicas started without waiting for them."""

    def spawn(self, side: str) -> ServiceProcess:
        """A new streamer or collector (not started yet), counted in the stack."""
        if side == "streamer":
            proc = self._streamer()
            self.streamers.append(proc)
        else:
            proc = self._collector()
            self.collectors.append(proc)
        return proc


async def run_chaos(
    config: ChaosConfig,
    *,
    directory: Path | None = None,
    keep: bool = False,
    out: TextIO = sys.stdout,
) -> Outcome:
    """Run the chaos run of ``config``; its logs (and on failure its data) stay in the
    run's directory (``directory``, or a new one under the temp dir)."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="telemetry-chaos-"))
    directory.mkdir(parents=True, exist_ok=True)
    run = _Run(config, directory.resolve(), out)
    try:
        await run.run()
    finally:
        run.close()
    if run.outcome.ok and not keep:
        # The data is large (the broker's log, the database); the logs and summary stay.
        for sub in ("postgres", "broker"):
            shutil.rmtree(directory / sub, ignore_errors=True)
    return run.outcome


class _Run:
    def __init__(self, config: ChaosConfig, directory: Path, out: TextIO) -> None:
        self.cfg = config
        self.dir = directory
        self.out = out
        self.outcome = Outcome(seed=config.seed, minutes=config.minutes, directory=str(directory))
        self.rng = random.Random(config.seed + 1)  # choices while running (victims, delays)
        self.samples = read_samples(config.csv_path, skip_bad_rows=True)
        self.began = self.t0 = time.monotonic()
        self.pg_data = directory / "postgres"
        self.dsn = ""
        self.stack: _ChaosStack | None = None
        self.killed: set[str] = set()
        self.stopping: set[str] = set()
        self.crashed: set[str] = set()
        self.serving: set[str] = set()
        self.logging_failed: set[str] = set()
        self.db_faults: list[tuple[float, float]] = []  # monotonic windows
        self.claim_failed_at: list[tuple[float, str]] = []  # when, the exception's type
        self.tasks: set[asyncio.Task[Any]] = set()
        self.db_lock = asyncio.Lock()
        self.broker_lock = asyncio.Lock()
        self.files: dict[str, IO[str]] = {}
        (directory / "logs").mkdir(exist_ok=True)
        self.events_log = (directory / "chaos.log").open("a", buffering=1)
        self.faults: Counter[str] = Counter()
        self.api_answers: Counter[str] = Counter()
        self.error_lines: Counter[str] = Counter()
        self.broker_restarts = 0
        self.finisher: ServiceProcess | None = None

    # -- bookkeeping -------------------------------------------------------------------

    def say(self, message: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {message}"
        self.out.write(line + "\n")
        self.out.flush()
        self.events_log.write(line + "\n")
        self.events_log.flush()

    def problem(self, message: str) -> None:
        self.outcome.problems.append(message)
        self.say(f"PROBLEM: {message}")

    def sink(self, name: str, line: str) -> None:
        """Every line of every service: to its log file, and counted where it matters."""
        f = self.files.get(name)
        if f is None:
            # Line-buffered: a process killed mid-run leaves its last lines on disk.
            f = self.files[name] = (self.dir / "logs" / f"{name}.log").open("a", buffering=1)
        f.write(line + "\n")
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            # Services log JSON lines; anything else went around the logging config.
            self.outcome.other_lines += 1
            if _OUT_OF_IDS in line:
                self.problem(f"{name}: {line.strip()[:300]}")
            if line.startswith(_LOGGING_ERROR) and name not in self.logging_failed:
                self.logging_failed.add(name)
                self.problem(f"{name} failed to log a line (see its log)")
            return
        message = str(record.get("message", ""))
        if record.get("level") in ("ERROR", "CRITICAL"):
            self.error_lines[name.split("-")[0]] += 1
        if message.startswith(_SERVING):
            self.serving.add(name)
        if _TAKEOVER in message:
            self.outcome.takeovers += 1
        if _CLAIM_FAILED in message:
            error = _exception_type(str(record.get("exception", "")))
            self.claim_failed_at.append((time.monotonic(), error))
        if _OUT_OF_IDS in line:
            self.problem(f"{name}: a counter ran out: {message[:300]}")

    def spawned(self, task: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(task)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.events_log.close()

    @property
    def st(self) -> _ChaosStack:
        assert self.stack is not None
        return self.stack

    def live(self, side: str) -> list[ServiceProcess]:
        procs = self.st.streamers if side == "streamer" else self.st.collectors
        gone = self.killed | self.stopping | self.crashed
        return [p for p in procs if p.name not in gone and p.returncode is None]

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.cfg
        schedule = build_schedule(cfg)
        self.outcome.planned = describe(schedule)
        self.say(
            f"seed {cfg.seed}: {cfg.minutes:g} min, {cfg.rate:g} datapoints/s a streamer,"
            f" chunks of {cfg.chunk_size}; planned: {self.outcome.planned}"
        )
        with contextlib.ExitStack() as pg:
            admin = await asyncio.to_thread(
                pg.enter_context, embedded_server(self.pg_data, keep=True)
            )
            self.dsn = await asyncio.to_thread(create_database, admin, "chaos", exist_ok=True)
            interrupted = False
            try:
                await self._run(schedule)
            except asyncio.CancelledError:
                interrupted = True
                self.problem("interrupted")
            except Exception as e:
                log.exception("the chaos run failed")
                self.problem(f"the run itself failed: {type(e).__name__}: {e}")
            finally:
                await self._teardown()
                self.outcome.seconds = time.monotonic() - self.began
                try:
                    await asyncio.to_thread(pg.close)
                except Exception as e:
                    self.problem(f"stopping PostgreSQL failed: {e}")
        self._finish_outcome()
        (self.dir / "summary.json").write_text(json.dumps(asdict(self.outcome), indent=2) + "\n")
        self.out.write(self.outcome.report() + "\n")
        self.out.flush()
        if interrupted:
            raise asyncio.CancelledError

    async def _run(self, schedule: list[Event]) -> None:
        cfg = self.cfg
        pool = await create_pool(self.dsn, maxsize=1)
        try:
            await migrate(pool)
        finally:
            pool.close()
            await pool.wait_closed()
        self.started_us = time.time_ns() // 1000
        self.stack = _ChaosStack(
            StackConfig(
                database_url=self.dsn,
                data_dir=self.dir,
                csv_path=cfg.csv_path.resolve(),
                streamers=1,
                collectors=1,
                api_port=0,
                broker_port=stable_port(),
                rate=cfg.rate,
                topic=cfg.topic,
                log_format="json",
                extra_env=self._env(),
            ),
            sink=self.sink,
        )
        self.say("starting the stack")
        await self.st.start(timeout=READY_TIMEOUT)
        self.outcome.processes_started = len(self.st.processes)
        self.outcome.max_streamers = self.outcome.max_collectors = 1
        self.say(f"stack ready: broker {self.st.broker.url if self.st.broker else ''}")

        self.t0 = time.monotonic()
        self.say("faults begin (times from here)")
        watch = asyncio.create_task(self._watch())
        probe = asyncio.create_task(self._probe_api())
        try:
            await self._faults(schedule)
            self.outcome.fault_seconds = time.monotonic() - self.t0
            await self._stop_producing()
            await self._drain()
        finally:
            for t in (watch, probe):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await self._stop_the_rest()
        await self._account()

    def _env(self) -> dict[str, str]:
        cfg = self.cfg
        env = {
            "STREAMER_STREAM": cfg.stream,
            "STREAMER_CHUNK_SIZE": str(cfg.chunk_size),
            "STREAMER_BATCH_SIZE": str(min(cfg.chunk_size, 10_000)),
            "STREAMER_CHUNK_LEASE": str(cfg.chunk_lease),
            "COLLECTOR_WORKERS": "2",
            "COLLECTOR_BATCH_SIZE": "500",
            "COLLECTOR_ACK_WAIT": str(cfg.ack_wait),
            "COLLECTOR_STATEMENT_TIMEOUT": str(min(10.0, cfg.ack_wait / 3)),
            "COLLECTOR_MAX_BACKOFF": "2",
            "API_POOL_MAX_SIZE": "4",
            # Small segments and a short retention: consumed log goes, so a restarted broker
            # recovers a few segments, not the whole run.
            "BROKER_SEGMENT_BYTES": str(8 << 20),
            "BROKER_WAL_SEGMENT_BYTES": str(16 << 20),
            "BROKER_RETENTION_AGE": "60",
        }
        env.update(self.cfg.extra_env)
        return env

    # -- faults -----------------------------------------------------------------------

    async def _faults(self, schedule: list[Event]) -> None:
        """Each event at its time, in a task of its own: a slow one (a replica that takes a
        minute to start, a broker recovering) delays no other, and an outage lasts its length.
        """
        for event in schedule:
            delay = self.t0 + event.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule's clock
            self.spawned(self._event(event))
        rest = self.t0 + self.cfg.seconds - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)  # the schedule's clock
        if self.tasks:
            self.say(f"waiting for {len(self.tasks)} fault steps still under way")
            await asyncio.gather(*self.tasks)
        self.say(f"faults over: {dict(sorted(self.faults.items()))}")

    async def _event(self, event: Event) -> None:
        try:
            if event.kind in (Kind.PG_CRASH, Kind.PG_OUTAGE, Kind.PG_BACK):
                async with self.db_lock:  # an outage's end waits for its start
                    await self._do(event)
            elif event.kind is Kind.BROKER_KILL:
                async with self.broker_lock:
                    await self._do(event)
            else:
                await self._do(event)
        except Exception as e:
            log.exception("%s failed", event.kind)
            self.problem(f"{event.kind} at {event.at:.1f} s failed: {type(e).__name__}: {e}")
        o = self.outcome
        o.max_streamers = max(o.max_streamers, len(self.live("streamer")))
        o.max_collectors = max(o.max_collectors, len(self.live("collector")))

    async def _do(self, event: Event) -> None:
        kind = event.kind
        if kind is Kind.SCALE_UP:
            top = self.cfg.max_streamers if event.side == "streamer" else self.cfg.max_collectors
            if len(self.live(event.side)) < top:
                proc = self.st.spawn(event.side)
                self.say(f"scale up: {proc.name}, {len(self.live(event.side))} {event.side}s")
                await self._start(proc)
        elif kind is Kind.SCALE_DOWN:
            if len(self.live(event.side)) <= 1:
                return
            victim = await self._victim(event.side)
            if victim is None or len(self.live(event.side)) <= 1:
                return
            how = "sigterm" if event.graceful else "kill"
            self.faults[f"scale_down_{event.side}_{how}"] += 1
            self.say(f"scale down: {victim.name} ({how}), {len(self.live(event.side)) - 1} left")
            if event.graceful:
                await self._stop(victim)
            else:
                await self._kill(victim)
        elif kind is Kind.BROKER_KILL:
            await self._kill_broker()
        elif kind in (Kind.COLLECTOR_KILL, Kind.STREAMER_KILL):
            side = "collector" if kind is Kind.COLLECTOR_KILL else "streamer"
            victim = await self._victim(side)
            if victim is None:
                return
            await self._kill(victim)
            self.say(f"{kind}: {victim.name} killed; starting a replacement")
            await self._spawn(side)
        elif kind is Kind.PG_CRASH:
            await self._crash_postgres()
        elif kind is Kind.PG_OUTAGE:
            began = time.monotonic()
            self.db_faults.append((began, float("inf")))
            await asyncio.to_thread(stop_server, self.pg_data, mode="fast")
            self.say(f"{kind}: PostgreSQL stopped for {self.cfg.outage_seconds:g} s")
        elif kind is Kind.PG_BACK:
            await asyncio.to_thread(start_server, self.pg_data)
            began, _ = self.db_faults[-1]
            self.db_faults[-1] = (began, time.monotonic())
            self.say(f"{kind}: PostgreSQL started after {time.monotonic() - began:.0f} s")
            return  # the end of an outage, counted at its start
        if kind not in (Kind.SCALE_UP, Kind.SCALE_DOWN):
            self.faults[str(kind)] += 1

    async def _victim(self, side: str) -> ServiceProcess | None:
        """A random replica of ``side`` at work (waiting for one to start if need be).

        The caller marks it (killed or stopping) before it awaits anything, so no other
        step picks it too.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while not (working := [p for p in self.live(side) if p.name in self.serving]):
            if time.monotonic() > deadline:
                self.problem(f"no {side} came up in {READY_TIMEOUT:g} s")
                return None
            await asyncio.sleep(1.0)  # polling a condition with a deadline
        return self.rng.choice(working)

    async def _spawn(self, side: str) -> ServiceProcess:
        proc = self.st.spawn(side)
        await self._start(proc)
        return proc

    async def _start(self, proc: ServiceProcess) -> None:
        self.outcome.processes_started += 1
        await proc.start()

    async def _kill(self, proc: ServiceProcess) -> None:
        self.killed.add(proc.name)
        proc.kill()
        await proc.wait()
        self.outcome.processes_killed += 1

    async def _stop(self, proc: ServiceProcess, *, when_serving: bool = False) -> int:
        """SIGTERM: the process must exit 0 within the services' shutdown budget.

        ``when_serving``: not before it is at work (a replica still starting is waited for).
        """
        self.stopping.add(proc.name)
        deadline = time.monotonic() + READY_TIMEOUT
        while when_serving and proc.name not in self.serving and proc.returncode is None:
            if time.monotonic() > deadline:
                self.problem(f"{proc.name} did not come up in {READY_TIMEOUT:g} s")
                break
            await asyncio.sleep(0.5)  # polling a condition with a deadline
        code = await proc.stop(STOP_TIMEOUT)
        self.outcome.exits[proc.name] = code
        if code != 0:
            tail = " | ".join(proc.lines[-5:])
            self.problem(f"{proc.name} exited with {code} on SIGTERM; last lines: {tail}")
        return code

    async def _kill_broker(self) -> None:
        old = self.st.broker
        assert old is not None
        await self._kill(old)
        await asyncio.sleep(self.rng.uniform(0.0, 2.0))  # down for a moment
        began = time.monotonic()
        await self._restart_broker(old)
        self.say(f"broker_kill: {old.name} killed, back in {time.monotonic() - began:.1f} s")

    async def _restart_broker(self, old: ServiceProcess) -> None:
        """A new broker process on the old one's data directory and port."""
        self.broker_restarts += 1
        new = ServiceProcess(
            f"broker-{self.broker_restarts}",
            old.module,
            port=old.port,
            env=old.env,
            sink=self.sink,
        )
        self.st.broker = new
        await self._start(new)
        await new.wait_ready(READY_TIMEOUT)

    async def _crash_postgres(self) -> None:
        """SIGKILL the postmaster; once its processes are gone, start it (crash recovery)."""
        pid = int((self.pg_data / "postmaster.pid").read_text().split()[0])
        children = _children(pid)
        began = time.monotonic()
        self.db_faults.append((began, float("inf")))
        os.kill(pid, signal.SIGKILL)
        # The backends notice the postmaster's death and exit; a new postmaster refuses to
        # start while any of them still holds the old shared memory.
        deadline = began + 60.0
        while any(process_alive(p) for p in (pid, *children)):
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL's backends outlived their postmaster by 60 s")
            await asyncio.sleep(0.2)  # polling a condition with a deadline
        # The killed postmaster keeps its pid until it is reaped, and a start that finds it
        # refuses to run ("lock file already exists"): hence the retries.
        for attempt in range(5):
            try:
                await asyncio.to_thread(start_server, self.pg_data)
                break
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(2.0)  # pause before trying the start again
        self.db_faults[-1] = (began, time.monotonic())
        self.say(
            f"pg_crash: postmaster {pid} killed, recovered in {time.monotonic() - began:.1f} s"
        )

    # -- watchers ---------------------------------------------------------------------

    async def _watch(self) -> None:
        """A process that exits without being killed or stopped is a problem; replace it."""
        while True:
            await asyncio.sleep(1.0)  # the watcher's period
            for p in self.st.processes:
                if p.returncode is None or p.name in self.killed | self.stopping | self.crashed:
                    continue
                self.crashed.add(p.name)
                tail = " | ".join(p.lines[-5:])
                self.problem(f"{p.name} exited with {p.returncode} on its own: {tail}")
                if p is self.st.broker:
                    await self._restart_broker(p)
                elif p.name.startswith(("streamer", "collector")) and p is not self.finisher:
                    await self._spawn(p.name.split("-")[0])

    async def _probe_api(self) -> None:
        """The API answers 200, or 503 problem+json while the database is away; never else."""
        async with aiohttp.ClientSession() as http:
            while True:
                await asyncio.sleep(2.0)  # the probe's period
                assert self.st.api is not None
                url = f"{self.st.api.url}/api/v1/gpus?limit=5"
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as r:
                        body = await r.read()
                        key = f"{r.status}"
                        if r.status == 503:
                            ok = r.content_type == "application/problem+json"
                        else:
                            ok = r.status == 200
                except (aiohttp.ClientError, TimeoutError) as e:
                    key, ok, body = f"no answer ({type(e).__name__})", False, b""
                self.api_answers[key] += 1
                if not ok and self.api_answers[key] <= 3:
                    self.problem(f"the API answered {key}: {body[:300]!r}")

    # -- the end ----------------------------------------------------------------------

    async def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            conn = psycopg2.connect(self.dsn, connect_timeout=10)
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    return list(cur.fetchall())
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def _progress(self) -> tuple[int, int, int]:
        """(next_seq, chunks claimed, datapoints stored) of the run's stream."""
        rows = await self._query(
            "SELECT s.next_seq, (SELECT count(*) FROM stream_chunks c WHERE c.stream_id = s.id),"
            " (SELECT count(*) FROM telemetry t WHERE t.stream_id = s.id)"
            " FROM streams s WHERE s.name = %s",
            (self.cfg.stream,),
        )
        if not rows:
            return 0, 0, 0
        n, chunks, stored = rows[0]
        return int(n), int(chunks), int(stored)

    async def _until(
        self, condition: Callable[[], Awaitable[bool]], *, timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(1.0)  # polling a condition with a deadline

    async def _stop_producing(self) -> None:
        assert self.st.broker is not None
        await self.st.broker.wait_ready(READY_TIMEOUT)
        streamers = self.live("streamer")
        self.say(f"stopping {len(streamers)} streamers with SIGTERM")
        await asyncio.gather(*(self._stop(p, when_serving=True) for p in streamers))
        n, chunks, _ = await self._progress()
        loops = limit_for(n, len(self.samples))
        self.say(f"next_seq {n:,}, {chunks} chunks still claimed; a streamer finishes loop {loops}")
        proc = self.st.spawn("streamer")
        proc.env["STREAMER_LOOPS"] = str(loops)
        self.finisher = proc
        await self._start(proc)
        limit = loops * len(self.samples)

        async def finished() -> bool:
            n, chunks, _ = await self._progress()
            return n == limit and chunks == 0

        await self._until(
            finished,
            timeout=self.cfg.chunk_lease + READY_TIMEOUT + (limit - n) / max(self.cfg.rate, 1.0),
            what=f"every chunk below {limit:,} published",
        )
        await self._stop(proc)
        self.say(f"producing stopped: next_seq {limit:,}")

    async def _drain(self) -> None:
        n, _, stored = await self._progress()
        last = (stored, time.monotonic())
        while stored < n:
            await asyncio.sleep(1.0)  # polling the count, with a deadline on progress
            _, _, stored = await self._progress()
            if stored != last[0]:
                last = (stored, time.monotonic())
            elif time.monotonic() - last[1] > self.cfg.drain_timeout:
                raise TimeoutError(
                    f"draining stalled at {stored:,} of {n:,} datapoints for"
                    f" {self.cfg.drain_timeout:g} s"
                )
        self.say(f"drained: {stored:,} datapoints stored")
        assert self.st.broker is not None
        url = self.st.broker.url
        async with aiohttp.ClientSession() as http:

            async def settled() -> bool:
                async with http.get(f"{url}/v1/topics/{self.cfg.topic}/groups/{GROUP}/") as r:
                    stats = await r.json()
                self.outcome.lag, self.outcome.in_flight = stats["lag"], stats["in_flight"]
                return self.outcome.lag == 0 and self.outcome.in_flight == 0

            try:
                await self._until(settled, timeout=2 * self.cfg.ack_wait + 30, what="no lag")
            except TimeoutError:
                self.problem(
                    f"the group still has lag {self.outcome.lag} and"
                    f" {self.outcome.in_flight} records in flight"
                )
            async with http.get(f"{url}/v1/topics/{self.cfg.topic}/dead-letters/?limit=5") as r:
                report = await r.json() if r.status == 200 else {"records": 0}
            async with http.get(f"{url}/v1/topics/{self.cfg.topic}.dlq") as r:
                dlq = (await r.json())["records"] if r.status == 200 else 0
        self.outcome.dead_letters = max(int(report["records"]), int(dlq))
        if self.outcome.dead_letters:
            self.problem(
                f"{self.outcome.dead_letters} dead letters: by reason {report.get('by_reason')},"
                f" errors {report.get('by_error')}"
            )

    async def _stop_the_rest(self) -> None:
        collectors = self.live("collector")
        await asyncio.gather(*(self._stop(p, when_serving=True) for p in collectors))
        for proc in (self.st.api, self.st.broker):
            if proc is not None and proc.returncode is None:
                await self._stop(proc)

    async def _account(self) -> None:
        cfg = self.cfg
        self.say("accounting")
        result = await asyncio.to_thread(
            account,
            self.dsn,
            stream=cfg.stream,
            samples=self.samples,
            chunk_size=cfg.chunk_size,
            tick_ns=round(1e9 / cfg.rate) if cfg.rate > 0 else 0,
            since_us=self.started_us - 1_000_000,
            until_us=time.time_ns() // 1000,
        )
        self.outcome.accounting = result
        self.outcome.claims_new = -(-result.next_seq // cfg.chunk_size)
        for p in result.problems:
            self.problem(p)

    async def _teardown(self) -> None:
        """Whatever still runs (after a failure) is stopped: SIGTERM, then SIGKILL."""
        for t in list(self.tasks):
            t.cancel()
        if self.stack is None:
            return
        procs = [p for p in self.st.processes if p.returncode is None]
        if procs:
            self.say(f"tearing down {len(procs)} processes")
            await asyncio.gather(*(p.stop(STOP_TIMEOUT) for p in procs), return_exceptions=True)
        # The database may be down after a failure in the middle of a fault.
        if not (self.pg_data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(start_server, self.pg_data)

    def _finish_outcome(self) -> None:
        o = self.outcome
        o.faults = dict(sorted(self.faults.items()))
        o.api_answers = dict(self.api_answers)
        o.error_lines = dict(self.error_lines)
        o.claim_failures = len(self.claim_failed_at)
        # A claim may fail with a connection error or the client's timeout if it was under
        # way while the database was away (it began at most the store's client timeout before
        # it failed: a statement sent as the postmaster died has waited that long) or just
        # after (the streamer's retry comes round). Later, only a pooled connection the
        # database dropped in a fault may fail once (its streamer was busy publishing
        # meanwhile). Any other error (a deadlock, a counter run out) is the work index's.
        grace = 15.0
        first_fault = min((a for a, _ in self.db_faults), default=float("inf"))
        for at, error in self.claim_failed_at:
            if error in _DATABASE_AWAY and any(
                a <= at and at - _CLIENT_TIMEOUT <= b + grace for a, b in self.db_faults
            ):
                continue
            o.claim_failures_outside_db_faults += 1
            if not (at >= first_fault and error in _DROPPED_CONNECTION):
                o.claim_errors_unexplained.append(error)
        if o.claim_errors_unexplained:
            shown = sorted(set(o.claim_errors_unexplained))[:3]
            o.problems.append(
                f"{len(o.claim_errors_unexplained)} claims failed, not for a database fault:"
                f" {shown}"
            )


def _exception_type(traceback: str) -> str:
    """The exception's type in a formatted traceback: the first line after the last frame
    (the message may go on over more lines, a psycopg2 error's DETAIL and CONTEXT too)."""
    lines = traceback.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  ")]
    rest = lines[frames[-1] + 1 :] if frames else lines
    return rest[0].split(":", 1)[0].strip() if rest else ""


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found

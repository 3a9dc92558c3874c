"""Benchmark the telemetry broker against NATS JetStream and Redis Streams.

Run it as ``task bench:broker`` (``--quick`` for a smoke run). For every system it starts a fresh
server process on loopback in a temporary directory, runs one producer process and one consumer
process that publish and consume concurrently, and reports end-to-end records/s (first publish to
last ack) and publish-to-fetch latency (each record carries its publish time). It also runs a
paced run at a fixed rate and measures the broker's RSS with a large backlog. The result table is
printed and written into the "Broker" section of ``docs/benchmarks.md``.

Servers: ``nats-server -js`` (file storage), ``redis-server`` (AOF, no RDB, appendfsync everysec
and always) and ``python -m telemetry_broker`` (fsync on every publish, its default). The binaries
come from ``--nats-server``/``--redis-server`` (or ``NATS_SERVER``/``REDIS_SERVER``), else from
``PATH`` and the sbin directories (Debian puts ``nats-server`` in /usr/sbin); missing ones are
installed from the Debian packages with apt-get when running as root. A system whose server
cannot be had is skipped and said so: the report still has the broker's rows.

Sizing: a short calibration run (every system at batch 1 and 100) measures this machine, and the
record counts shrink so that every target row fits the time budget on a slower or busier machine
(``--scale`` sets the factor instead). Every target row runs once first (batch 1, one round of
batch 100 and 1,000, the paced runs, the backlog); further rounds of batch 100 and 1,000 run while
the budget has room for a whole round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

from telemetry_devstack import die_with_parent

ROOT: Final = Path(__file__).resolve().parent.parent
CSV: Final = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"
DOC: Final = ROOT / "docs" / "benchmarks.md"
STREAM_ID: Final = b'"bench"'
GROUP: Final = "bench"
PARTITIONS: Final = 16
SECTION: Final = "## Broker"

OURS: Final = "ours"
JETSTREAM: Final = "jetstream"
REDIS_EVERYSEC: Final = "redis-everysec"
REDIS_ALWAYS: Final = "redis-always"
ALL_SYSTEMS: Final = (OURS, JETSTREAM, REDIS_EVERYSEC, REDIS_ALWAYS)
LABELS: Final = {
    OURS: ("telemetry-broker", "fsync before every publish ack (group commit)"),
    JETSTREAM: ("NATS JetStream", "file storage, server default sync"),
    REDIS_EVERYSEC: ("Redis Streams", "AOF, appendfsync everysec"),
    REDIS_ALWAYS: ("Redis Streams", "AOF, appendfsync always"),
}
APT_PACKAGES: Final = {"nats-server": "nats-server", "redis-server": "redis-server"}
BINARY_ENV: Final = {"nats-server": "NATS_SERVER", "redis-server": "REDIS_SERVER"}
NEEDS: Final = {
    JETSTREAM: "nats-server",
    REDIS_EVERYSEC: "redis-server",
    REDIS_ALWAYS: "redis-server",
}
SBIN_DIRS: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # not on every user's PATH


class BenchError(RuntimeError):
    """A benchmark step failed in a way the user must see (missing binary, dead server...)."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


class Workload:
    """Real DCGM rows as wire templates; record ``i`` is row ``i mod rows`` stamped with seq i."""

    def __init__(self) -> None:
        from telemetry_model import WireTemplate, read_samples

        samples = list(read_samples(str(CSV)))
        if not samples:
            raise BenchError(f"no samples in {CSV}")
        self.keys = [s.gpu.uuid for s in samples]
        self.templates = [WireTemplate(s) for s in samples]

    def batch(self, start: int, stop: int, ts_us: int) -> list[tuple[str, bytes]]:
        rows = len(self.keys)
        keys, tpl = self.keys, self.templates
        return [
            (keys[i % rows], tpl[i % rows].encode(STREAM_ID, i, ts_us)) for i in range(start, stop)
        ]

    def mean_size(self) -> float:
        return statistics.fmean(
            len(t.encode(STREAM_ID, 100_000, 1_752_846_153_000_000)) for t in self.templates
        )


def parse_stamp(value: bytes) -> tuple[int, int]:
    """``(seq, ts_us)`` of a wire record: ``{"stream":"bench","seq":N,"ts":T,...``."""
    parts = value.split(b",", 3)
    return int(parts[1][6:]), int(parts[2][5:])


# --------------------------------------------------------------------------------------------
# Client drivers: one interface over the three systems
# --------------------------------------------------------------------------------------------

AckFn = Callable[[], Awaitable[None]]


class Fetcher(ABC):
    @abstractmethod
    async def fetch(self, max_records: int, max_wait: float) -> tuple[list[bytes], AckFn | None]:
        """Up to ``max_records`` values (empty after ``max_wait``) and how to ack them."""

    async def flush(self) -> None:
        """Send acks still held back (a protocol that piggybacks acks on the next fetch)."""
        return None


class Driver(ABC):
    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create(self, topic: str, max_unacked: int) -> None:
        """Create the topic/stream and the consumer group (from the beginning)."""

    @abstractmethod
    async def publish(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        """Publish one batch and return once the system acknowledged all of it."""

    @abstractmethod
    async def fetcher(self, topic: str, worker: int) -> Fetcher: ...


class OursDriver(Driver):
    async def connect(self) -> None:
        from telemetry_mq import BrokerClient

        self._mq = BrokerClient(self.url, token=None, timeout=30.0, max_retries=8)
        await self._mq.__aenter__()

    async def close(self) -> None:
        await self._mq.__aexit__(None, None, None)

    async def create(self, topic: str, max_unacked: int) -> None:
        await self._mq.create_topic(topic, partitions=PARTITIONS)

    async def publish(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        await self._mq.publish(topic, records)

    async def fetcher(self, topic: str, worker: int) -> Fetcher:
        from telemetry_mq import Batch

        mq = self._mq

        class _F(Fetcher):
            """``fetch_many`` (one lease per partition with records, up to ``max_records`` in
            all); the acks of the previous call's batches ride on the next fetch (the broker's
            piggybacked acks: one round trip)."""

            def __init__(self) -> None:
                self.unacked: list[Batch] = []

            async def fetch(
                self, max_records: int, max_wait: float
            ) -> tuple[list[bytes], AckFn | None]:
                batches = await mq.fetch_many(
                    topic,
                    GROUP,
                    max_records=max_records,
                    max_wait=max_wait,
                    ack_wait=30.0,
                    ack=self.unacked or None,
                )
                self.unacked = []
                values = [d.value for b in batches for d in b.records]
                if not values:
                    return [], None

                async def ack() -> None:
                    self.unacked = batches  # acked, durably, before the next fetch leases more

                return values, ack

            async def flush(self) -> None:
                for batch in self.unacked:
                    await mq.ack(batch)
                self.unacked = []

        return _F()


class JetStreamDriver(Driver):
    async def connect(self) -> None:
        import nats

        self._nc = await nats.connect(self.url, connect_timeout=10, max_reconnect_attempts=3)
        self._js = self._nc.jetstream(timeout=30.0, publish_async_max_pending=65_536)

    async def close(self) -> None:
        await self._nc.close()

    async def create(self, topic: str, max_unacked: int) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType

        await self._js.add_stream(name=topic, subjects=[f"{topic}.>"], storage=StorageType.FILE)
        await self._js.add_consumer(
            topic,
            ConsumerConfig(
                durable_name=GROUP,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30.0,
                max_ack_pending=max_unacked,
            ),
        )

    async def publish(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        js = self._js
        futures = [await js.publish_async(f"{topic}.{k}", v) for k, v in records]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=60.0)

    async def fetcher(self, topic: str, worker: int) -> Fetcher:
        sub = await self._js.pull_subscribe(f"{topic}.>", durable=GROUP, stream=topic)

        class _F(Fetcher):
            async def fetch(
                self, max_records: int, max_wait: float
            ) -> tuple[list[bytes], AckFn | None]:
                try:
                    msgs = await sub.fetch(max_records, timeout=max_wait)
                except TimeoutError:  # nats.errors.TimeoutError or asyncio's: nothing yet
                    return [], None

                async def ack() -> None:
                    for m in msgs:
                        await m.ack()

                return [m.data for m in msgs], ack

        return _F()


class RedisDriver(Driver):
    async def connect(self) -> None:
        import redis.asyncio

        self._r = redis.asyncio.Redis.from_url(self.url, max_connections=64)
        await cast(Awaitable[Any], self._r.ping())

    async def close(self) -> None:
        await self._r.aclose()

    async def create(self, topic: str, max_unacked: int) -> None:
        await self._r.xgroup_create(topic, GROUP, id="0", mkstream=True)

    async def publish(self, topic: str, records: list[tuple[str, bytes]]) -> None:
        if len(records) == 1:
            k, v = records[0]
            await cast(Awaitable[Any], self._r.xadd(topic, {"k": k, "v": v}))
            return
        pipe = self._r.pipeline(transaction=False)
        for k, v in records:
            pipe.xadd(topic, {"k": k, "v": v})
        await pipe.execute()

    async def fetcher(self, topic: str, worker: int) -> Fetcher:
        r = self._r
        consumer = f"c{worker}"

        class _F(Fetcher):
            async def fetch(
                self, max_records: int, max_wait: float
            ) -> tuple[list[bytes], AckFn | None]:
                resp = await cast(
                    Awaitable[Any],
                    r.xreadgroup(
                        GROUP, consumer, {topic: ">"}, count=max_records, block=int(max_wait * 1000)
                    ),
                )
                if not resp:
                    return [], None
                entries: list[tuple[bytes, dict[bytes, bytes]]] = resp[0][1]
                if not entries:
                    return [], None
                ids = [e[0] for e in entries]

                async def ack() -> None:
                    await cast(Awaitable[Any], r.xack(topic, GROUP, *ids))

                return [e[1][b"v"] for e in entries], ack

        return _F()


def make_driver(system: str, url: str) -> Driver:
    if system == OURS:
        return OursDriver(url)
    if system == JETSTREAM:
        return JetStreamDriver(url)
    return RedisDriver(url)


# --------------------------------------------------------------------------------------------
# Producer and consumer processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    system: str
    batch: int
    records: int
    rate: float | None = None  # records/s for a paced run, None = as fast as possible

    @property
    def name(self) -> str:
        paced = f"_r{int(self.rate)}" if self.rate else ""
        return f"bench_b{self.batch}{paced}"


@dataclass(frozen=True)
class WorkerSpec:
    system: str
    url: str
    topic: str
    records: int
    batch: int
    inflight: int
    consumers: int
    rate: float | None
    timeout: float
    max_wait: float = 1.0


class _StopError(Exception):
    pass


def _signals_to_exit() -> None:
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def producer_main(
    spec: WorkerSpec,
    results: multiprocessing.Queue[dict[str, Any]],
    go: multiprocessing.synchronize.Event,
    abort: multiprocessing.synchronize.Event,
) -> None:
    _signals_to_exit()
    try:
        out = asyncio.run(_produce(spec, go, abort))
    except BaseException as e:
        out = {"error": f"producer: {type(e).__name__}: {e}"}
    results.put({"role": "producer", **out})


async def _produce(
    spec: WorkerSpec,
    go: multiprocessing.synchronize.Event,
    abort: multiprocessing.synchronize.Event,
) -> dict[str, Any]:
    work = Workload()
    async with make_driver(spec.system, spec.url) as driver:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 60.0):
            raise BenchError("producer: the consumer never became ready")
        sem = asyncio.Semaphore(spec.inflight)
        pending: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []
        interval = spec.batch / spec.rate if spec.rate else 0.0
        deadline = time.monotonic() + spec.timeout

        def done(t: asyncio.Task[None]) -> None:
            pending.discard(t)
            sem.release()
            if not t.cancelled() and t.exception() is not None:
                failures.append(cast(BaseException, t.exception()))

        t0 = time.time()
        for n, start in enumerate(range(0, spec.records, spec.batch)):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await sem.acquire()
            if failures:
                raise failures[0]
            if abort.is_set():
                raise BenchError("aborted by the parent")
            if spec.rate:
                due = t0 + n * interval
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Stamp the intended send time: a stalled publisher shows up as latency.
                ts_us = int(due * 1_000_000)
            else:
                ts_us = time.time_ns() // 1000
            records = work.batch(start, min(start + spec.batch, spec.records), ts_us)
            task = asyncio.create_task(driver.publish(spec.topic, records))
            pending.add(task)
            task.add_done_callback(done)
        if pending:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                await asyncio.gather(*list(pending), return_exceptions=True)
        if failures:
            raise failures[0]
        return {"first_publish": t0, "last_publish": time.time(), "published": spec.records}


def consumer_main(
    spec: WorkerSpec,
    results: multiprocessing.Queue[dict[str, Any]],
    ready: multiprocessing.synchronize.Event,
    abort: multiprocessing.synchronize.Event,
) -> None:
    _signals_to_exit()
    try:
        out = asyncio.run(_consume(spec, ready, abort))
    except BaseException as e:
        out = {"error": f"consumer: {type(e).__name__}: {e}"}
    results.put({"role": "consumer", **out})


async def _consume(
    spec: WorkerSpec,
    ready: multiprocessing.synchronize.Event,
    abort: multiprocessing.synchronize.Event,
) -> dict[str, Any]:
    n = spec.records
    seen = bytearray(n)
    latencies: list[int] = []
    state = {"unique": 0, "dups": 0, "last_ack": 0.0, "first_fetch": 0.0}
    finished = asyncio.Event()
    deadline = time.monotonic() + spec.timeout

    async def worker(fetcher: Fetcher) -> None:
        while not finished.is_set():
            if abort.is_set() or time.monotonic() > deadline:
                raise _StopError()
            async with asyncio.timeout(spec.max_wait + 60.0):
                values, ack = await fetcher.fetch(spec.batch, spec.max_wait)
            if not values or ack is None:
                continue
            now_us = time.time_ns() // 1000
            if not state["first_fetch"]:
                state["first_fetch"] = now_us / 1e6
            for v in values:
                seq, ts = parse_stamp(v)
                latencies.append(now_us - ts)
                if seen[seq]:
                    state["dups"] += 1
                else:
                    seen[seq] = 1
                    state["unique"] += 1
            await ack()
            complete = state["unique"] >= n
            if complete:
                await fetcher.flush()  # the last batch's ack must have reached the server
            state["last_ack"] = time.time()
            if complete:
                finished.set()

    async with make_driver(spec.system, spec.url) as driver:
        fetchers = [await driver.fetcher(spec.topic, i) for i in range(spec.consumers)]
        ready.set()
        tasks = [asyncio.create_task(worker(f)) for f in fetchers]
        try:
            waiter = asyncio.create_task(finished.wait())
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    if isinstance(exc, _StopError):
                        why = "aborted" if abort.is_set() else f"timed out after {spec.timeout}s"
                        raise BenchError(
                            f"consumer {why} with {state['unique']}/{n} records"
                        ) from None
                    raise cast(BaseException, exc)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    return {
        "last_ack": state["last_ack"],
        "unique": state["unique"],
        "dups": state["dups"],
        "p50_us": _pct(latencies, 50),
        "p99_us": _pct(latencies, 99),
        "max_us": latencies[-1] if latencies else 0,
    }


def _pct(sorted_values: Sequence[int], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


# --------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------


def _unused_port() -> int:
    """A port that was free a moment ago: only for redis-server, which cannot bind port 0 and
    report it (``start_system`` retries when another process took the port meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server child process with its log; ``stop()`` is idempotent (SIGTERM, then SIGKILL)."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # SIGTERM if this benchmark dies without cleaning up
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(OSError, urllib.error.URLError, TimeoutError):
                if probe():
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _tcp_probe(port: int, send: bytes = b"", expect: bytes = b"") -> Callable[[], bool]:
    def probe() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            if send:
                s.sendall(send)
                return s.recv(64).startswith(expect)
            return True

    return probe


def _http_probe(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return bool(r.status == 200)

    return probe


def _wait_for_file(path: Path, server: Server, timeout: float = 30.0) -> str:
    """The text of ``path`` once the server wrote it (it reports its port there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if text.strip():
                return text
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.proc.returncode} while starting:\n"
                + server.log_tail()
            )
        time.sleep(0.02)
    raise BenchError(f"{server.name} reported no port after {timeout}s:\n{server.log_tail()}")


def _start_ours(workdir: Path, broker_env: dict[str, str]) -> tuple[Server, str]:
    data = workdir / "broker-data"
    data.mkdir()
    port_file = workdir / "broker.port"
    env = {
        "BROKER_HOST": "127.0.0.1",
        "BROKER_PORT": "0",  # it binds a free port itself and writes it to the port file
        "BROKER_PORT_FILE": str(port_file),
        "BROKER_DATA_DIR": str(data),
        **broker_env,
    }
    server = Server("telemetry-broker", [sys.executable, "-m", "telemetry_broker"], workdir, env)
    try:
        url = f"http://127.0.0.1:{int(_wait_for_file(port_file, server))}"
        server.wait_ready(_http_probe(f"{url}/readyz"))
    except BaseException:
        server.stop()
        raise
    return server, url


def _start_nats(binary: str, workdir: Path) -> tuple[Server, str]:
    store = workdir / "nats-store"
    # -p -1: a random free port, written to a ports file (the server binds it: no race).
    argv = [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", "-1"]
    server = Server("nats-server", [*argv, "--ports_file_dir", str(workdir)], workdir)
    try:
        ports = json.loads(_wait_for_file(workdir / f"nats-server_{server.pid}.ports", server))
        url = str(ports["nats"][0])
        port = int(url.rsplit(":", 1)[1])
        server.wait_ready(_tcp_probe(port, b"", b""))
    except BaseException:
        server.stop()
        raise
    return server, url


def _start_redis(binary: str, workdir: Path, fsync: str) -> tuple[Server, str]:
    for attempt in range(5):
        port = _unused_port()
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--appendonly", "yes",
            "--appendfsync", fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        server = Server(f"redis-server-{fsync}", argv, workdir)
        try:
            server.wait_ready(_tcp_probe(port, b"PING\r\n", b"+PONG"))
        except BenchError:
            server.stop()
            if "Address already in use" in server.log_tail() and attempt < 4:
                continue  # another process took the port between our probe and its bind
            raise
        except BaseException:
            server.stop()
            raise
        return server, f"redis://127.0.0.1:{port}/0"
    raise AssertionError("unreachable")


@contextlib.contextmanager
def start_system(
    system: str, workdir: Path, broker_env: dict[str, str], binaries: dict[str, str]
) -> Iterator[tuple[Server, str]]:
    """Start a fresh server for ``system`` in ``workdir``; yield it and its client URL."""
    if system == OURS:
        server, url = _start_ours(workdir, broker_env)
    elif system == JETSTREAM:
        server, url = _start_nats(binaries["nats-server"], workdir)
    else:
        fsync = "always" if system == REDIS_ALWAYS else "everysec"
        server, url = _start_redis(binaries["redis-server"], workdir, fsync)
    try:
        yield server, url
    finally:
        server.stop()


def find_binary(name: str, override: str | None) -> str | None:
    """The path of server binary ``name``: ``override``, else ``PATH``, else the sbin dirs."""
    if override:
        return shutil.which(override) or None
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN_DIRS:
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _apt_install(pkgs: list[str]) -> str | None:
    """Install Debian packages ``pkgs``; None when done, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "cannot be installed here (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def has_candidate() -> bool:
        out = subprocess.run(
            ["apt-cache", "policy", *pkgs], capture_output=True, text=True, timeout=120, env=env
        ).stdout
        return out.count("Candidate:") == len(pkgs) and "Candidate: (none)" not in out

    try:
        if not has_candidate():
            print(f"apt-get update (for {' '.join(pkgs)})", flush=True)
            subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=600, env=env)
            if not has_candidate():
                return "apt has no installable candidate"
        print(f"apt-get install {' '.join(pkgs)}", flush=True)
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
            capture_output=True, text=True, timeout=900, env=env,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"apt-get failed: {e}"
    if r.returncode != 0:
        return f"apt-get install failed (exit {r.returncode}): {r.stderr.strip()[-300:]}"
    return None


def find_binaries(
    names: Sequence[str], overrides: dict[str, str | None], install: bool
) -> tuple[dict[str, str], dict[str, str]]:
    """``({name: path}, {name: why it is missing})``; installs missing Debian packages when
    ``install`` and running as root."""
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name in names:
        override = overrides.get(name) or os.environ.get(BINARY_ENV[name])
        path = find_binary(name, override)
        if path is not None:
            found[name] = path
        elif override:
            missing[name] = f"{override!r} (given for {name}) is not an executable"
        else:
            missing[name] = f"not found on PATH or in {', '.join(SBIN_DIRS)}"
    if install and missing:
        lacking = [n for n in missing if not overrides.get(n)]
        why = _apt_install([APT_PACKAGES[n] for n in lacking]) if lacking else None
        for name in lacking:
            path = find_binary(name, None)
            if path is not None:
                found[name] = path
                del missing[name]
            else:
                missing[name] += (
                    f"; the Debian package {APT_PACKAGES[name]} {why or 'did not provide it'}"
                )
    return found, missing


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (KiB) of ``pid`` plus those of its direct children."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    out = {"VmRSS": 0, "VmHWM": 0}
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in out:
                    out[name] += int(rest.split()[0])
    return out


# --------------------------------------------------------------------------------------------
# Running cases
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    rps: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    dups: int = 0
    seconds: float = float("nan")
    publish_rps: float = float("nan")
    error: str | None = None
    runs: list[float] = field(default_factory=list)  # records/s of every run of the case
    wall: float = float("nan")  # seconds the whole case took (server start, processes, run)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def skipped(self) -> bool:
        return (self.error or "").startswith("skipped")


@dataclass
class Options:
    inflight: int
    paced_inflight: int
    consumers: int
    timeout: float
    broker_env: dict[str, str] = field(default_factory=dict)
    workroot: Path = Path(tempfile.gettempdir())
    binaries: dict[str, str] = field(default_factory=dict)  # server name -> path


async def _prepare(system: str, url: str, topic: str, max_unacked: int) -> None:
    async with asyncio.timeout(60), make_driver(system, url) as d:
        await d.create(topic, max_unacked)


def _join(proc: multiprocessing.process.BaseProcess, timeout: float) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def run_case(case: Case, url: str, opts: Options, timeout: float) -> Result:
    ctx = multiprocessing.get_context("spawn")
    topic = case.name
    asyncio.run(_prepare(case.system, url, topic, max(65_536, 2 * case.batch * opts.consumers)))
    spec = WorkerSpec(
        system=case.system,
        url=url,
        topic=topic,
        records=case.records,
        batch=case.batch,
        inflight=opts.paced_inflight if case.rate else opts.inflight,
        consumers=opts.consumers,
        rate=case.rate,
        timeout=timeout,
    )
    results: multiprocessing.Queue[dict[str, Any]] = ctx.Queue()
    ready, abort = ctx.Event(), ctx.Event()
    consumer = ctx.Process(target=consumer_main, args=(spec, results, ready, abort), daemon=True)
    producer = ctx.Process(target=producer_main, args=(spec, results, ready, abort), daemon=True)
    consumer.start()
    producer.start()
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout + 90
    try:
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                msg = results.get(timeout=1.0)
            except queue.Empty:
                if not consumer.is_alive() and not producer.is_alive() and results.empty():
                    break
                continue
            got[msg["role"]] = msg
            if "error" in msg:
                abort.set()
    finally:
        abort.set()
        _join(producer, 15)
        _join(consumer, 15)
    res = Result(case)
    errors = [m["error"] for m in got.values() if "error" in m]
    if len(got) < 2:
        errors.append(f"no result from {sorted({'producer', 'consumer'} - set(got))}")
    if errors:
        res.error = "; ".join(errors)
        return res
    p, c = got["producer"], got["consumer"]
    res.seconds = c["last_ack"] - p["first_publish"]
    res.rps = case.records / res.seconds
    res.p50_ms, res.p99_ms, res.max_ms = c["p50_us"] / 1e3, c["p99_us"] / 1e3, c["max_us"] / 1e3
    res.dups = c["dups"]
    res.publish_rps = case.records / max(1e-9, p["last_publish"] - p["first_publish"])
    return res


def median_runs(results: list[Result]) -> list[Result]:
    """One result per case: its median run by records/s (the lower middle for an even count),
    with every run's records/s in ``runs``. A case with a failed run reports the failure."""
    by_case: dict[Case, list[Result]] = {}
    for r in results:
        by_case.setdefault(r.case, []).append(r)
    out: list[Result] = []
    for runs in by_case.values():
        failed = [r for r in runs if not r.ok]
        if failed:
            out.append(failed[0])
            continue
        ranked = sorted(runs, key=lambda r: r.rps)
        median = ranked[(len(ranked) - 1) // 2]
        median.runs = [r.rps for r in runs]
        out.append(median)
    return out


def run_cases(cases: list[Case], opts: Options) -> list[Result]:
    """Run ``cases`` in order, each on a fresh server (a failed case is reported, not raised)."""
    out: list[Result] = []
    for case in cases:
        system = case.system
        label = f"{system} batch={case.batch} records={case.records}"
        label += f" rate={case.rate:.0f}/s" if case.rate else ""
        print(f"-- {label}", flush=True)
        # Flush the previous run's dirty pages first: their write-back would compete with
        # this run for the disk (and a fsyncing system would pay for another's writes).
        os.sync()
        case_t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{system}-", dir=opts.workroot) as tmp:
            try:
                with start_system(system, Path(tmp), opts.broker_env, opts.binaries) as (
                    server,
                    url,
                ):
                    up = time.monotonic() - case_t0
                    res = run_case(case, url, opts, opts.timeout)
                    if not res.ok:
                        res.error = f"{res.error}\n{server.name} log tail:\n{server.log_tail(8)}"
            except BenchError as e:
                res = Result(case, error=str(e))
        res.wall = time.monotonic() - case_t0
        out.append(res)
        if res.ok:
            print(
                f"   {res.rps:,.0f} records/s in {res.seconds:.2f}s, p50 {res.p50_ms:.1f} ms,"
                f" p99 {res.p99_ms:.1f} ms, max {res.max_ms:.1f} ms, redelivered {res.dups};"
                f" publishing alone took {res.publish_rps:,.0f} records/s"
                f" [case {res.wall:.1f}s, server start {up:.1f}s]",
                flush=True,
            )
        else:
            print(f"   FAILED: {res.error}", flush=True)
    return out


@dataclass
class Backlog:
    records: int
    rss_before_mib: float = float("nan")
    rss_after_mib: float = float("nan")
    hwm_mib: float = float("nan")
    publish_rps: float = float("nan")
    error: str | None = None


async def _publish_backlog(
    url: str, records: int, batch: int, inflight: int, timeout: float
) -> float:
    work = Workload()
    async with asyncio.timeout(timeout), make_driver(OURS, url) as d:
        await d.create("backlog", 0)
        sem = asyncio.Semaphore(inflight)

        async def one(start: int) -> None:
            async with sem:
                recs = work.batch(start, min(start + batch, records), time.time_ns() // 1000)
                await d.publish("backlog", recs)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for s in range(0, records, batch)))
        return records / (time.perf_counter() - t0)


def run_backlog(records: int, opts: Options) -> Backlog:
    print(f"-- ours backlog records={records} (no consumer)", flush=True)
    out = Backlog(records)
    os.sync()
    with tempfile.TemporaryDirectory(prefix="bench-backlog-", dir=opts.workroot) as tmp:
        try:
            with start_system(OURS, Path(tmp), opts.broker_env, opts.binaries) as (server, url):
                out.rss_before_mib = rss_kib(server.pid)["VmRSS"] / 1024
                try:
                    out.publish_rps = asyncio.run(
                        _publish_backlog(url, records, 1000, opts.inflight, opts.timeout)
                    )
                except Exception as e:
                    out.error = f"{type(e).__name__}: {e}\n{server.log_tail(8)}"
                time.sleep(1.0)
                mem = rss_kib(server.pid)
                out.rss_after_mib, out.hwm_mib = mem["VmRSS"] / 1024, mem["VmHWM"] / 1024
        except BenchError as e:
            out.error = str(e)
    if out.error:
        print(f"   FAILED: {out.error}", flush=True)
    else:
        print(
            f"   RSS {out.rss_before_mib:.0f} MiB idle -> {out.rss_after_mib:.0f} MiB with backlog"
            f" (peak {out.hwm_mib:.0f} MiB), published at {out.publish_rps:,.0f} records/s",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------
# Machine, versions and the report
# --------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(binaries: dict[str, str]) -> dict[str, str]:
    nats, redis = binaries.get("nats-server"), binaries.get("redis-server")
    nats_v = re.search(r"v?(\d+\.\d+\.\d+)", _run([nats, "--version"]) if nats else "")
    redis_v = re.search(r"v=(\S+)", _run([redis, "--version"]) if redis else "")
    return {
        "python": platform.python_version(),
        "nats-server": nats_v.group(1) if nats_v else "n/a",
        "redis-server": redis_v.group(1) if redis_v else "n/a",
        "nats-py": _pkg("nats-py"),
        "redis-py": _pkg("redis"),
        "hiredis": _pkg("hiredis"),
        "telemetry-mq": _pkg("telemetry-mq"),
    }


def _fsync_ms(directory: Path, n: int = 100) -> float:
    path = directory / ".fsync-probe"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(times) * 1000


def machine(workroot: Path) -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    target = workroot.resolve()
    best = ("", "", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype = line.split()[:3]
        if (str(target) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[1]):
            best = (dev, mnt, fstype)
    dev, mnt, fstype = best
    rota = Path(f"/sys/block/{Path(dev).name}/queue/rotational")
    kind = ""
    with contextlib.suppress(OSError):
        kind = ", rotational" if rota.read_text().strip() == "1" else ", non-rotational"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "load": " ".join(load),
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "ram": f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "kernel": platform.release(),
        "disk": f"{dev} {fstype} at {mnt}{kind} (data dirs under {target}); "
        f"fsync of a 4 KiB append: median {_fsync_ms(target):.2f} ms",
    }


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def table(results: list[Result]) -> str:
    def ref(system: str, case: Case) -> Result | None:
        for r in results:
            if r.case.system == system and r.case.batch == case.batch and r.case.rate == case.rate:
                return r
        return None

    def ratio(r: Result, system: str) -> str:
        other = ref(system, r.case)
        if r.case.rate or not r.ok or other is None or not other.ok:
            return "-"
        return f"{math.floor(r.rps / other.rps * 100) / 100:.2f}x"  # as the targets show it

    lines = [
        "| system | config | batch | records | records/s | runs (records/s) | p50 ms | p99 ms "
        "| vs JetStream | vs Redis everysec |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {s: i for i, s in enumerate(ALL_SYSTEMS)}
    rows = sorted(results, key=lambda r: (order[r.case.system], bool(r.case.rate), r.case.batch))
    for r in rows:
        name, config = LABELS[r.case.system]
        if r.case.rate:
            config += f"; paced at {r.case.rate:,.0f} records/s"
        if r.ok:
            runs = " / ".join(_fmt(x, 0) for x in sorted(r.runs)) if len(r.runs) > 1 else "-"
            cells = [_fmt(r.rps, 0), runs, _fmt(r.p50_ms), _fmt(r.p99_ms)]
        else:
            failed = "skipped" if (r.error or "").startswith("skipped") else "failed"
            cells = [failed, "-", "-", "-"]
        lines.append(
            f"| {name} | {config} | {r.case.batch:,} | {r.case.records:,} | "
            + " | ".join(cells)
            + f" | {ratio(r, JETSTREAM)} | {ratio(r, REDIS_EVERYSEC)} |"
        )
    return "\n".join(lines)


def verdicts(
    results: list[Result], backlog: Backlog | None, args: argparse.Namespace, info: RunInfo
) -> list[str]:
    """One line per target: the measured value and whether it is met, or why it is missing."""
    out: list[str] = []

    def find(system: str, batch: int, paced: bool = False) -> Result | None:
        for r in results:
            if r.case.system == system and r.case.batch == batch and bool(r.case.rate) == paced:
                return r
        return None

    def missing(system: str, r: Result | None) -> str:
        if system in info.skipped:
            return f"not measured: {LABELS[system][0]} was skipped ({info.skipped[system]})"
        if r is None:
            return "not measured (not in --systems or --batches)"
        return f"not measured: {(r.error or '').splitlines()[0]}"

    for batch in (100, 1000):
        ours = find(OURS, batch)
        for system, target in ((JETSTREAM, 2.0), (REDIS_EVERYSEC, 1.0)):
            what = (
                f"batch {batch} vs {LABELS[system][0]} ({LABELS[system][1]}), target >= {target:g}x"
            )
            other = find(system, batch)
            if ours is None or not ours.ok:
                out.append(f"{what}: {missing(OURS, ours)}")
            elif other is None or not other.ok:
                out.append(f"{what}: {missing(system, other)}")
            else:
                x = ours.rps / other.rps
                shown = math.floor(x * 100) / 100  # 0.997x shows as 0.99x: below the target
                out.append(f"{what}: {shown:.2f}x, {'met' if x >= target else 'NOT met'}")
    what = f"p99 publish-to-fetch at {args.rate:,.0f} records/s, target < 50 ms"
    paced = find(OURS, 100, paced=True)
    if args.paced_seconds <= 0:
        out.append(f"{what}: not measured (--paced-seconds 0)")
    elif paced is None or not paced.ok:
        out.append(f"{what}: {missing(OURS, paced)}")
    else:
        rate = paced.case.rate or args.rate
        held = "" if paced.rps >= 0.97 * rate else f"; the rate was not held: {paced.rps:,.0f}/s"
        scaled = (
            f" (measured at {rate:,.0f} records/s instead: see the records line)"
            if rate != args.rate
            else ""
        )
        mark = (
            "met"
            if paced.p99_ms < 50 and rate == args.rate
            else ("NOT met" if paced.p99_ms >= 50 else "not comparable")
        )
        out.append(f"{what}: {paced.p99_ms:.1f} ms{scaled}{held}, {mark}")
    what = f"broker RSS with a {args.backlog:,}-record backlog, target < 200 MiB"
    if backlog is None:
        why = missing(OURS, None) if OURS in info.skipped else "not measured (--backlog 0)"
        out.append(f"{what}: {why}")
    elif backlog.error is not None:
        out.append(f"{what}: not measured: {backlog.error.splitlines()[0]}")
    else:
        mark = "met" if backlog.rss_after_mib < 200 else "NOT met"
        out.append(
            f"{what}: {backlog.rss_after_mib:.0f} MiB (idle {backlog.rss_before_mib:.0f} MiB,"
            f" peak {backlog.hwm_mib:.0f} MiB), {mark}"
        )
    return out


def render(
    results: list[Result],
    backlog: Backlog | None,
    args: argparse.Namespace,
    info: RunInfo,
    env: dict[str, str],
    vers: dict[str, str],
    record_bytes: float,
    started: dt.datetime,
    elapsed: float,
) -> str:
    cmd = "task bench:broker" + (" -- " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    sz = info.sizing
    sizes = (
        f"batch 1 with {sz.batch1_records:,} records, batch 100 and 1,000 with {sz.records:,}"
        " records"
    )
    if args.paced_seconds > 0:
        sizes += (
            f", paced runs at {sz.rate:,.0f} records/s for {args.paced_seconds:g} s"
            f" ({int(sz.rate * args.paced_seconds):,} records, batch 100)"
        )
    if info.calibration is not None:
        cal = info.calibration
        measured = "; ".join(
            f"{LABELS[s][0]}"
            + (f" ({LABELS[s][1].split(',')[-1].strip()})" if s.startswith("redis") else "")
            + f" {cal.rate[(s, 1)]:,.0f} / {cal.rate[(s, 100)]:,.0f}"
            for s in ALL_SYSTEMS
            if (s, 100) in cal.rate
        )
        sizing = (
            f" Sizes from a calibration run ({cal.seconds:.0f} s: each system at batch 1 with"
            f" {CAL_RECORDS[1]:,} and batch 100 with {CAL_RECORDS[100]:,} records; records/s at"
            f" batch 1 / 100: {measured}): scale {sz.scale:.2f} of the defaults"
            f" ({args.records:,} and {args.batch1_records:,} records), so that every target row"
            f" and {min(ROUNDS_SIZED_FOR, args.repeat)} runs of each batch-100/1,000 case fit"
            f" {BUDGET_SHARE:.0%} of the {args.budget:g} s budget (`--budget`)."
        )
    else:
        sizing = f" Sizes set by hand (scale {sz.scale:.2f} of the defaults; no calibration)."
    sizing += "".join(f" {note[0].upper()}{note[1:]}." for note in sz.notes)
    runs = "once" if info.rounds_done == 1 else f"{info.rounds_done} times each"
    if info.rounds_note:
        runs += f" ({info.rounds_note})"
    load_before = float(env["load"].split()[0])
    busy = (
        [
            f"**Noisy run:** the 1-minute load average was {load_before:.2f} on"
            f" {env['nproc']} CPUs before it started (other work shared the machine); rerun"
            " on a quiet machine before drawing conclusions.",
            "",
        ]
        if load_before > 0.5
        else []
    )
    skipped = [
        f"**Not measured:** {LABELS[s][0]} ({LABELS[s][1]}): {why}."
        for s, why in info.skipped.items()
    ]
    parts = [
        f"## {args.section}",
        "",
        "Written by `task bench:broker` (`scripts/bench_broker.py`); do not edit by hand.",
        "",
        *busy,
        *([*skipped, ""] if skipped else []),
        f"- Date: {started:%Y-%m-%d %H:%M %Z} (run took {elapsed / 60:.1f} min)",
        f"- Command: `{cmd}`",
        *([f"- Conditions: {args.note}"] if args.note else []),
        f"- Machine: {env['nproc']} CPUs ({env['cpu']}), {env['ram']} RAM, kernel"
        f" {env['kernel']}; disk: {env['disk']}; load average before the run: {env['load']}"
        f" (after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])})",
        "- Software: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- Records: real DCGM rows from `data/` in the wire form (mean {record_bytes:.0f} bytes"
        " of JSON value, key = GPU uuid); " + sizes + "." + sizing,
        f"- Method: every target row runs first (batch 1, one round of batch 100 and 1,000 across"
        " the systems, the paced runs, the backlog); then further rounds of batch 100 and 1,000,"
        " each only while the budget has room for a whole round: the batch-100 and batch-1,000"
        f" cases ran {runs}, interleaved across the systems; the table shows the median run"
        " (its records/s and latencies, and the ratios between medians) and every run's"
        " records/s. Each run gets a fresh server process in a fresh temporary directory, after"
        " a `sync` (no write-back of an earlier run's files competes with it); one"
        f" producer process ({args.inflight} batches in flight) and one consumer process"
        f" ({args.consumers} concurrent fetch loops, fetch size = batch; telemetry-broker's"
        " loops use `fetch_many`, leasing several partitions per request) run concurrently."
        " records/s = records / (first publish -> last ack). Latency = fetch time - publish"
        " time stamped in the record; in the unpaced runs the producer outruns the consumer,"
        " so those percentiles include queueing; the paced rows show latency at a fixed rate"
        " (stamped with the intended send time, so a stalled publisher counts; up to"
        f" {args.paced_inflight} batches in flight so the offered rate does not depend on"
        " publish latency).",
        "- Equivalent batching: telemetry-broker publishes a batch per request and fetches up"
        " to a batch per request with `fetch_many` (one lease per partition that has records,"
        " round robin, up to the batch size in all); each fetch request carries the acks of"
        " the consumer's previous leases (the broker's piggybacked acks, applied durably"
        " before the fetch: one round trip per fetch; the final leases are acked with their"
        " own requests before the clock stops);"
        " JetStream publishes a batch with async"
        " publishes and waits for all acks, pull-consumer `fetch(batch)` + one ack per message;"
        " Redis pipelines a batch of XADDs, `XREADGROUP COUNT batch` + one XACK of all ids."
        f" Layout: telemetry-broker topic with {PARTITIONS} partitions keyed by GPU uuid;"
        " JetStream stream with one subject per GPU uuid and a durable pull consumer with"
        " explicit acks; one Redis stream with one consumer group. Clients: telemetry-mq's"
        " `BrokerClient`, nats-py, redis-py asyncio with hiredis; every client on the default"
        " asyncio event loop (the telemetry-broker server runs on uvloop, as it does in"
        " production).",
        f"- Durability: telemetry-broker fsyncs before every publish ack (group commit; the"
        " fdatasync runs in its fsync helper process); JetStream"
        f" (nats-server {vers['nats-server']}) syncs in the background (no per-message fsync;"
        " `sync_interval` is not available in this version); Redis AOF everysec may lose the"
        " last second, always fsyncs per write batch.",
        "",
        table(results),
        "",
    ]
    parts += ["Targets (issue 4):", ""] + [f"- {c}" for c in verdicts(results, backlog, args, info)]
    parts.append("")
    if backlog is not None and backlog.error is None:
        parts += [
            f"Backlog: {backlog.records:,} records published at batch 1,000 with no consumer"
            f" ({backlog.publish_rps:,.0f} records/s), then VmRSS of the broker process from"
            " `/proc/<pid>/status`.",
            "",
        ]
    failed = [r for r in results if not r.ok and r.case.system not in info.skipped]
    if failed:
        parts += ["Failures:", ""]
        for r in failed:
            first = (r.error or "").splitlines()[0]
            paced = f" paced at {r.case.rate:,.0f}/s" if r.case.rate else ""
            parts.append(f"- {r.case.system} batch {r.case.batch}{paced}: {first}")
        parts.append("")
    return "\n".join(parts)


def write_section(path: Path, section: str, heading: str = SECTION) -> None:
    """Replace the ``heading`` section of ``path`` (up to the next ``## ``); a new one goes
    right after the ``## Broker`` section (or at the end)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()

    def span(title: str) -> tuple[int, int] | None:
        start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
        if start is None:
            return None
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        return start, end

    new = section.rstrip("\n").splitlines()
    found = span(heading)
    if found is None:
        after = span(SECTION)
        at = after[1] if after is not None else len(lines)
        found = (at, at)
    start, end = found
    head = lines[:start]
    while head and not head[-1].strip():
        head.pop()
    tail = lines[end:]
    lines = head + ([""] if head else []) + new + ([""] + tail if tail else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=200_000, help="records per batch-100/1000 case")
    p.add_argument("--batch1-records", type=int, default=5_000, help="records per batch-1 case")
    p.add_argument("--batches", default="1,100,1000", help="batch sizes (comma-separated)")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"subset of {ALL_SYSTEMS}")
    p.add_argument("--rate", type=float, default=20_000.0, help="records/s of the paced runs")
    p.add_argument("--paced-seconds", type=float, default=10.0, help="0 skips the paced runs")
    p.add_argument("--backlog", type=int, default=1_000_000, help="backlog for RSS; 0 skips")
    p.add_argument("--inflight", type=int, default=4, help="producer batches in flight")
    p.add_argument(
        "--paced-inflight", type=int, default=16, help="publish batches in flight when paced"
    )
    p.add_argument("--consumers", type=int, default=4, help="concurrent fetch loops")
    p.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of each batch-100/1000 case (interleaved) while the budget has room;"
        " the table shows the median",
    )
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per case before failing")
    p.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds the run is sized for; no optional round starts past it",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiply the record counts by this (0-1] instead of calibrating",
    )
    p.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="the default sizes as they are",
    )
    p.add_argument("--nats-server", help="nats-server binary (else NATS_SERVER, PATH, sbin)")
    p.add_argument("--redis-server", help="redis-server binary (else REDIS_SERVER, PATH, sbin)")
    p.add_argument(
        "--no-install", dest="install", action="store_false", help="never apt-get a missing server"
    )
    p.add_argument(
        "--broker-env", action="append", default=[], metavar="K=V", help="extra broker env"
    )
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="data root")
    p.add_argument("--output", type=Path, default=DOC, help="markdown file to update")
    p.add_argument(
        "--section",
        default=SECTION.removeprefix("## "),
        help="heading of the section to write; an incomplete run writes the default one only"
        " with --force",
    )
    p.add_argument("--force", action="store_true", help="write the section even if incomplete")
    p.add_argument("--note", help="a line on the run's conditions for the report (e.g. the load)")
    p.add_argument("--no-write", action="store_true", help="print only, do not update --output")
    p.add_argument("--quick", action="store_true", help="tiny smoke run; does not write docs")
    args = p.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 3_000)
        args.batch1_records = min(args.batch1_records, 300)
        args.paced_seconds = min(args.paced_seconds, 1.0)
        args.rate = min(args.rate, 5_000.0)
        args.backlog = min(args.backlog, 20_000)
        args.timeout = min(args.timeout, 60.0)
        args.repeat = 1
        args.calibrate = False
        args.no_write = True
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.scale is not None and not 0 < args.scale <= 1:
        p.error("--scale must be in (0, 1]")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(ALL_SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {ALL_SYSTEMS}")
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    return args


# -- sizing from a calibration run --------------------------------------------------------------

CAL_RECORDS: Final = {1: 500, 100: 20_000}
"""Records of the calibration runs per batch size: a few seconds per system."""
ROUNDS_SIZED_FOR: Final = 2
"""The sizes leave room for this many runs of each batch-100/1000 case; more rounds run while
the budget has room (on a slow machine, larger cases beat more of them: short runs are mostly
start-up)."""
BUDGET_SHARE: Final = 0.85
"""Of the budget left after calibrating, the share the estimate may fill (estimates are rough)."""
MIN_SCALE: Final = 0.05
MIN_RECORDS: Final = 10_000
MIN_BATCH1_RECORDS: Final = 200


@dataclass
class Calibration:
    rate: dict[tuple[str, int], float] = field(default_factory=dict)  # (system, batch) -> rec/s
    overhead: dict[str, float] = field(default_factory=dict)  # seconds per case beyond records
    seconds: float = 0.0


@dataclass
class Sizing:
    scale: float
    records: int
    batch1_records: int
    rate: float  # records/s of the paced runs
    estimate: float = float("nan")  # seconds the target rows plus the sized-for rounds take
    notes: list[str] = field(default_factory=list)


@dataclass
class RunInfo:
    sizing: Sizing
    calibration: Calibration | None
    rounds_done: int = 0
    rounds_note: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it was not measured


def calibrate(systems: Sequence[str], opts: Options) -> tuple[Calibration, dict[str, str]]:
    """Run each system briefly at batch 1 and 100 on one server; also return the systems that
    failed and why."""
    t0 = time.monotonic()
    cal = Calibration()
    failed: dict[str, str] = {}
    for system in systems:
        print(f"-- calibrating {system}", flush=True)
        os.sync()
        begin = time.monotonic()
        spent: list[float] = []
        with tempfile.TemporaryDirectory(prefix=f"bench-cal-{system}-", dir=opts.workroot) as tmp:
            try:
                with start_system(system, Path(tmp), opts.broker_env, opts.binaries) as (
                    server,
                    url,
                ):
                    up = time.monotonic() - begin
                    for batch, n in CAL_RECORDS.items():
                        c0 = time.monotonic()
                        res = run_case(Case(system, batch, n), url, opts, min(opts.timeout, 120))
                        if not res.ok:
                            raise BenchError(f"calibration failed: {res.error}")
                        cal.rate[(system, batch)] = res.rps
                        spent.append(time.monotonic() - c0 - res.seconds)
            except BenchError as e:
                failed[system] = str(e).splitlines()[0]
                print(f"   FAILED: {e}", flush=True)
                continue
        # A case also starts a server and syncs the disk; the process start-up is in ``spent``.
        cal.overhead[system] = up + max(spent) + 0.5
        print(
            f"   batch 1: {cal.rate[(system, 1)]:,.0f} records/s, batch 100:"
            f" {cal.rate[(system, 100)]:,.0f} records/s; about {cal.overhead[system]:.1f} s per"
            " case besides its records",
            flush=True,
        )
    cal.seconds = time.monotonic() - t0
    return cal, failed


def _round_to(n: float, step: int, floor: int) -> int:
    return max(floor, int(n) // step * step)


def size_run(
    args: argparse.Namespace, cal: Calibration | None, systems: Sequence[str], left: float
) -> Sizing:
    """Record counts (and the paced rate) that fit ``left`` seconds on this machine."""
    if cal is None:
        scale = 1.0 if args.scale is None else args.scale
        return Sizing(
            scale,
            _round_to(args.records * scale, 1000, min(MIN_RECORDS, args.records)),
            _round_to(
                args.batch1_records * scale, 100, min(MIN_BATCH1_RECORDS, args.batch1_records)
            ),
            args.rate,
        )

    def rate(system: str, batch: int) -> float:
        return cal.rate[(system, 1 if batch == 1 else 100)]  # batch 1,000: like 100 or faster

    notes: list[str] = []
    paced_rate = args.rate
    if args.paced_seconds > 0 and OURS in systems and rate(OURS, 100) < 1.25 * args.rate:
        paced_rate = max(1000.0, rate(OURS, 100) * 0.5 // 1000 * 1000)
        notes.append(
            f"the paced runs go at {paced_rate:,.0f} records/s, not {args.rate:,.0f}: the"
            f" calibration measured {rate(OURS, 100):,.0f} records/s for telemetry-broker at"
            f" batch 100, too little to pace at {args.rate:,.0f} without saturating it"
        )
    ovh = cal.overhead
    rounds = min(ROUNDS_SIZED_FOR, args.repeat)
    fixed = var = 0.0  # seconds: independent of the scale, and at scale 1
    for batch in args.batches:
        n = args.batch1_records if batch == 1 else args.records
        times = 1 if batch == 1 else rounds
        fixed += times * sum(ovh[s] for s in systems)
        var += times * sum(n / rate(s, batch) for s in systems)
    if args.paced_seconds > 0:
        n = paced_rate * args.paced_seconds
        for s in systems:
            if s != REDIS_ALWAYS:
                fixed += ovh[s] + max(args.paced_seconds, n / rate(s, 100))
    if args.backlog and OURS in systems:  # publishing alone at batch 1,000: about 2-3x faster
        fixed += ovh[OURS] + args.backlog / (2 * rate(OURS, 100))
    room = BUDGET_SHARE * left
    scale = 1.0 if fixed + var <= room or var <= 0 else max(MIN_SCALE, (room - fixed) / var)
    if scale < 1:
        notes.append(
            f"at the default sizes the estimate was {fixed + var:.0f} s for {room:.0f} s of"
            f" room: scaled to {scale:.2f}"
        )
    sizing = Sizing(
        scale,
        _round_to(args.records * scale, 1000, min(MIN_RECORDS, args.records)),
        _round_to(args.batch1_records * scale, 100, min(MIN_BATCH1_RECORDS, args.batch1_records)),
        paced_rate,
        fixed + var * scale,
        notes,
    )
    if sizing.estimate > room:
        notes.append(
            f"even the smallest sizes are estimated at {sizing.estimate:.0f} s: every target row"
            " still runs once, past the budget if need be"
        )
    return sizing


def plan_round(args: argparse.Namespace, systems: Sequence[str], records: int) -> list[Case]:
    """One run of each batch-100/1000 case, interleaved across the systems."""
    return [Case(s, b, records) for b in args.batches if b > 1 for s in systems]


def plan_batch1(args: argparse.Namespace, systems: Sequence[str], records: int) -> list[Case]:
    return [Case(s, 1, records) for s in systems] if 1 in args.batches else []


def plan_paced(args: argparse.Namespace, systems: Sequence[str], rate: float) -> list[Case]:
    if args.paced_seconds <= 0:
        return []
    n = int(rate * args.paced_seconds)
    return [Case(s, 100, n, rate) for s in systems if s != REDIS_ALWAYS]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _signals_to_exit()
    started = dt.datetime.now(dt.UTC).astimezone()
    t0 = time.monotonic()
    try:
        needed = sorted({NEEDS[s] for s in args.systems if s in NEEDS})
        overrides = {"nats-server": args.nats_server, "redis-server": args.redis_server}
        binaries, missing = find_binaries(needed, overrides, install=args.install)
        skipped = {
            s: f"{NEEDS[s]} {missing[NEEDS[s]]}" for s in args.systems if NEEDS.get(s) in missing
        }
        for system, why in skipped.items():
            print(f"SKIPPING {system}: {why}", file=sys.stderr, flush=True)
        if OURS in args.systems:
            try:
                import telemetry_broker  # noqa: F401
                from telemetry_mq import BrokerClient  # noqa: F401
            except ImportError as e:
                raise BenchError(f"the telemetry broker is not importable: {e}") from e
        args.workdir.mkdir(parents=True, exist_ok=True)
        env = machine(args.workdir)
        vers = versions(binaries)
        record_bytes = Workload().mean_size()
        opts = Options(
            inflight=args.inflight,
            paced_inflight=args.paced_inflight,
            consumers=args.consumers,
            timeout=args.timeout,
            broker_env=dict(kv.split("=", 1) for kv in args.broker_env),
            workroot=args.workdir,
            binaries=binaries,
        )
        systems = [s for s in args.systems if s not in skipped]
        cal: Calibration | None = None
        if args.calibrate and args.scale is None and systems:
            cal, failed = calibrate(systems, opts)
            if OURS in failed:
                raise BenchError(f"telemetry-broker failed its calibration run: {failed[OURS]}")
            skipped.update({s: f"its calibration run failed: {why}" for s, why in failed.items()})
            systems = [s for s in systems if s not in failed]
        sizing = size_run(args, cal, systems, t0 + args.budget - time.monotonic())
        info = RunInfo(sizing, cal, skipped=skipped)
        for note in sizing.notes:
            print(f"sizing: {note}", flush=True)
        print(
            f"{len(systems)} systems on {env['nproc']} CPUs ({env['cpu']}); records ~"
            f"{record_bytes:.0f} bytes; batch 100/1,000 with {sizing.records:,} records, batch 1"
            f" with {sizing.batch1_records:,}"
            + (f"; estimated {sizing.estimate:.0f} s" if cal is not None else ""),
            flush=True,
        )
        # Every target row first; then more rounds while a whole round fits the budget.
        results = run_cases(plan_batch1(args, systems, sizing.batch1_records), opts)
        first = run_cases(plan_round(args, systems, sizing.records), opts)
        results += first
        info.rounds_done = 1
        results += run_cases(plan_paced(args, systems, sizing.rate), opts)
        backlog = run_backlog(args.backlog, opts) if OURS in systems and args.backlog else None
        round_seconds = sum(r.wall for r in first)
        for n in range(2, args.repeat + 1):
            left = t0 + args.budget - time.monotonic()
            if left < 1.1 * round_seconds:
                info.rounds_note = (
                    f"not {args.repeat}: a round took {round_seconds:.0f} s and"
                    f" {max(left, 0):.0f} s of the budget were left"
                )
                print(f"-- no round {n}: {info.rounds_note}", flush=True)
                break
            began = time.monotonic()
            results += run_cases(plan_round(args, systems, sizing.records), opts)
            round_seconds = time.monotonic() - began
            info.rounds_done = n
        results = median_runs(results)
        for system, why in skipped.items():  # their rows say why they are empty
            for case in (
                plan_batch1(args, [system], sizing.batch1_records)
                + plan_round(args, [system], sizing.records)
                + plan_paced(args, [system], sizing.rate)
            ):
                results.append(Result(case, error=f"skipped: {why}"))
    except BenchError as e:
        print(f"bench_broker: error: {e}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - t0
    section = render(results, backlog, args, info, env, vers, record_bytes, started, elapsed)
    print()
    print(section)
    failed_rows = [r for r in results if not r.ok and r.case.system not in skipped]
    failures = len(failed_rows) + bool(backlog and backlog.error)
    complete = not failures and not skipped
    if skipped:
        print(
            "\nNOT MEASURED: " + "; ".join(f"{s} ({why})" for s, why in skipped.items()),
            file=sys.stderr,
        )
    if not args.no_write:
        heading = f"## {args.section}"
        if heading == SECTION and not complete and not args.force:
            print(
                f"not writing the {SECTION!r} section of {args.output}: the run is incomplete"
                " (pass --section NAME to write it under another heading, or --force)",
                file=sys.stderr,
            )
        else:
            write_section(args.output, section, heading)
            print(f"wrote the {heading!r} section of {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

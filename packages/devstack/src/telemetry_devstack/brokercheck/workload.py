"""The run: producers, consumers and a nemesis against a real broker process, recorded.

One seeded ``random.Random`` decides everything the run does: each worker (producer,
consumer, stats poller, the nemesis) gets a generator of its own seeded from it in a fixed
order, so a worker's sequence of decisions (batch sizes, keys, values, fetch parameters, what
to do with each lease, when to cancel a long-poll) and the nemesis's schedule of kills are the
same for the same seed. Process timing still varies from run to run (which requests a kill
cuts off, what a fetch finds, when a lease expires, and the client's own retry jitter), so a
seed replays the workload and the fault schedule, not the exact interleaving: a failure found
once may need a few runs of its seed to show again.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
from telemetry_mq import (
    Batch,
    BrokerClient,
    BrokerUnavailableError,
    LeaseExpiredError,
    ProtocolError,
    TopicNotFoundError,
)
from telemetry_mq.protocol import FRAME_OVERHEAD

from ..procs import ServiceProcess, free_port
from .history import FAIL, INFO, OK, History, Op

log = logging.getLogger(__name__)

DLQ_GROUP: Final = "brokercheck"
_ID: Final = re.compile(rb'"id"\s*:\s*"([^"\\]+)"')


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """What a run does: its length, faults, workload and broker settings."""

    seed: int
    topic: str = "chaos"
    seconds: float = 40.0
    kills: int = 5
    """SIGKILLs spread over the run (a few more land during restarts: ``startup_kill_rate``)."""
    terms: int = 1
    """Clean restarts (SIGTERM) spread over the run."""
    startup_kill_rate: float = 0.1
    """Share of restarts whose new process is killed again while it recovers."""
    partitions: int = 4
    groups: int = 2
    producers: int = 3
    consumers: int = 2
    """Consumers per group."""
    keys: int = 24
    rate: float = 300.0
    """Records per second, all producers together (an upper bound)."""
    batch: int = 20
    """Largest publish (records)."""
    retrying_share: float = 0.3
    """Share of producers whose client retries (the others make one attempt per operation)."""
    max_deliveries: int = 3
    ack_wait: float = 1.5
    """Longest lease a consumer asks for; the shortest is a fifth of it."""
    max_fetch_wait: float = 1.0
    cancel_rate: float = 0.15
    """Share of long-polls the consumer cancels (closes the connection) before the answer."""
    values: str = "plain"
    """``plain`` (compact, spaced, escaped and raw Unicode JSON), ``multiline`` (values span
    lines), ``hostile`` (numbers that do not round-trip through a float, some on two lines)."""
    max_fetch_bytes: int = 4 * 1024 * 1024
    max_backlog_bytes: int = 8 * 1024 * 1024
    segment_bytes: int = 64 * 1024
    wal_segment_bytes: int = 256 * 1024
    retention_age: float = 2.0
    maintenance_interval: float = 0.25
    drain_timeout: float = 120.0
    client_timeout: float = 10.0
    broker_env: tuple[tuple[str, str], ...] = ()
    allow: tuple[str, ...] = ()
    """Properties whose violations are reported but do not fail the run (known defects)."""

    @property
    def dlq(self) -> str:
        """The topic's dead-letter topic."""
        return self.topic + ".dlq"

    def to_json(self) -> dict[str, Any]:
        """The configuration as a JSON document (for the history's header)."""
        doc = asdict(self)
        doc["broker_env"] = dict(self.broker_env)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CheckConfig:
        """Parse what ``to_json`` wrote."""
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in doc.items() if k in known}
        kw["broker_env"] = tuple(sorted(dict(doc.get("broker_env") or {}).items()))
        kw["allow"] = tuple(doc.get("allow") or ())
        return cls(**kw)


def value_id(value: bytes) -> str | None:
    """The ``id`` a checker value carries (read without parsing: any value form works)."""
    m = _ID.search(value)
    return m.group(1).decode() if m else None


def digest(value: bytes) -> str:
    """A short fingerprint of a value, to compare delivered bytes with published ones."""
    return hashlib.blake2b(value, digest_size=8).hexdigest()


_STRINGS: Final = ("plain", "caf\\u00e9", "café ✓", 'tab\\tquote\\"', "𝄞 \\ud834\\udd1e", "")


def make_value(rng: random.Random, vid: str, key: str, style: str) -> bytes:
    """A JSON value carrying ``vid``, in one of several textual forms (delivered byte for byte)."""
    s = rng.choice(_STRINGS)
    pad = "x" * rng.randrange(0, 160)
    n = rng.randrange(0, 10**6)
    form = rng.randrange(4)
    if form == 0:
        text = f'{{"id":"{vid}","key":"{key}","n":{n},"pad":"{pad}"}}'
    elif form == 1:  # insignificant whitespace and number forms a re-encoder would change
        text = (
            f'{{ "id" : "{vid}",\t"key": "{key}" , "v": [1.50, -0.0, 1E3, {n}] , "pad":"{pad}" }}'
        )
    elif form == 2:
        text = f'{{"id":"{vid}","s":"{s}","nested":{{"a":[true,false,null,{{}}]}},"pad":"{pad}"}}'
    else:
        text = f'[{n}, {{"id": "{vid}"}}, "{s}", "{pad}"]'
    if style == "multiline" and rng.random() < 0.3:
        text = text.replace(",", ",\n", 1).replace(":", " :\r\n ", 1)
    elif style == "hostile" and rng.random() < 0.3:  # numbers beyond a double, maybe on lines
        sep = rng.choice((",", ",\n"))
        text = f'{{"id":"{vid}","big":123456789012345678901234567890{sep}"huge":1e400}}'
    return text.encode()


def classify(e: BaseException, retries: int) -> tuple[str, str]:
    """Whether a failed operation certainly did not happen (``fail``) or may have (``info``)."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, ProtocolError) and str(e).startswith("broker refused the request"):
        return FAIL, text  # 400: refused before anything was done
    if isinstance(e, TopicNotFoundError):
        return FAIL, text
    if retries:
        # An earlier attempt may have been applied before its connection broke (and a
        # restart in between turns a later ack of that lease into LEASE_EXPIRED).
        return INFO, text
    if isinstance(e, LeaseExpiredError):
        return FAIL, text
    if isinstance(e, BrokerUnavailableError):
        if isinstance(e.__cause__, aiohttp.ClientConnectorError):
            return FAIL, text  # no connection was ever made
        if getattr(e, "backlog_bytes", None) is not None:
            return FAIL, text  # 429 BACKLOG_FULL: nothing appended
    return INFO, text


_CURRENT: contextvars.ContextVar[Op | None] = contextvars.ContextVar("brokercheck_op", default=None)


class _ExpiredLeases(logging.Filter):
    """Takes the client's "acked leases had expired" warning into the running fetch's record.

    The client reports the broker's ``Expired-Leases`` header only by this warning; the
    checker needs it to know which piggybacked acks took effect.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        op = _CURRENT.get()
        if op is None or "acked leases had expired" not in str(record.msg):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        leases = str(args[-1]).replace(" ", "").split(",") if args else []
        op.result.setdefault("expired", []).extend(x for x in leases if x)
        return False


_FILTER: Final = _ExpiredLeases()


class BrokerDownError(Exception):
    """The broker did not come back after a restart."""


@dataclass(slots=True)
class _Worker:
    name: str
    rng: random.Random
    client: BrokerClient
    retries: int
    held: list[Batch] = field(default_factory=list)
    pending: list[asyncio.Task[bool]] = field(default_factory=list)


_PLANS: Final = (
    ("ack", 40),
    ("piggyback", 18),
    ("double", 3),
    ("partial", 8),
    ("nack", 9),
    ("release", 5),
    ("reject", 2),
    ("extend", 5),
    ("expire", 7),
    ("late", 3),
)


class Run:
    """One run of the checker's workload; ``await run.execute()`` writes the history."""

    def __init__(
        self, config: CheckConfig, history: History, data_dir: Path, broker_log: IO[str]
    ) -> None:
        self.cfg = config
        self.history = history
        self.data_dir = data_dir
        self.rng = random.Random(config.seed)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: ServiceProcess | None = None
        self.stop = asyncio.Event()
        self.broken: str | None = None
        self.starts = 0
        self.t_start = 0.0
        self._start_seconds = 1.0  # how long the last start took
        self._broker_log = broker_log
        self._clients: list[BrokerClient] = []
        client_log = logging.getLogger("telemetry_mq.client")
        client_log.addFilter(_FILTER)  # once: addFilter skips a filter it already has
        if not client_log.isEnabledFor(logging.WARNING):  # the warning must be emitted
            client_log.setLevel(logging.WARNING)

    # -- the broker process ---------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        c = self.cfg
        return {
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(self.port),
            "BROKER_DATA_DIR": str(self.data_dir),
            "BROKER_LOG_FORMAT": "json",
            "BROKER_LOG_LEVEL": "INFO",
            "BROKER_TOPICS": f"{c.topic}:{c.partitions}",
            "BROKER_MAX_DELIVERIES": str(c.max_deliveries),
            "BROKER_ACK_WAIT": str(c.ack_wait),
            "BROKER_MAX_FETCH_WAIT": str(c.max_fetch_wait),
            "BROKER_MAX_FETCH_BYTES": str(c.max_fetch_bytes),
            "BROKER_MAX_BACKLOG_BYTES": str(c.max_backlog_bytes),
            "BROKER_SEGMENT_BYTES": str(c.segment_bytes),
            "BROKER_WAL_SEGMENT_BYTES": str(c.wal_segment_bytes),
            "BROKER_RETENTION_AGE": str(c.retention_age),
            "BROKER_MAINTENANCE_INTERVAL": str(c.maintenance_interval),
            "BROKER_GRACEFUL_TIMEOUT": "5",
            "BROKER_SHUTDOWN_TIMEOUT": "5",
            **dict(c.broker_env),
        }

    def _sink(self, name: str, line: str) -> None:
        self._broker_log.write(f"{name} {line}\n")

    async def _start(self, rng: random.Random) -> None:
        """Start the broker on the same data dir and port; maybe kill it while it recovers."""
        while True:
            self.starts += 1
            op = self.history.begin("nemesis", "start", {"n": self.starts})
            proc = ServiceProcess(
                f"broker-{self.starts}",
                "telemetry_broker",
                port=self.port,
                env=self._env(),
                sink=self._sink,
            )
            self.proc = proc
            await proc.start()
            ready = asyncio.create_task(proc.wait_ready(90))
            # Late in a start (of the length the last one took) is when the broker recovers.
            early = None
            if rng.random() < self.cfg.startup_kill_rate:
                early = rng.uniform(0.5, 1.0) * self._start_seconds
            if early is not None:
                done, _ = await asyncio.wait({ready}, timeout=early)
                if not done:
                    ready.cancel()
                    await asyncio.gather(ready, return_exceptions=True)
                    self.history.end(op, FAIL, {"pid": proc.pid}, "killed while starting")
                    kill = self.history.begin(
                        "nemesis", "kill", {"pid": proc.pid, "during": "startup"}
                    )
                    proc.kill()
                    code = await proc.wait()
                    self.history.end(kill, OK, {"exit": code})
                    continue
            try:
                await ready
            except (RuntimeError, TimeoutError) as e:
                self.history.end(op, FAIL, {"pid": proc.pid}, str(e))
                self.broken = f"the broker did not come back (start {self.starts}): {e}"
                raise BrokerDownError(self.broken) from e
            self.history.end(op, OK, {"pid": proc.pid})
            assert op.t1 is not None
            self._start_seconds = op.t1 - op.t0
            return

    async def _kill(self, during: str = "run") -> None:
        assert self.proc is not None
        op = self.history.begin("nemesis", "kill", {"pid": self.proc.pid, "during": during})
        before = self.proc.returncode  # not None: it had exited by itself
        self.proc.kill()
        code = await self.proc.wait()
        self.history.end(op, OK, {"exit": code, "exited_before": before})

    async def _term(self) -> None:
        assert self.proc is not None
        op = self.history.begin("nemesis", "term", {"pid": self.proc.pid})
        before = self.proc.returncode
        code = await self.proc.stop(timeout=30)
        self.history.end(op, OK, {"exit": code, "exited_before": before})

    def schedule(self, rng: random.Random) -> list[tuple[float, str]]:
        """When to kill (SIGKILL) or stop (SIGTERM) the broker: one event per equal slot."""
        kinds = ["kill"] * self.cfg.kills + ["term"] * self.cfg.terms
        rng.shuffle(kinds)
        if not kinds:
            return []
        slot = self.cfg.seconds / len(kinds)
        return [((i + rng.uniform(0.3, 1.0)) * slot, k) for i, k in enumerate(kinds)]

    async def nemesis(self, rng: random.Random) -> None:
        """Kill or stop the broker at the scheduled moments, restarting it each time."""
        for at, kind in self.schedule(rng):
            delay = self.t_start + at - self.history.now()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self.stop.wait()
                except TimeoutError:
                    pass
            if self.stop.is_set():
                return
            if kind == "kill":
                await self._kill()
            else:
                await self._term()
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # down for a moment
            await self._start(rng)

    # -- recording -------------------------------------------------------------------------

    async def _do[T](self, op: Op, call: Awaitable[T], retries: int) -> tuple[bool, T | None]:
        """Await a client call for ``op``; record a failure (the caller records success)."""
        token = _CURRENT.set(op)
        try:
            value = await call
        except asyncio.CancelledError:
            self.history.end(op, INFO, error="cancelled")
            raise
        except TimeoutError:
            self.history.end(op, INFO, error="cancelled by the client")
            return False, None
        except Exception as e:  # every error is part of the history
            type_, text = classify(e, retries)
            self.history.end(op, type_, error=text)
            return False, None
        finally:
            _CURRENT.reset(token)
        return True, value

    def _client(self, retries: int) -> BrokerClient:
        client = BrokerClient(self.url, timeout=self.cfg.client_timeout, max_retries=retries)
        self._clients.append(client)
        return client

    def _worker(self, name: str, *, may_retry: bool = False) -> _Worker:
        # Consumers make one attempt per operation: a retried fetch can lease records whose
        # answer was lost, and the checker counts on seeing every lease it could not rule out.
        rng = random.Random(self.rng.getrandbits(64))
        retries = 3 if may_retry and rng.random() < self.cfg.retrying_share else 0
        return _Worker(name, rng, self._client(retries), retries)

    @staticmethod
    async def _pause(w: _Worker) -> None:
        await asyncio.sleep(w.rng.uniform(0.05, 0.3))

    # -- producers ---------------------------------------------------------------------------

    async def producer(self, w: _Worker) -> None:
        """Publish keyed batches of unique values until the run stops."""
        n = 0
        per_second = self.cfg.rate / self.cfg.producers
        while not self.stop.is_set():
            records: list[tuple[str, bytes]] = []
            ids: list[str] = []
            for _ in range(w.rng.randint(1, self.cfg.batch)):
                key = f"gpu-{w.rng.randrange(self.cfg.keys)}"
                vid = f"{w.name}.{n}"
                n += 1
                records.append((key, make_value(w.rng, vid, key, self.cfg.values)))
                ids.append(vid)
            op = self.history.begin(
                w.name,
                "publish",
                {
                    "records": [[k, v.decode(), i] for (k, v), i in zip(records, ids, strict=True)],
                    "retries": w.retries,
                },
            )
            ok, positions = await self._do(op, w.client.publish(self.cfg.topic, records), w.retries)
            if ok:
                assert positions is not None
                self.history.end(op, OK, {"positions": [list(p) for p in positions]})
            else:
                await self._pause(w)
            await asyncio.sleep(len(records) / per_second * w.rng.uniform(0.5, 1.5))

    # -- consumers ---------------------------------------------------------------------------

    def _batches_result(self, batches: Sequence[Batch]) -> list[dict[str, Any]]:
        out = []
        for b in batches:
            out.append(
                {
                    "lease": b.lease,
                    "partition": b.partition,
                    "ack_wait": b.ack_wait,
                    "bytes": sum(FRAME_OVERHEAD + len(d.key) + len(d.value) for d in b.records),
                    "largest": max(FRAME_OVERHEAD + len(d.key) + len(d.value) for d in b.records),
                    "records": [
                        [d.offset, d.delivery_count, d.key, value_id(d.value), digest(d.value)]
                        + [d.timestamp_us]
                        for d in b.records
                    ],
                }
            )
        return out

    async def fetch(
        self,
        w: _Worker,
        group: str,
        *,
        multi: bool,
        max_records: int,
        max_wait: float,
        ack_wait: float,
        ack: Sequence[Batch],
        cancel_after: float | None,
    ) -> tuple[bool, list[Batch]]:
        """One fetch (or multi fetch), maybe cancelled by closing the connection early."""
        op = self.history.begin(
            w.name,
            "fetch_many" if multi else "fetch",
            {
                "group": group,
                "max_records": max_records,
                "max_wait": max_wait,
                "ack_wait": ack_wait,
                "ack": [b.lease for b in ack],
                "cancel_after": cancel_after,
                "retries": w.retries,
            },
        )

        async def call() -> list[Batch]:
            kw: dict[str, Any] = {
                "max_records": max_records,
                "max_wait": max_wait,
                "ack_wait": ack_wait,
                "ack": list(ack) or None,
            }
            async with asyncio.timeout(cancel_after):
                if multi:
                    return await w.client.fetch_many(self.cfg.topic, group, **kw)
                batch = await w.client.fetch(self.cfg.topic, group, **kw)
                return [] if batch is None else [batch]

        ok, batches = await self._do(op, call(), w.retries)
        if not ok or batches is None:
            return False, []
        self.history.end(op, OK, {"batches": self._batches_result(batches)})
        return True, batches

    async def settle(
        self, w: _Worker, batch: Batch, action: str, offsets: Sequence[int] | None, **kw: Any
    ) -> bool:
        """Ack, nack, release or reject (some of) a lease's records; whether it answered OK."""
        op = self.history.begin(
            w.name,
            action,
            {
                "group": batch.group,
                "lease": batch.lease,
                "partition": batch.partition,
                "offsets": None if offsets is None else list(offsets),
                "retries": w.retries,
                **({"topic": batch.topic} if batch.topic != self.cfg.topic else {}),
                **kw,
            },
        )
        method: Callable[..., Awaitable[int]] = getattr(w.client, action)
        ok, n = await self._do(op, method(batch, offsets, **kw), w.retries)
        if ok:
            self.history.end(op, OK, {"records": n})
        return ok

    async def extend(self, w: _Worker, batch: Batch, ack_wait: float) -> bool:
        """Extend a lease; whether it answered OK."""
        op = self.history.begin(
            w.name,
            "extend",
            {
                "group": batch.group,
                "lease": batch.lease,
                "partition": batch.partition,
                "ack_wait": ack_wait,
                "retries": w.retries,
            },
        )
        ok, granted = await self._do(op, w.client.extend(batch, ack_wait), w.retries)
        if ok:
            self.history.end(op, OK, {"ack_wait": granted})
        return ok

    async def consumer(self, w: _Worker, group: str) -> None:
        """Fetch and settle leases of ``group`` in every way a consumer can, until stopped."""
        rng = w.rng
        cfg = self.cfg
        while not self.stop.is_set():
            multi = rng.random() < 0.5
            max_wait = rng.choice((0.0, 0.05, 0.3, cfg.max_fetch_wait))
            cancel = None
            if max_wait and rng.random() < cfg.cancel_rate:
                cancel = round(rng.uniform(0.0, max_wait), 3)
            piggyback, w.held = w.held, []
            ok, batches = await self.fetch(
                w,
                group,
                multi=multi,
                max_records=rng.choice((1, 3, 10, 30, 100)),
                max_wait=max_wait,
                ack_wait=round(rng.uniform(cfg.ack_wait / 5, cfg.ack_wait), 3),
                ack=piggyback,
                cancel_after=cancel,
            )
            await asyncio.gather(*w.pending)
            w.pending.clear()
            if not ok:
                if piggyback and rng.random() < 0.5:
                    for b in piggyback:  # the piggybacked acks may not have happened: again
                        await self.settle(w, b, "ack", None)
                await self._pause(w)
                continue
            for b in batches:
                await self.handle(w, b)

    async def handle(self, w: _Worker, b: Batch) -> None:
        """Do one of the things a consumer does with a lease (chosen by the worker's rng)."""
        rng = w.rng
        plans, weights = zip(*_PLANS, strict=True)
        plan = rng.choices(plans, weights)[0]
        offsets = b.offsets
        some = (
            sorted(rng.sample(offsets, rng.randint(1, len(offsets) - 1)))
            if len(b.records) > 1
            else None
        )
        match plan:
            case "ack":
                await self.settle(w, b, "ack", None)
            case "piggyback":
                w.held.append(b)
            case "double":  # an ack still in flight while the next fetch acks it again
                w.pending.append(asyncio.create_task(self.settle(w, b, "ack", None)))
                w.held.append(b)
            case "partial":
                chosen = list(some or offsets)
                if rng.random() < 0.2:
                    chosen.append(max(offsets) + 1000)  # not in the lease: ignored
                if await self.settle(w, b, "ack", chosen) and some is not None:
                    await self._rest(w, b)
            case "nack" | "release":
                delay = 0.0 if rng.random() < 0.5 else round(rng.uniform(0.05, 1.0), 3)
                pick = some if rng.random() < 0.3 else None
                kw: dict[str, Any] = {"delay": delay}
                if plan == "nack":
                    kw["error"] = f"error {rng.randrange(1000)}"
                if await self.settle(w, b, plan, pick, **kw) and pick is not None:
                    await self._rest(w, b)
            case "reject":
                pick = some if rng.random() < 0.5 else None
                error = rng.choice((None, "unreadable"))
                if await self.settle(w, b, "reject", pick, error=error) and pick is not None:
                    await self._rest(w, b)
            case "extend":
                await asyncio.sleep(b.ack_wait * rng.uniform(0.3, 0.8))
                longer = round(rng.uniform(self.cfg.ack_wait / 5, self.cfg.ack_wait), 3)
                if await self.extend(w, b, longer):
                    await asyncio.sleep(longer * rng.uniform(0.1, 0.6))
                    await self.settle(w, b, "ack", None)
            case "expire":
                pass  # never settled: the lease expires
            case "late":
                await asyncio.sleep(b.ack_wait + rng.uniform(0.05, 0.5))
                await self.settle(w, b, "ack", None)  # normally 409 LEASE_EXPIRED

    async def _rest(self, w: _Worker, b: Batch) -> None:
        """Settle what a partial ack, nack, release or reject left of a lease."""
        rest = w.rng.choice(("ack", "ack", "nack", "release", "piggyback", "expire"))
        if rest == "piggyback":
            w.held.append(b)
        elif rest in ("ack", "nack", "release"):
            await self.settle(w, b, rest, None)

    # -- observation ---------------------------------------------------------------------------

    async def stats(self, process: str, client: BrokerClient) -> Any:
        """Read the topic's stats into the history (the wall clock too, to place dead letters)."""
        topic = self.cfg.topic
        op = self.history.begin(process, "stats", {"topic": topic})
        ok, st = await self._do(op, client.topic_stats(topic), 0)
        if not ok or st is None:
            return None
        self.history.end(
            op,
            OK,
            {
                "wall": time.time(),
                "partitions": [[p["start_offset"], p["end_offset"]] for p in st["partition_stats"]],
                "groups": {
                    g["group"]: {
                        "lag": g["lag"],
                        "in_flight": g["in_flight"],
                        "committed": [p["committed"] for p in g["partitions"]],
                    }
                    for g in st["groups"]
                },
            },
        )
        return st

    async def poller(self, rng: random.Random) -> None:
        """Read the topic's stats now and then."""
        client = self._client(0)
        while not self.stop.is_set():
            await self.stats("stats", client)
            await asyncio.sleep(rng.uniform(0.3, 1.0))

    # -- the end -------------------------------------------------------------------------------

    async def drain(self, client: BrokerClient, groups: Sequence[str]) -> bool:
        """Consume and ack everything left, until every group has lag 0 and nothing in flight."""
        w = _Worker("drain", random.Random(0), client, 0)
        deadline = self.history.now() + self.cfg.drain_timeout
        while True:
            for g in groups:
                while True:
                    ok, batches = await self.fetch(
                        w,
                        g,
                        multi=True,
                        max_records=500,
                        max_wait=0.5,
                        ack_wait=15.0,
                        ack=(),
                        cancel_after=None,
                    )
                    if not batches:
                        break
                    for b in batches:
                        await self.settle(w, b, "ack", None)
            st = await self.stats("drain", client)
            if (
                st is not None
                and all(g["lag"] == 0 and g["in_flight"] == 0 for g in st["groups"])
                and {g["group"] for g in st["groups"]} >= set(groups)
            ):
                return True
            if self.history.now() > deadline:
                return False

    async def read_dead_letters(self, client: BrokerClient) -> None:
        """Read the whole dead-letter topic (its envelopes verbatim) with a group of its own."""
        topics = {t["name"] for t in await client.topics()}
        dlq = self.cfg.dlq
        if dlq not in topics:
            return
        w = _Worker("dlq", random.Random(0), client, 0)
        while True:
            op = self.history.begin(
                "dlq", "dlq", {"topic": dlq, "group": DLQ_GROUP, "max_records": 1000}
            )
            ok, batches = await self._do(
                op, client.fetch_many(dlq, DLQ_GROUP, max_records=1000, max_wait=0.2), 0
            )
            if not ok or not batches:
                if ok:
                    self.history.end(op, OK, {"batches": []})
                return
            self.history.end(
                op,
                OK,
                {
                    "batches": [
                        {
                            "lease": b.lease,
                            "partition": b.partition,
                            "records": [
                                [d.offset, d.timestamp_us, d.key, d.value.decode()]
                                for d in b.records
                            ],
                        }
                        for b in batches
                    ]
                },
            )
            for b in batches:
                await self.settle(w, b, "ack", None)

    # -- the whole run ---------------------------------------------------------------------------

    async def execute(self) -> None:
        """Start the broker, run the workload and the nemesis, restart, drain and stop."""
        cfg = self.cfg
        nemesis_rng = random.Random(self.rng.getrandbits(64))
        groups = [f"g{i}" for i in range(cfg.groups)]
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._start(nemesis_rng)
            setup = self._worker("setup")
            for g in groups:  # the groups exist before the first record
                await self.fetch(
                    setup,
                    g,
                    multi=False,
                    max_records=1,
                    max_wait=0.0,
                    ack_wait=cfg.ack_wait,
                    ack=(),
                    cancel_after=None,
                )
            for i in range(cfg.producers):
                tasks.append(
                    asyncio.create_task(
                        self.producer(self._worker(f"producer-{i}", may_retry=True))
                    )
                )
            for g in groups:
                for i in range(cfg.consumers):
                    w = self._worker(f"consumer-{g}-{i}")
                    tasks.append(asyncio.create_task(self.consumer(w, g)))
            tasks.append(asyncio.create_task(self.poller(random.Random(self.rng.getrandbits(64)))))
            self.t_start = self.history.now()
            nemesis = asyncio.create_task(self.nemesis(nemesis_rng))
            done, _ = await asyncio.wait({nemesis}, timeout=cfg.seconds)
            if done:
                nemesis.result()  # raises if the broker stayed down
                await asyncio.sleep(max(0.0, self.t_start + cfg.seconds - self.history.now()))
            self.stop.set()
            await nemesis  # a restart in progress completes
            _, late = await asyncio.wait(tasks, timeout=cfg.client_timeout + 2 * cfg.ack_wait + 5)
            for t in late:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            # The last crash, then everything still unsettled must come back and be drained.
            if nemesis_rng.random() < 0.7:
                await self._kill("final")
            else:
                await self._term()
            await self._start(nemesis_rng)
            client = self._client(0)
            if not await self.drain(client, groups):
                self.broken = f"not drained within {cfg.drain_timeout} s"
            await self.read_dead_letters(client)
            await self.stats("final", client)
            await self._term()
        except BrokerDownError:
            self.stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.history.end(self.history.begin("nemesis", "end", {}), OK, {"broken": self.broken})
            for c in self._clients:
                await c.close()
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()

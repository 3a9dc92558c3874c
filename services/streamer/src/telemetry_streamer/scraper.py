"""The scrape source: streamers share the fleet's exporters and store each scrape once.

Every tick (a quarter of the lease or of the interval) a streamer renews its membership and
its target leases, reads the live members and targets from the work index
(``telemetry_store.scrapes``), and works out which targets are its own (``slots.owner_of``). It
acquires those that are free, lets go of those that are now another member's (after the slot in
hand), and runs one task per target it holds, so a slow or dead exporter delays nobody else's
slots.

A target task scrapes once per slot: ``interval`` apart, at the target's own phase, any time
within the slot (a target acquired mid-slot is scraped late rather than not at all). The
exposition is read with prometheus-client's parser (``telemetry_model.read_exposition``); the
scrape's records are then claimed in one statement (``claim_slot``: the slot must be past the
target's watermark, and the records get their sequence numbers and are stored with the claim)
and published to the broker, keyed by the physical GPU's uuid, with the scrape's start as
their time. So ``(stream, seq)`` of a datapoint is fixed before it can be sent twice, and a
slot is stored once: a second scrape of the same slot (two streamers around a takeover) is
refused at the claim, and a slot whose publisher died is published again from its payload,
byte for byte, by the target's next holder. A failing target is retried with backoff (whole
slots skipped, doubling up to ``max_backoff``); every slot no streamer stored is counted as
missed in the target's row and in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
import aiopg
import orjson
from telemetry_kit import wait_or_stop
from telemetry_model import (
    Exposition,
    FieldFilter,
    WireTemplate,
    read_exposition,
    unit_from_help,
)
from telemetry_mq import BrokerClient
from telemetry_store import (
    AcquiredTarget,
    SlotClaim,
    acquire_targets,
    claim_slot,
    cursor,
    ensure_metrics,
    finish_slot,
    join_members,
    leave_members,
    live_targets,
    migrate_when_reachable,
    pending_slots,
    prune_scrapes,
    release_targets,
    renew_targets,
    stream_id,
    transaction,
    upsert_targets,
)

from .health import TargetHealth
from .metrics import StreamerMetrics
from .scrape import ScrapeError, fetch
from .slots import owner_of, pack, phase_us, slot_at, unpack
from .targets import Discovery

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScrapeConfig:
    """How often and how long to scrape, and how long leases and records last."""

    interval: float = 10.0
    timeout: float = 5.0
    lease: float = 10.0
    refresh: float = 30.0
    target_ttl: float = 90.0
    max_backoff: float = 300.0
    history: float = 3600.0
    forget: float = 86_400.0
    max_bytes: int = 32 * 2**20
    batch_size: int = 500
    fields: FieldFilter = field(default_factory=FieldFilter)

    @property
    def tick(self) -> float:
        """Seconds between two rounds of membership, leases and assignment: a quarter of the
        lease (renewed four times before it runs out), and of the interval (a target changes
        hands within one)."""
        return max(min(self.lease, self.interval) / 4, 0.05)


@dataclass(eq=False)
class _Target:
    """A target this streamer holds, and the state of its task."""

    id: int
    address: str
    hostname: str
    phase: int
    health: TargetHealth
    watermark: int | None
    listed: bool = True
    leaving: bool = False
    lost: bool = False
    done_slot: int | None = None  # published; its payload goes with the next claim
    skip_until: int = 0  # backoff: the first slot to scrape again
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _prepare(
    text: str, scraped_at: datetime, fields: FieldFilter, hostname: str
) -> tuple[Exposition, list[tuple[str, bytes]], bytes | None]:
    """The exposition, its records (partition key and static part) and the claim's payload."""
    exposition = read_exposition(text, scraped_at=scraped_at, fields=fields, hostname=hostname)
    records = [(s.gpu.physical_uuid, WireTemplate(s).suffix) for s in exposition.samples]
    return exposition, records, pack(records) if records else None


class Scraper:
    """One streamer replica's share of the fleet's exporters."""

    def __init__(
        self,
        *,
        discovery: Discovery,
        pool: aiopg.Pool,
        broker: BrokerClient,
        metrics: StreamerMetrics,
        stream: str,
        topic: str,
        partitions: int,
        config: ScrapeConfig,
        health: dict[int, TargetHealth] | None = None,
        owner: str | None = None,
        control_pool: aiopg.Pool | None = None,
    ) -> None:
        self._discovery = discovery
        self._pool = pool
        # The ticks' own connection: the lease renewals must never queue behind the claims of
        # hundreds of targets (a lease that runs out gives the target away).
        self._control = control_pool or pool
        self._broker = broker
        self._metrics = metrics
        self._stream = stream
        self._topic = topic
        self._partitions = partitions
        self._config = config
        self._interval_us = round(config.interval * 1e6)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # The health the app's collector exports: the targets held now, by id.
        self.health: dict[int, TargetHealth] = {} if health is None else health
        self.targets: dict[int, _Target] = {}
        self.members: list[str] = []
        self.healthy = False
        self._stream_id = 0
        self._stop = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        self._registered: set[str] = set()
        self._next_refresh = 0.0
        self._next_prune = 0.0

    async def run(self, stop: asyncio.Event, migrate: bool = False) -> None:
        """Scrape until ``stop`` is set; then finish the slots in hand and let go of every
        target (another streamer takes them at its next tick)."""
        if migrate and not await migrate_when_reachable(self._pool, stop):
            return
        if not await self._setup(stop):
            return
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                asyncio.TaskGroup() as group,
            ):
                self._session, self._group = session, group
                while not stop.is_set():
                    try:
                        await self._tick()
                        self.healthy = True
                    except Exception:
                        self.healthy = False
                        log.exception("a round of the scrape work index failed; retrying")
                    await wait_or_stop(stop, self._config.tick)
                self._stop.set()
                for t in self.targets.values():
                    t.leaving = True
                    t.wake.set()
        finally:
            self._stop.set()
            # Let go at once (also when cancelled past the shutdown timeout: briefly).
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.shield(asyncio.wait_for(self._leave(), 2.0))

    async def _setup(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                await self._broker.create_topic(self._topic, partitions=self._partitions)
                async with cursor(self._pool) as cur:
                    self._stream_id = await stream_id(cur, self._stream)
                return True
            except Exception:
                log.exception(
                    "creating topic %s or stream %s failed; retrying", self._topic, self._stream
                )
                await wait_or_stop(stop, 1.0)
        return False

    async def _leave(self) -> None:
        async with cursor(self._control) as cur:
            await leave_members(cur, self.owner)

    # --- the tick: membership, leases, assignment -------------------------------------------

    async def _tick(self) -> None:
        c = self._config
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_refresh:
            addresses = await self._discovery.resolve()
            async with cursor(self._control) as cur:
                await upsert_targets(cur, addresses)
            self._next_refresh = loop.time() + c.refresh
        async with transaction(self._control) as cur:
            members = await join_members(cur, self.owner, c.lease)
            held = await renew_targets(cur, self.owner, list(self.targets), c.lease)
            rows = await live_targets(cur, c.target_ttl)
        if members != self.members:
            log.info("scraping with %d streamer(s): %s", len(members), ", ".join(members))
            self.members = members
        for tid in set(self.targets) - held:
            t = self.targets.get(tid)
            # (A target let go since the renewal was asked for is not lost: it was released.)
            if t is not None and not (t.lost or t.leaving):
                t.lost = True
                t.wake.set()
                self._metrics.target_leases_lost.inc()
                log.warning("lost the lease on %s; another streamer has it now", t.address)
        mine = {r.id: r for r in rows if owner_of(r.address, members) == self.owner}
        for tid, t in self.targets.items():
            row = mine.get(tid)
            if row is None and not t.leaving:
                t.leaving = True  # another member's now: hand it over after the slot in hand
                t.wake.set()
            elif row is not None:
                t.listed = row.listed
        wanted = [tid for tid in mine if tid not in self.targets]
        if wanted:
            async with cursor(self._control) as cur:
                acquired = await acquire_targets(cur, self.owner, wanted, c.lease)
            for a in acquired:
                self._start(a, mine[a.id].listed)
        self._metrics.targets.set(len(self.targets))
        if loop.time() >= self._next_prune:
            async with cursor(self._control) as cur:
                await prune_scrapes(cur, history=c.history, forget=c.forget)
            self._next_prune = loop.time() + 60.0

    def _start(self, a: AcquiredTarget, listed: bool) -> None:
        assert self._group is not None
        health = TargetHealth(a.address)
        t = _Target(
            id=a.id,
            address=a.address,
            hostname=urlsplit(a.address).hostname or a.address,
            phase=phase_us(a.address, self._interval_us),
            health=health,
            watermark=a.last_slot_us,
            listed=listed,
        )
        self.targets[a.id] = t
        self.health[a.id] = health
        if a.takeover:
            self._metrics.target_takeovers.inc()
            log.warning("taking over %s from a streamer that stopped", a.address)
        self._group.create_task(self._run_target(t), name=f"scrape {a.address}")

    # --- one target ---------------------------------------------------------------------------

    async def _run_target(self, t: _Target) -> None:
        try:
            await self._publish_pending(t)
            slot = self._first_slot(t)
            while t.listed and not (t.leaving or t.lost or self._stop.is_set()):
                if not await self._wait_until(t, slot):
                    break
                if slot < t.skip_until:
                    self._metrics.scrape_slots.labels("skipped").inc()
                else:
                    await self._scrape_slot(t, slot)
                slot = self._after(slot, t.phase)
        except Exception:
            log.exception("scraping %s failed; letting it go", t.address)
        finally:
            await self._let_go(t)

    def _now_us(self) -> int:
        return time.time_ns() // 1000

    def _first_slot(self, t: _Target) -> int:
        """The slot in progress if the target was scraped before and this slot is not claimed
        yet (a takeover or a handover: scraped late rather than missed); else the next one
        (a new target: a fleet's worth of new targets does not start with one burst)."""
        slot = slot_at(self._now_us(), self._interval_us, t.phase)
        if t.watermark is None:
            return slot + self._interval_us
        return max(slot, t.watermark + self._interval_us)

    def _after(self, slot: int, phase: int) -> int:
        """The slot after ``slot``, or the one in progress if that one is already over."""
        return max(slot + self._interval_us, slot_at(self._now_us(), self._interval_us, phase))

    async def _wait_until(self, t: _Target, slot: int) -> bool:
        """Sleep until ``slot`` starts; False if the target is to be let go first."""
        while not (t.leaving or t.lost or self._stop.is_set()):
            delay = (slot - self._now_us()) / 1e6
            if delay <= 0:
                return True
            t.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(t.wake.wait(), delay)  # a timer, woken to let go
        return False

    async def _scrape_slot(self, t: _Target, slot: int) -> None:
        c = self._config
        started_ns = time.time_ns()
        began = time.perf_counter()
        try:
            text = await self._fetch(t)
        except ScrapeError as e:
            self._failed(t, slot, e, time.perf_counter() - began)
            await self._finish_done(t)
            return
        if text is None:  # stopping (or the lease is gone) mid-scrape
            self._metrics.scrape_slots.labels("aborted").inc()
            return
        duration = time.perf_counter() - began
        scraped_at = datetime.fromtimestamp(started_ns / 1e9, UTC)
        # Parsing is the scrape source's heaviest work: in a thread, so that a large exposition
        # does not hold up the event loop (and the lease renewals) while it is read.
        exposition, records, payload = await asyncio.to_thread(
            _prepare, text, scraped_at, c.fields, t.hostname
        )
        if t.health.consecutive_failures:
            log.info("%s answers again", t.address)
        t.health.succeeded(
            started_ns / 1e9, duration, len(exposition.samples), len(exposition.bad_lines)
        )
        self._metrics.scrape_seconds.observe(duration)
        for reason, n in exposition.dropped.items():
            self._metrics.samples_dropped.labels(reason).inc(n)
        if exposition.bad_lines:
            self._metrics.bad_lines.inc(len(exposition.bad_lines))
            first = exposition.bad_lines[0]
            log.warning(
                "%s: %d bad line(s) skipped, the first: line %d: %s (%r)",
                t.address,
                len(exposition.bad_lines),
                first.line,
                first.reason,
                first.text,
            )
        await self._register(exposition.help)
        claim = await self._claim(t, slot, started_ns // 1000, len(records), payload)
        if claim is None:
            return
        self._metrics.scrape_slots.labels("stored").inc()
        self._metrics.samples.inc(len(records))
        t.health.slots += 1
        if claim.missed:
            t.health.missed += claim.missed
            self._metrics.slots_missed.inc(claim.missed)
            log.warning(
                "%s: %d slot(s) before this one were stored by no streamer", t.address, claim.missed
            )
        if await self._publish(t, self._stream, claim.start, started_ns // 1000, records):
            t.done_slot = slot

    async def _fetch(self, t: _Target) -> str | None:
        """The exposition, or ``None`` when the streamer stops first; raises ScrapeError."""
        assert self._session is not None
        c = self._config
        scrape = asyncio.create_task(
            fetch(self._session, t.address, timeout=c.timeout, max_bytes=c.max_bytes)
        )
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({scrape, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not scrape.done():
            scrape.cancel()
            with contextlib.suppress(asyncio.CancelledError, ScrapeError):
                await scrape
            return None
        return scrape.result()

    def _failed(self, t: _Target, slot: int, e: ScrapeError, duration: float) -> None:
        """Count the failure and skip slots: 0, 1, 3, 7, ... up to ``max_backoff``."""
        t.health.failed(e.kind, duration)
        self._metrics.scrape_failures.labels(e.kind).inc()
        self._metrics.scrape_slots.labels("failed").inc()
        most = max(int(self._config.max_backoff / self._config.interval), 1)
        skip = min(2 ** (t.health.consecutive_failures - 1), most)
        t.skip_until = slot + skip * self._interval_us
        if t.health.consecutive_failures == 1:
            log.warning("scraping %s failed (%s); retrying with backoff", t.address, e)
        else:
            log.debug("scraping %s failed again (%s)", t.address, e)

    async def _register(self, helps: Mapping[str, str]) -> None:
        """Register the fields outside the catalog the allow-list kept, with their HELP."""
        new = {n: h for n, h in helps.items() if n not in self._registered}
        if not new:
            return
        try:
            async with cursor(self._pool) as cur:
                await ensure_metrics(cur, {n: (unit_from_help(h), h) for n, h in new.items()})
        except Exception as e:
            # The collector registers them too (without unit or description): go on.
            log.warning("registering the field(s) %s failed (%s)", ", ".join(sorted(new)), e)
            return
        self._registered.update(new)

    async def _claim(
        self, t: _Target, slot: int, scraped_at_us: int, count: int, payload: bytes | None
    ) -> SlotClaim | None:
        """Claim ``slot`` with its records; retried while the database is away, until the
        slot is over."""
        while True:
            try:
                async with cursor(self._pool) as cur:
                    claim = await claim_slot(
                        cur,
                        target_id=t.id,
                        owner=self.owner,
                        slot_us=slot,
                        interval=self._config.interval,
                        stream_id=self._stream_id,
                        count=count,
                        scraped_at_us=scraped_at_us,
                        payload=payload,
                        done_us=t.done_slot,
                    )
                break
            except Exception as e:
                if self._stop.is_set() or self._now_us() >= slot + self._interval_us:
                    self._metrics.scrape_slots.labels("unclaimed").inc()
                    log.error("claiming a slot of %s failed (%s); the slot is lost", t.address, e)
                    return None
                log.warning("claiming a slot of %s failed (%s); retrying", t.address, e)
                await wait_or_stop(self._stop, 0.5)
        t.done_slot = None  # the claim finished it, whatever else it did
        if claim is None:
            # Not past the watermark (scraped by another holder already), or not held.
            self._metrics.scrape_slots.labels("refused").inc()
            log.info("a slot of %s was claimed already or the target is gone", t.address)
        return claim

    async def _publish(
        self, t: _Target, stream: str, start: int, ts_us: int, records: Sequence[tuple[str, bytes]]
    ) -> bool:
        """Publish a claimed slot's records; False if given up (stopping, or the target was
        taken over: its new holder publishes the payload)."""
        stream_json = orjson.dumps(stream)
        size = self._config.batch_size
        for first in range(0, len(records), size):
            batch = [
                (key, WireTemplate(suffix=suffix).encode(stream_json, start + i, ts_us))
                for i, (key, suffix) in enumerate(records[first : first + size], first)
            ]
            while True:
                if t.lost:
                    return False
                began = time.perf_counter()
                try:
                    await self._broker.publish(self._topic, batch)
                    break
                except Exception:
                    # The client already retried with backoff: the slot stays claimed (its
                    # payload is in the work index) and is published when the broker is back.
                    self.healthy = False
                    self._metrics.publish_failures.labels(self._topic).inc()
                    log.exception("publishing a slot of %s failed; retrying", t.address)
                    if await wait_or_stop(self._stop, 1.0):
                        return False
            self._metrics.publish_seconds.labels(self._topic).observe(time.perf_counter() - began)
            self._metrics.published.labels(self._topic).inc(len(batch))
        return True

    async def _publish_pending(self, t: _Target) -> None:
        """Publish the slots a previous holder claimed and did not finish, then finish them."""
        async with cursor(self._pool) as cur:
            pending = await pending_slots(cur, t.id)
        for p in pending:
            log.warning(
                "publishing slot %d of %s again (%d records, claimed by a streamer that stopped)",
                p.slot_us,
                t.address,
                p.count,
            )
            if not await self._publish(t, p.stream, p.start, p.scraped_at_us, unpack(p.payload)):
                return
            self._metrics.slots_republished.inc()
            async with cursor(self._pool) as cur:
                await finish_slot(cur, t.id, p.slot_us)

    async def _finish_done(self, t: _Target) -> None:
        # (Also when the target is lost: the slot is published, whoever holds it now.)
        if t.done_slot is None:
            return
        with contextlib.suppress(Exception):  # at worst the slot is published again
            async with cursor(self._pool) as cur:
                await finish_slot(cur, t.id, t.done_slot)
            t.done_slot = None

    async def _let_go(self, t: _Target) -> None:
        """Finish the last slot and release the target (unless it was lost already)."""
        try:
            await self._finish_done(t)
            if not t.lost:
                async with cursor(self._pool) as cur:
                    await release_targets(cur, self.owner, [t.id])
        except Exception as e:
            log.warning("releasing %s failed (%s); its lease runs out instead", t.address, e)
        finally:
            self.targets.pop(t.id, None)
            self.health.pop(t.id, None)
            self._metrics.targets.set(len(self.targets))

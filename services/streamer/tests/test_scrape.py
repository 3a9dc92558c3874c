"""The scrape source against real exporters (HTTP on loopback), PostgreSQL and a broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from telemetry_devstack import refused_port
from telemetry_devstack.exporters import fleet, serve
from telemetry_model import FieldFilter, decode
from telemetry_mq import BrokerClient
from telemetry_streamer.health import TargetHealthCollector
from telemetry_streamer.metrics import StreamerMetrics
from telemetry_streamer.scrape import ScrapeError, fetch
from telemetry_streamer.scraper import ScrapeConfig, Scraper
from telemetry_streamer.slots import owner_of
from telemetry_streamer.targets import Discovery, normalize

from conftest import CSV_PATH
from tests.helpers import wait_for

H100 = (
    Path(__file__).resolve().parents[3] / "packages/model/tests/data/h100-exposition.txt"
).read_text()


@contextlib.asynccontextmanager
async def exporters(hosts: int, mig: int = 0) -> AsyncIterator[list[str]]:
    """Stand-in dcgm-exporters for the first ``hosts`` hosts of the CSV; their targets."""
    runners, targets = await serve(fleet(CSV_PATH, hosts=hosts, mig_hosts=mig))
    try:
        yield [normalize(t) for t in targets]
    finally:
        for r in runners:
            await r.cleanup()


@contextlib.asynccontextmanager
async def faulty() -> AsyncIterator[dict[str, str]]:
    """Exporters that misbehave: one never answers, one answers 500, one refuses
    connections, one serves a bad line and a field outside the catalog."""
    hang = asyncio.Event()

    async def never(_: web.Request) -> web.Response:
        await hang.wait()
        return web.Response(text="")

    async def error(_: web.Request) -> web.Response:
        return web.Response(status=500, text="DCGM is restarting")

    async def broken(_: web.Request) -> web.Response:
        extra = (
            "# HELP DCGM_FI_DEV_PCIE_TX_THROUGHPUT PCIe TX throughput (in KB).\n"
            "# TYPE DCGM_FI_DEV_PCIE_TX_THROUGHPUT counter\n"
            'DCGM_FI_DEV_PCIE_TX_THROUGHPUT{gpu="0",UUID="GPU-5fd4f087-86f3-7a43-b711-'
            '4771313afc50",Hostname="mtv5-dgx1-hgpu-031"} 1234\n'
        )
        text = H100.replace("} 1755", "} fast", 1) + extra
        return web.Response(text=text)

    runners, urls = [], {}
    for name, handler in (("never", never), ("error", error), ("broken", broken)):
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    with refused_port() as port:
        urls["refused"] = f"http://127.0.0.1:{port}/metrics"
        try:
            yield urls
        finally:
            hang.set()
            for r in runners:
                await r.cleanup()


def split(targets: list[str]) -> tuple[str, str]:
    """Two member names between which rendezvous hashing splits ``targets``."""
    for i in range(100):
        pair = (f"a{i}", f"b{i}")
        if len({owner_of(t, pair) for t in targets}) == 2:
            return pair
    raise AssertionError("no split found")


def scraper(db, mq, registry, targets, owner=None, **config) -> Scraper:
    health: dict = {}
    registry.register(TargetHealthCollector(health))
    options = {"interval": 1.5, "timeout": 1.0, "lease": 1.5, "batch_size": 100} | config
    return Scraper(
        discovery=Discovery(static=targets),
        pool=db,
        broker=mq,
        metrics=StreamerMetrics.create(registry),
        stream="scrape",
        topic="t",
        partitions=4,
        config=ScrapeConfig(**options),
        health=health,
        owner=owner,
    )


async def query(db, sql: str, *args) -> list[tuple]:
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, args or None)
        return list(await cur.fetchall())


async def slots_per_target(db) -> dict[str, int]:
    rows = await query(
        db,
        "SELECT t.address, count(s.slot) FROM scrape_targets t"
        " LEFT JOIN scrape_slots s ON s.target_id = t.id GROUP BY t.address",
    )
    return dict(rows)


async def drain(mq: BrokerClient, topic: str) -> list:
    records = []
    while batches := await mq.fetch_many(topic, "probe", max_records=5000, max_wait=0.5):
        for b in batches:
            records += b.records
            await mq.ack(b)
    return records


async def test_fetch_failures_are_told_apart_by_kind():
    async with faulty() as urls, aiohttp.ClientSession() as session:
        for name, kind in (
            ("never", "timeout"),
            ("error", "http_status"),
            ("refused", "connection"),
        ):
            with pytest.raises(ScrapeError) as e:
                await fetch(session, urls[name], timeout=0.5, max_bytes=1 << 20)
            assert e.value.kind == kind, name
        with pytest.raises(ScrapeError) as e:
            await fetch(session, urls["broken"], timeout=5, max_bytes=1000)
        assert e.value.kind == "too_large"
        assert "fast" in await fetch(session, urls["broken"], timeout=5, max_bytes=1 << 20)


async def test_two_streamers_share_the_fleet_and_every_slot_is_published_once(broker, db):
    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    stops = [asyncio.Event(), asyncio.Event()]
    async with (
        exporters(4, mig=1) as targets,
        BrokerClient(broker.url) as mq,
    ):
        names = split(targets)  # (random names might give one of them every target)
        # Leases longer than the interval: a busy machine's stalls must not look like a crash
        # here (a handover is a release, whatever the lease).
        a = scraper(db, mq, registry_a, targets, owner=names[0], lease=6.0)
        b = scraper(db, mq, registry_b, targets, owner=names[1], lease=6.0)
        tasks = [
            asyncio.create_task(a.run(stops[0], migrate=True)),
            asyncio.create_task(b.run(stops[1])),
        ]
        try:

            async def shared() -> bool:
                counts = await slots_per_target(db)
                return (
                    bool(a.targets and b.targets) and len(counts) == 4 and min(counts.values()) >= 3
                )

            await wait_for(shared, timeout=90, what="both streamers scraping, 3 slots a target")
            assert not set(a.targets) & set(b.targets)  # each target held by one of them
            before = await slots_per_target(db)
            stops[0].set()  # a stops gracefully: b takes its targets over at its next tick
            await asyncio.wait_for(tasks[0], 30)

            async def taken() -> bool:
                counts = await slots_per_target(db)
                return len(b.targets) == 4 and all(counts[t] >= before[t] + 3 for t in before)

            await wait_for(taken, timeout=90, what="b scraping all four, 3 more slots each")
            stops[1].set()
            await asyncio.wait_for(tasks[1], 30)
        finally:
            for event in stops:
                event.set()
            await asyncio.wait(tasks, timeout=30)
        records = await drain(mq, "t")

    slots = await query(
        db,
        "SELECT t.address, (extract(epoch FROM s.slot) * 1e6)::bigint, s.start, s.count,"
        " (extract(epoch FROM s.scraped_at) * 1e6)::bigint, s.payload IS NULL"
        " FROM scrape_slots s JOIN scrape_targets t ON t.id = s.target_id ORDER BY 1, 2",
    )
    assert all(published for *_, published in slots)  # nothing left to publish
    # Every slot's records are in the broker (a graceful stop publishes what it claimed),
    # stamped with the scrape's start; no record outside a slot. A record sent twice (a slot
    # published again by a target's next holder: a lease that ran out under load) is the
    # same record, byte for byte, which the collector's insert absorbs.
    values: dict[int, bytes] = {}
    for r in records:
        seq = decode(r.value).seq
        assert values.setdefault(seq, r.value) == r.value
    points = [decode(v) for v in values.values()]
    by_seq = {p.seq: p for p in points}
    assert len(by_seq) == sum(s[3] for s in slots)
    for _address, _slot, start, count, scraped_at, _ in slots:
        assert {by_seq[q].ts_us for q in range(start, start + count)} == {scraped_at}
    # A handed-over target lost no slot: one every interval, in a row.
    for address in {s[0] for s in slots}:
        times = [s[1] for s in slots if s[0] == address]
        assert all(b - a == 1_500_000 for a, b in zip(times, times[1:], strict=False)), address
    assert (await query(db, "SELECT sum(missed) FROM scrape_targets"))[0][0] == 0
    # The MIG host's instances are devices of their own, keyed by their physical GPU.
    migs = {p.gpu.uuid for p in points if p.gpu.mig_instance is not None}
    assert len(migs) == 8 * 3
    assert all(r.key == decode(r.value).gpu.physical_uuid for r in records)
    assert len({p.gpu.uuid for p in points}) == 4 * 8 + 24


async def test_a_slow_or_dead_target_delays_no_other_and_is_retried_with_backoff(broker, db):
    registry = CollectorRegistry()
    stop = asyncio.Event()
    async with (
        exporters(3) as good,
        faulty() as bad,
        BrokerClient(broker.url) as mq,
    ):
        targets = [*good, *bad.values()]
        s = scraper(
            db,
            mq,
            registry,
            targets,
            timeout=0.5,
            max_backoff=6.0,
            fields=FieldFilter.parse("DCGM_FI_DEV_PCIE_*"),
        )
        task = asyncio.create_task(s.run(stop, migrate=True))
        try:

            async def six_each() -> bool:
                counts = await slots_per_target(db)
                return len(counts) == 7 and min(counts[t] for t in good) >= 6

            await wait_for(six_each, timeout=120, what="six slots of each good target")

            def value(name: str, **labels: str) -> float:
                return registry.get_sample_value(name, labels) or 0.0

            # Per-target health while the streamer holds them: who is up, who fails and how.
            for t in good:
                assert value("telemetry_streamer_target_up", target=t) == 1
                assert value("telemetry_streamer_target_samples", target=t) == 8 * 25
                assert (
                    value("telemetry_streamer_target_last_success_timestamp_seconds", target=t) > 0
                )
                assert value("telemetry_streamer_target_scrape_duration_seconds", target=t) > 0
            for name, kind in (
                ("never", "timeout"),
                ("error", "http_status"),
                ("refused", "connection"),
            ):
                assert value("telemetry_streamer_target_up", target=bad[name]) == 0
                failures = value(
                    "telemetry_streamer_target_scrape_failures_total", target=bad[name], kind=kind
                )
                assert failures >= 1, name
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    # The hanging exporter cost nobody a slot: every good target has one per interval.
    missed = dict(await query(db, "SELECT address, missed FROM scrape_targets"))
    assert all(missed[t] == 0 for t in good)
    # Retried with backoff: fewer attempts than slots went by (skipping 1, 3, ... slots).
    counts = await slots_per_target(db)
    slots_gone_by = min(counts[t] for t in good)
    attempts = value("telemetry_streamer_scrape_failures_total", kind="timeout")
    assert 1 <= attempts < slots_gone_by
    assert value("telemetry_streamer_scrape_failures_total", kind="http_status") >= 1
    assert value("telemetry_streamer_scrape_failures_total", kind="connection") >= 1
    assert value("telemetry_streamer_scrape_slots_total", outcome="skipped") >= 1
    assert counts[bad["never"]] == counts[bad["error"]] == counts[bad["refused"]] == 0
    # A bad line costs that line: the broken exporter's slots are stored, one sample short,
    # with the field outside the catalog the allow-list keeps (registered with its HELP).
    assert counts[bad["broken"]] >= 1
    broken = await query(
        db,
        "SELECT DISTINCT s.count FROM scrape_slots s JOIN scrape_targets t ON t.id = s.target_id"
        " WHERE t.address = %s",
        bad["broken"],
    )
    assert broken == [(6 + 1,)]  # 7 samples in the fixture, 1 bad line, 1 extra field
    assert value("telemetry_streamer_scrape_bad_lines_total") == counts[bad["broken"]]
    assert await query(db, "SELECT name, unit, description FROM metrics WHERE id >= 10000") == [
        ("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "KB", "PCIe TX throughput (in KB).")
    ]
    # Per-target health, as exported while the streamer held them (read at the end).
    assert value("telemetry_streamer_scrape_samples_total") >= 6 * 3 * 200

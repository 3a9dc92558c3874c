"""Streamers scrape a stand-in dcgm-exporter per host of the CSV (31 hosts, 247 GPUs): one is
killed with SIGKILL and one added mid-run, and every (target, slot) is stored exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import datetime

import aiohttp
import pytest
from telemetry_devstack import ServiceProcess

from tests.helpers import scrape, wait_for

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

INTERVAL = 3.0
INTERVAL_US = round(INTERVAL * 1e6)
HOSTS, GPUS, FIELDS = 31, 247, 25


async def query(db, sql: str, *args) -> list[tuple]:
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, args or None)
        return list(await cur.fetchall())


def owner_pid(owner: str | None) -> int | None:
    """The process id in a streamer's owner name (host:pid:token)."""
    return None if owner is None else int(owner.split(":")[1])


async def holders(db) -> dict[str, int | None]:
    """Which streamer process holds each target now."""
    rows = await query(
        db, "SELECT address, owner, lease_until > now() FROM scrape_targets ORDER BY address"
    )
    return {address: owner_pid(owner) if leased else None for address, owner, leased in rows}


async def slots(db) -> dict[str, list[int]]:
    """Each target's stored slots (start times in microseconds), in order."""
    rows = await query(
        db,
        "SELECT t.address, (extract(epoch FROM s.slot) * 1e6)::bigint"
        " FROM scrape_slots s JOIN scrape_targets t ON t.id = s.target_id ORDER BY 1, 2",
    )
    out: dict[str, list[int]] = defaultdict(list)
    for address, slot in rows:
        out[address].append(slot)
    return out


def now_us() -> int:
    return time.time_ns() // 1000


async def test_every_slot_of_every_target_is_stored_once_through_a_kill_and_an_add(make_stack, db):
    stack = await make_stack(
        streamers=3,
        collectors=2,
        source="scrape",
        scrape_interval=INTERVAL,
        env={"STREAMER_SCRAPE_TIMEOUT": "2.5", "COLLECTOR_WORKERS": "2"},
    )
    pids = {p.pid for p in stack.streamers}

    async def warm() -> dict[str, list[int]] | None:
        held, stored = await holders(db), await slots(db)
        if len(held) != HOSTS or set(held.values()) != pids:
            return None  # every target held, by the three streamers
        return stored if min(len(stored.get(t, [])) for t in held) >= 3 else None

    warmed = await wait_for(warm, timeout=240, what="31 targets held by 3 streamers, 3 slots each")
    start = {t: s[-1] for t, s in warmed.items()}  # checked from here on

    held = await holders(db)
    victim = max(stack.streamers, key=lambda p: sum(1 for pid in held.values() if pid == p.pid))
    orphans = {t for t, pid in held.items() if pid == victim.pid}
    assert orphans
    victim.kill()
    killed_at = now_us()
    assert await victim.wait() == -9

    async def taken_over() -> bool:
        held, stored = await holders(db), await slots(db)
        return all(held[t] not in (None, victim.pid) for t in orphans) and all(
            stored[t][-1] > killed_at + 2 * INTERVAL_US for t in orphans
        )

    await wait_for(taken_over, timeout=120, what="the killed streamer's targets taken over")
    takeovers = sum(
        [await scrape(p.url, "telemetry_streamer_scrape_target_takeovers_total")
         for p in stack.streamers if p is not victim]
    )  # fmt: skip
    assert takeovers >= len(orphans)

    added = await stack.add_streamer()
    added_at = now_us()

    async def rebalanced() -> bool:
        held, stored = await holders(db), await slots(db)
        return added.pid in held.values() and all(
            s[-1] > added_at + 3 * INTERVAL_US for s in stored.values()
        )

    await wait_for(rebalanced, timeout=120, what="the added streamer scraping its share")
    ended_at = now_us()
    # Stop the streamers (a graceful stop publishes what it claimed), then let the collectors
    # store everything before looking.
    codes = await asyncio.gather(*(p.stop() for p in stack.streamers))
    assert sorted(codes) == [-9, 0, 0, 0]

    async def drained() -> bool:
        [(expected, pending)] = await query(
            db, "SELECT coalesce(sum(count), 0), count(*) FILTER (WHERE payload IS NOT NULL)"
            " FROM scrape_slots"
        )  # fmt: skip
        [(stored,)] = await query(db, "SELECT count(*) FROM telemetry")
        return pending == 0 and stored == expected

    await wait_for(drained, timeout=180, what="every claimed slot stored")

    # Each slot's datapoints are in telemetry once, all with the scrape's time.
    mismatched = await query(
        db,
        "SELECT s.target_id, s.slot, s.count, count(t.seq), count(DISTINCT t.ts),"
        " bool_and(t.ts = s.scraped_at)"
        " FROM scrape_slots s LEFT JOIN telemetry t ON t.stream_id = s.stream_id"
        "  AND t.seq >= s.start AND t.seq < s.start + s.count"
        " GROUP BY s.target_id, s.slot, s.count"
        " HAVING count(t.seq) <> s.count OR count(DISTINCT t.ts) <> 1"
        "  OR NOT bool_and(t.ts = s.scraped_at)",
    )
    assert mismatched == []
    counts = set(await query(db, "SELECT DISTINCT count FROM scrape_slots"))
    assert counts == {(8 * FIELDS,), (7 * FIELDS,)}  # host 012 has 7 GPUs
    # None doubled: one datapoint per GPU, metric and scrape.
    assert (
        await query(
            db,
            "SELECT gpu_id, metric_id, ts FROM telemetry GROUP BY 1, 2, 3 HAVING count(*) > 1",
        )
        == []
    )
    # None missing: a slot every interval for every target, from warm-up to the end, except,
    # for the killed streamer's targets, slots that began in the takeover delay (the slot in
    # progress at the kill, and those within two intervals of it).
    stored = await slots(db)
    assert len(stored) == HOSTS
    for target, times in stored.items():
        checked = [s for s in times if start[target] <= s <= ended_at]
        for a, b in zip(checked, checked[1:], strict=False):
            missing = range(a + INTERVAL_US, b, INTERVAL_US)
            for slot in missing:
                assert target in orphans, f"{target}: slot {slot} missing"
                assert killed_at - INTERVAL_US < slot < killed_at + 2 * INTERVAL_US, (
                    f"{target}: slot {slot} missing, {(slot - killed_at) / 1e6:.1f} s from the kill"
                )
            assert (b - a) % INTERVAL_US == 0  # no slot between slots: none scraped twice

    # The API lists all 247 GPUs, each with the latest value of every field.
    assert stack.api is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.api.url}/api/v1/gpus", params={"limit": "1000"}) as r:
            gpus = (await r.json())["items"]
        assert len(gpus) == GPUS
        assert len({g["hostname"] for g in gpus}) == HOSTS

        async def state(uuid: str) -> dict:
            async with http.get(f"{stack.api.url}/api/v1/gpus/{uuid}") as r:
                assert r.status == 200
                return await r.json()

        states = await asyncio.gather(*(state(g["id"]) for g in gpus))
    for s in states:
        assert len(s["metrics"]) == FIELDS
        [latest] = {m["time"] for m in s["metrics"]}  # every field from one scrape
        # (last_seen is refreshed every few seconds, not with every batch)
        assert datetime.fromisoformat(latest) >= datetime.fromisoformat(s["last_seen"])


async def test_a_slot_claimed_by_a_killed_streamer_is_published_by_the_next_one(
    make_stack, db, tmp_path
):
    """The dead streamer claimed slots (their records and numbers are in the work index) but
    its broker never took them: the next holder publishes them, the same datapoints."""
    stack = await make_stack(
        streamers=1,
        collectors=1,
        source="scrape",
        scrape_interval=INTERVAL,
        exporter_args=["--hosts", "2"],
        env={"STREAMER_SCRAPE_TIMEOUT": "2.5"},
    )
    template = dict(stack.streamers[0].env)
    await stack.streamers[0].stop()
    # A streamer cut off from the pipeline's broker: it publishes to a broker of its own,
    # which dies; from then on it scrapes and claims, and publishes nothing.
    side = ServiceProcess(
        "side-broker",
        "telemetry_broker",
        prefix="BROKER",
        env={"BROKER_HOST": "127.0.0.1", "BROKER_DATA_DIR": str(tmp_path / "side")},
        sink=None,
    )
    await side.start()
    await side.wait_ready(60)
    cut_off = ServiceProcess(
        "streamer-cut-off",
        "telemetry_streamer",
        prefix="STREAMER",
        env={**template, "STREAMER_BROKER_URL": side.url},
        sink=None,
    )
    await cut_off.start()
    await cut_off.wait_ready(120)
    side.kill()
    await side.wait()

    async def claimed_unpublished() -> list[tuple]:
        return await query(
            db,
            "SELECT s.target_id, s.start, s.count FROM scrape_slots s"
            " WHERE s.payload IS NOT NULL AND s.owner LIKE %s",
            f"%:{cut_off.pid}:%",
        )

    await wait_for(claimed_unpublished, timeout=120, what="a slot claimed, not published")
    cut_off.kill()
    await cut_off.wait()
    pending = await claimed_unpublished()
    seqs = [start + i for _, start, n in pending for i in range(n)]
    successor = await stack.add_streamer()

    async def republished() -> bool:
        [(stored,)] = await query(db, "SELECT count(*) FROM telemetry WHERE seq = ANY(%s)", seqs)
        return stored == len(seqs)

    await wait_for(republished, timeout=120, what="the dead streamer's claimed slots stored")
    assert await scrape(successor.url, "telemetry_streamer_scrape_slots_republished_total") >= 1
    assert await scrape(successor.url, "telemetry_streamer_scrape_target_takeovers_total") >= 1
    # Published as the dead streamer claimed them: its numbers, its scrape's time.
    assert await query(
        db,
        "SELECT count(*) FILTER (WHERE t.ts <> s.scraped_at), count(*) FROM scrape_slots s"
        " JOIN telemetry t ON t.stream_id = s.stream_id AND t.seq >= s.start"
        "  AND t.seq < s.start + s.count WHERE t.seq = ANY(%s)",
        seqs,
    ) == [(0, len(seqs))]

"""The scrape work index: members, target leases, slots claimed once past a watermark."""

from __future__ import annotations

import time

import orjson
from telemetry_model import METRICS_BY_NAME, Datapoint, Gpu, encode
from telemetry_store import (
    GpuSighting,
    acquire_targets,
    claim_slot,
    ensure_metrics,
    ensure_streams,
    find_gpu_json,
    finish_slot,
    insert_datapoints,
    join_members,
    leave_members,
    list_gpus_json,
    live_targets,
    pending_slots,
    prune_scrapes,
    release_targets,
    renew_targets,
    stream_id,
    sync_catalog,
    upsert_gpus,
    upsert_targets,
)

S = 10_000_000  # a 10 s interval in microseconds
T0 = 1_800_000_000_000_000


async def ids(cur, *addresses: str) -> list[int]:
    await cur.execute(
        "SELECT id FROM scrape_targets WHERE address = ANY(%s) ORDER BY address",
        (list(addresses),),
    )
    return [r[0] for r in await cur.fetchall()]


async def expire_target(cur, target: int) -> None:
    """What the passage of the lease time does to a holder that stopped renewing."""
    await cur.execute(
        "UPDATE scrape_targets SET lease_until = now() - interval '1 second' WHERE id = %s",
        (target,),
    )


async def claim(cur, target: int, owner: str, slot: int, count: int = 3, **kw):
    sid = await stream_id(cur, "scrape")
    return await claim_slot(
        cur,
        target_id=target,
        owner=owner,
        slot_us=slot,
        interval=10.0,
        stream_id=sid,
        count=count,
        scraped_at_us=slot + 1234,
        payload=b"p%d" % slot if count else None,
        **kw,
    )


async def test_members_see_each_other_while_their_leases_run(cur):
    assert await join_members(cur, "b", 10) == ["b"]
    assert await join_members(cur, "a", 10) == ["a", "b"]
    await cur.execute(
        "UPDATE scrape_members SET lease_until = now() - interval '1 s' WHERE owner = 'b'"
    )
    assert await join_members(cur, "a", 10) == ["a"]  # b stopped renewing: gone
    assert await join_members(cur, "b", 10) == ["a", "b"]  # and back once it renews
    await leave_members(cur, "b")
    assert await join_members(cur, "a", 10) == ["a"]


async def test_discovery_adds_new_targets_only_and_listing_keeps_them_live(cur):
    await upsert_targets(cur, ["http://h1:9400/metrics", "http://h2:9400/metrics"])
    await upsert_targets(cur, ["http://h2:9400/metrics", "http://h3:9400/metrics"] * 2)
    await cur.execute("SELECT last_value FROM scrape_targets_id_seq")
    assert (await cur.fetchone())[0] == 3  # a known address draws no id
    await cur.execute(
        "UPDATE scrape_targets SET last_seen = now() - interval '1 hour'"
        " WHERE address = 'http://h1:9400/metrics'"
    )
    live = await live_targets(cur, ttl=60)
    assert [t.address for t in live] == ["http://h2:9400/metrics", "http://h3:9400/metrics"]
    assert all(t.listed and not t.leased and t.owner is None and not t.pending for t in live)


async def test_a_target_is_held_by_one_streamer_and_taken_over_once_its_lease_ran_out(cur):
    await upsert_targets(cur, ["t1", "t2"])
    t1, t2 = await ids(cur, "t1", "t2")
    got = await acquire_targets(cur, "a", [t1, t2], 10)
    assert [(g.id, g.takeover, g.last_slot_us) for g in got] == [
        (t1, False, None),
        (t2, False, None),
    ]
    assert await acquire_targets(cur, "b", [t1, t2], 10) == []  # a's leases run
    assert await renew_targets(cur, "a", [t1, t2], 10) == {t1, t2}
    await expire_target(cur, t1)  # a stopped renewing t1 (it died, or is cut off)
    [taken] = await acquire_targets(cur, "b", [t1, t2], 10)
    assert (taken.id, taken.takeover) == (t1, True)
    assert await renew_targets(cur, "a", [t1, t2], 10) == {t2}  # a learns it lost t1
    # A released target is handed over, not taken over.
    await release_targets(cur, "a", [t2])
    assert await renew_targets(cur, "a", [t2], 10) == set()
    [handed] = await acquire_targets(cur, "b", [t2], 10)
    assert (handed.id, handed.takeover) == (t2, False)
    await cur.execute("SELECT takeovers FROM scrape_targets ORDER BY id")
    assert [r[0] for r in await cur.fetchall()] == [1, 0]


async def test_a_slot_is_claimed_once_past_the_watermark_with_its_own_sequence_numbers(cur):
    await upsert_targets(cur, ["t1", "t2"])
    t1, t2 = await ids(cur, "t1", "t2")
    await acquire_targets(cur, "a", [t1, t2], 10)
    first = await claim(cur, t1, "a", T0, count=5)
    assert first is not None and (first.start, first.count, first.missed) == (0, 5, 0)
    assert await claim(cur, t1, "a", T0, count=5) is None  # the same slot again
    assert await claim(cur, t1, "a", T0 - S) is None  # an older slot
    other = await claim(cur, t2, "a", T0, count=4)
    assert other is not None and other.start == 5  # one stream, no overlap
    # Two slots skipped: counted as missed, visible in the target's row.
    later = await claim(cur, t1, "a", T0 + 3 * S, count=2)
    assert later is not None and (later.start, later.missed) == (9, 2)
    await cur.execute("SELECT slots, missed, last_slot FROM scrape_targets WHERE id = %s", (t1,))
    slots, missed, last = await cur.fetchone()
    assert (slots, missed) == (2, 2)
    # A lease that ran out while nobody took the target: its holder was only late to renew.
    await expire_target(cur, t1)
    late = await claim(cur, t1, "a", T0 + 4 * S, count=1)
    assert late is not None and late.start == 11
    # Not the holder (never, no longer, or released): nothing is claimed, no number is drawn.
    assert await claim(cur, t1, "b", T0 + 5 * S) is None
    await acquire_targets(cur, "b", [t1], 10)
    assert await claim(cur, t1, "a", T0 + 5 * S) is None
    await release_targets(cur, "a", [t2])
    assert await claim(cur, t2, "a", T0 + 5 * S) is None
    await cur.execute("SELECT next_seq FROM streams WHERE name = 'scrape'")
    assert (await cur.fetchone())[0] == 12


async def test_a_takeover_publishes_what_the_dead_holder_claimed_and_never_claims_it_again(cur):
    await upsert_targets(cur, ["t1"])
    [t1] = await ids(cur, "t1")
    await acquire_targets(cur, "a", [t1], 10)
    one = await claim(cur, t1, "a", T0)
    two = await claim(cur, t1, "a", T0 + S, done_us=T0)  # finishes T0 on the way
    assert one is not None and two is not None
    [pending] = await pending_slots(cur, t1)
    assert (pending.slot_us, pending.start, pending.count) == (T0 + S, two.start, 3)
    assert (pending.scraped_at_us, pending.payload) == (T0 + S + 1234, b"p%d" % (T0 + S))
    await expire_target(cur, t1)  # a dies while publishing T0 + S
    [taken] = await acquire_targets(cur, "b", [t1], 10)
    assert taken.takeover and taken.last_slot_us == T0 + S
    # b scrapes the same slot too (its clock says so): refused, the slot is a's.
    assert await claim(cur, t1, "b", T0 + S) is None
    # b publishes a's payload, then goes on from the next slot.
    assert [p.slot_us for p in await pending_slots(cur, t1)] == [T0 + S]
    assert await finish_slot(cur, t1, T0 + S)
    assert not await finish_slot(cur, t1, T0 + S)
    assert await pending_slots(cur, t1) == []
    nxt = await claim(cur, t1, "b", T0 + 2 * S)
    assert nxt is not None and nxt.missed == 0
    await cur.execute(
        "SELECT (extract(epoch FROM slot) * 1000000)::bigint, owner, payload IS NULL,"
        " published_at IS NOT NULL FROM scrape_slots WHERE target_id = %s ORDER BY slot",
        (t1,),
    )
    assert await cur.fetchall() == [
        (T0, "a", True, True),
        (T0 + S, "a", True, True),
        (T0 + 2 * S, "b", False, False),
    ]


async def test_an_empty_scrape_is_claimed_with_nothing_to_publish(cur):
    await upsert_targets(cur, ["t1"])
    [t1] = await ids(cur, "t1")
    await acquire_targets(cur, "a", [t1], 10)
    empty = await claim(cur, t1, "a", T0, count=0)
    assert empty is not None and empty.count == 0
    assert await pending_slots(cur, t1) == []


async def test_a_target_with_a_slot_to_publish_stays_live_after_discovery_drops_it(cur):
    await upsert_targets(cur, ["t1"])
    [t1] = await ids(cur, "t1")
    await acquire_targets(cur, "a", [t1], 10)
    await claim(cur, t1, "a", T0)
    await cur.execute("UPDATE scrape_targets SET last_seen = now() - interval '1 day'")
    [row] = await live_targets(cur, ttl=60)
    assert (row.id, row.listed, row.pending, row.owner) == (t1, False, True, "a")
    await prune_scrapes(cur, history=3600, forget=60)
    assert await ids(cur, "t1") == [t1]  # kept: its slot is not published yet
    await finish_slot(cur, t1, T0)
    await cur.execute("UPDATE scrape_slots SET published_at = now() - interval '2 hours'")
    await prune_scrapes(cur, history=3600, forget=60)
    assert await ids(cur, "t1") == []
    await cur.execute("SELECT count(*) FROM scrape_slots")
    assert (await cur.fetchone())[0] == 0


async def test_fields_outside_the_catalog_are_registered_once_and_a_later_catalog_entry_wins(cur):
    await ensure_metrics(cur, {"DCGM_FI_DEV_PCIE_TX_THROUGHPUT": ("KB", "PCIe TX throughput")})
    await ensure_metrics(cur, {"DCGM_FI_DEV_PCIE_TX_THROUGHPUT": ("x", "y")})
    await cur.execute("SELECT id, unit, description FROM metrics WHERE id >= 10000")
    assert await cur.fetchall() == [(10000, "KB", "PCIe TX throughput")]
    # A field registered at run time that a later catalog names: its datapoints keep the old
    # id under a name of their own; the name goes to the catalog's id.
    await cur.execute(
        "UPDATE metrics SET name = 'DCGM_FI_DEV_GPU_UTIL_X' WHERE name = 'DCGM_FI_DEV_GPU_UTIL'"
    )
    await cur.execute("UPDATE metrics SET name = 'DCGM_FI_DEV_GPU_UTIL' WHERE id = 10000")
    await sync_catalog(cur)
    await cur.execute("SELECT id, name FROM metrics WHERE name LIKE 'DCGM_FI_DEV_GPU_UTIL%%'")
    assert sorted(await cur.fetchall()) == [
        (METRICS_BY_NAME["DCGM_FI_DEV_GPU_UTIL"].id, "DCGM_FI_DEV_GPU_UTIL"),
        (10000, "DCGM_FI_DEV_GPU_UTIL (registered as 10000)"),
    ]


async def test_a_mig_instance_is_stored_with_its_parent_and_the_api_json_shows_it(cur):
    parent = GpuSighting("GPU-a", "node-a", 0, "nvidia0", "NVIDIA A100", "550.54.15", T0, T0)
    mig = GpuSighting(
        "GPU-a:mig1", "node-a", 0, "nvidia0", "NVIDIA A100", "550.54.15", T0, T0,
        mig_profile="3g.40gb", mig_instance=1, parent_uuid="GPU-a",
    )  # fmt: skip
    await upsert_gpus(cur, [parent, mig])
    await ensure_streams(cur, ["s"])
    gpus = [
        Gpu("GPU-a", "node-a", 0, "nvidia0", "NVIDIA A100", "550.54.15"),
        Gpu("GPU-a:mig1", "node-a", 0, "nvidia0", "NVIDIA A100", "550.54.15", "3g.40gb", 1),
    ]
    now_us = time.time_ns() // 1000
    points = [Datapoint("s", i, now_us, "DCGM_FI_DEV_FB_USED", 1.0, g) for i, g in enumerate(gpus)]
    assert await insert_datapoints(cur, [encode(p) for p in points]) == 2
    page = await list_gpus_json(cur, limit=10)
    items = orjson.loads(f"[{page.items}]")
    assert [i["id"] for i in items] == ["GPU-a", "GPU-a:mig1"]
    assert "mig" not in items[0]
    assert items[1]["mig"] == {"parent_id": "GPU-a", "profile": "3g.40gb", "instance": 1}
    state = orjson.loads(await find_gpu_json(cur, "GPU-a:mig1") or "")
    assert state["mig"]["profile"] == "3g.40gb" and state["metrics"][0]["value"] == 1.0


async def test_a_gpu_row_lists_the_metrics_it_reported_and_its_state_reads_those(cur):
    from dataclasses import replace

    temp, power = "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"
    seen = GpuSighting("GPU-b", "node-b", 0, "nvidia0", "H100", None, T0, T0, metrics=(temp,))
    await upsert_gpus(cur, [seen])
    await upsert_gpus(cur, [replace(seen, metrics=(power, temp))])
    await upsert_gpus(cur, [replace(seen, metrics=(temp,))])  # nothing new: left as it is
    await upsert_gpus(cur, [replace(seen, metrics=())])  # none: left as it is
    await cur.execute("SELECT metric_ids FROM gpus WHERE uuid = 'GPU-b'")
    assert (await cur.fetchone())[0] == sorted(METRICS_BY_NAME[m].id for m in (power, temp))
    await ensure_streams(cur, ["s"])
    gpu = Gpu("GPU-b", "node-b", 0, "nvidia0", "H100")
    now_us = time.time_ns() // 1000
    names = (temp, power, "DCGM_FI_DEV_SM_CLOCK")  # the clock: stored, not listed
    points = [Datapoint("s", i, now_us, m, 40.0 + i, gpu) for i, m in enumerate(names)]
    assert await insert_datapoints(cur, [encode(p) for p in points]) == 3
    state = orjson.loads(await find_gpu_json(cur, "GPU-b") or "")
    assert [m["metric"] for m in state["metrics"]] == [power, temp]  # catalog order
    # A row that does not know its metrics (NULL) reads every one, and stays so.
    await cur.execute("UPDATE gpus SET metric_ids = NULL WHERE uuid = 'GPU-b'")
    await upsert_gpus(cur, [seen])
    again = orjson.loads(await find_gpu_json(cur, "GPU-b") or "")
    assert [m["metric"] for m in again["metrics"]] == [power, temp, names[2]]

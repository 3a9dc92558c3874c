from __future__ import annotations

import time

import orjson
from telemetry_collector.store import LAST_SEEN_REFRESH_US, Registry
from telemetry_model import METRICS_BY_NAME, Datapoint, Gpu

GPU = Gpu("GPU-1", "host-1", 0, "nvidia0", "H100", "535")


def point(ts: int, gpu: Gpu = GPU) -> Datapoint:
    return Datapoint("s", ts, ts, "DCGM_FI_DEV_GPU_UTIL", 1.0, gpu)


def test_new_gpu_is_upserted_with_its_seen_range():
    reg = Registry()
    [s] = reg.stale_gpus([point(20), point(10), point(30)])
    assert (s.uuid, s.first_us, s.last_us) == ("GPU-1", 10, 30)


def test_known_gpu_is_skipped_until_last_seen_is_stale():
    reg = Registry()
    reg.remember(reg.stale_gpus([point(1_000)]), {"s"})
    assert reg.stale_gpus([point(2_000)]) == []
    assert len(reg.stale_gpus([point(1_000 + LAST_SEEN_REFRESH_US)])) == 1
    assert reg.streams == {"s"}


def test_changed_metadata_is_upserted_at_once():
    reg = Registry()
    reg.remember(reg.stale_gpus([point(1_000)]), set())
    moved = Gpu("GPU-1", "host-2", 0, "nvidia0", "H100", "550")
    [s] = reg.stale_gpus([point(1_001, moved)])
    assert s.hostname == "host-2" and s.driver_version == "550"


async def test_a_field_outside_the_catalog_and_a_mig_instance_are_stored(db):
    from telemetry_collector.store import store_batch
    from telemetry_model import encode

    mig = Gpu("GPU-1:mig2", "host-1", 0, "nvidia0", "A100", "550", "2g.20gb", 2)
    points = [
        point(1),
        Datapoint("s", 2, 2, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", 7.0, GPU),
        Datapoint("s", 3, 3, "DCGM_FI_DEV_GPU_UTIL", 40.0, mig),
    ]
    reg = Registry()
    assert reg.unknown_metrics(points) == {"DCGM_FI_DEV_PCIE_TX_THROUGHPUT"}
    assert (await store_batch(db, reg, points, [encode(p) for p in points])).stored.inserted == 3
    assert reg.unknown_metrics(points) == set()  # registered once per process
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT g.uuid, g.parent_uuid, g.mig_profile, g.mig_instance, m.name, m.id, t.value"
            " FROM telemetry t JOIN gpus g ON g.id = t.gpu_id JOIN metrics m ON m.id = t.metric_id"
            " ORDER BY t.seq"
        )
        rows = await cur.fetchall()
    assert rows == [
        ("GPU-1", None, None, None, "DCGM_FI_DEV_GPU_UTIL", 1, 1.0),
        ("GPU-1", None, None, None, "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", 10000, 7.0),
        ("GPU-1:mig2", "GPU-1", "2g.20gb", 2, "DCGM_FI_DEV_GPU_UTIL", 1, 40.0),
    ]


def test_a_metric_new_for_a_gpu_upserts_its_row_at_once():
    reg = Registry()
    reg.remember(reg.stale_gpus([point(1_000)]), set())
    assert reg.stale_gpus([point(1_001)]) == []
    temp = Datapoint("s", 2, 1_002, "DCGM_FI_DEV_GPU_TEMP", 40.0, GPU)
    [s] = reg.stale_gpus([point(1_002), temp])
    assert s.metrics == ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_GPU_UTIL")
    reg.remember([s], set())
    assert reg.stale_gpus([temp]) == []


async def test_a_gpus_latest_state_lists_its_metrics_and_one_first_reported_later(db):
    from telemetry_collector.store import store_batch
    from telemetry_model import encode
    from telemetry_store import cursor, find_gpu_json

    reg = Registry()  # one collector process: the row is upserted for the new metric alone
    now_us = time.time_ns() // 1000
    first = [Datapoint("s", 1, now_us, "DCGM_FI_DEV_GPU_UTIL", 10.0, GPU)]
    later = [
        Datapoint("s", 2, now_us + 1, "DCGM_FI_DEV_GPU_UTIL", 11.0, GPU),
        Datapoint("s", 3, now_us + 1, "DCGM_FI_PROF_SM_ACTIVE", 0.5, GPU),
    ]
    for batch in (first, later):
        assert (await store_batch(db, reg, batch, [encode(p) for p in batch])).stored.inserted
    async with cursor(db) as cur:
        await cur.execute("SELECT metric_ids FROM gpus WHERE uuid = %s", (GPU.uuid,))
        assert (await cur.fetchone())[0] == sorted(
            METRICS_BY_NAME[m].id for m in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_SM_ACTIVE")
        )
        state = orjson.loads(await find_gpu_json(cur, GPU.uuid) or "")
    assert {m["metric"]: m["value"] for m in state["metrics"]} == {
        "DCGM_FI_DEV_GPU_UTIL": 11.0,
        "DCGM_FI_PROF_SM_ACTIVE": 0.5,
    }

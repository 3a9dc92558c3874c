"""The age of the newest datapoint the API can serve, exported at each scrape."""

from __future__ import annotations

import time

from telemetry_api import create_app
from telemetry_model import WireTemplate, read_samples
from telemetry_store import (
    GpuSighting,
    create_pool,
    cursor,
    ensure_streams,
    insert_datapoints,
    migrate,
    transaction,
    upsert_gpus,
)

from conftest import CSV_PATH

from .conftest import Dataset, settings_for

GAUGE = "telemetry_api_newest_datapoint_age_seconds"


def gauge(body: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(f"{GAUGE} "):
            return float(line.split()[1])
    return None


async def test_the_newest_datapoints_age_is_read_at_each_scrape(client, dataset: Dataset):
    newest = max(p.ts for p in dataset.points).timestamp()
    before = time.time()
    body = (await (await client.get("/metrics")).get_data()).decode()
    after = time.time()
    age = gauge(body)
    assert age is not None, f"{GAUGE} not exported"
    # Refreshed by this scrape: the age of the dataset's newest datapoint at this moment.
    assert before - newest - 1e-3 <= age <= after - newest + 1e-3
    # The next scrape reads again: the age follows the clock.
    again = gauge((await (await client.get("/metrics")).get_data()).decode())
    assert again is not None and again >= age


async def test_a_datapoint_stored_after_the_last_scrape_shows_at_the_next(db, fresh_database_url):
    app = create_app(settings_for(fresh_database_url, pool_max_size=2))
    async with app.test_app():
        client = app.test_client()
        assert gauge((await (await client.get("/metrics")).get_data()).decode()) == -1  # none yet
        stamped = time.time() - 3.0
        ts_us = round(stamped * 1e6)
        sample = read_samples(CSV_PATH)[0]
        g = sample.gpu
        async with transaction(db) as cur:
            await ensure_streams(cur, ["s"])
            sighting = GpuSighting(
                g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, ts_us, ts_us
            )
            await upsert_gpus(cur, [sighting])
            await insert_datapoints(cur, [WireTemplate(sample).encode(b'"s"', 0, ts_us)])
        before = time.time()
        age = gauge((await (await client.get("/metrics")).get_data()).decode())
        after = time.time()
        assert age is not None and before - stamped - 1e-3 <= age <= after - stamped + 1e-3


async def test_the_query_reads_indexes_only(dataset: Dataset):
    from telemetry_api.metrics import _NEWEST

    pool = await create_pool(dataset.dsn, maxsize=1)
    try:
        await migrate(pool)
        async with cursor(pool) as cur:
            await cur.execute("SET enable_seqscan = off")  # what the plan could use, not costs
            await cur.execute("EXPLAIN " + _NEWEST)
            plan = "\n".join(r[0] for r in await cur.fetchall())
    finally:
        pool.close()
        await pool.wait_closed()
    telemetry_scans = [ln for ln in plan.splitlines() if " on telemetry" in ln]
    assert telemetry_scans and all("Index Only Scan Backward" in ln for ln in telemetry_scans), plan

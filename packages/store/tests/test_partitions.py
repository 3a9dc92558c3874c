"""Time partitions, retention and rollups on a real PostgreSQL (issue: storage for a fleet).

Each test gets a database of its own (``db``) and pins the maintenance job's clock, so days,
horizons and watermarks are exact.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from telemetry_model import METRICS, read_samples, to_micros
from telemetry_store import (
    Policy,
    Window,
    cursor,
    ensure_streams,
    list_partitions,
    read_buckets_json,
    run_maintenance,
    store_datapoints,
    transaction,
    upsert_gpus,
)
from telemetry_store.partitions import DAY_US, MINUTE_US
from telemetry_store.reads import buckets_json_query, find_gpu_json, list_gpus_json

from conftest import CSV_PATH, insert_old_schema

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # the pinned clock of every job run here
NOW_US = to_micros(NOW)
SAMPLES = read_samples(CSV_PATH)
GPUS = sorted({s.gpu.uuid for s in SAMPLES})


def wire(stream: str, seq: int, ts_us: int, metric: str, value: float, uuid: str) -> bytes:
    return orjson.dumps(
        {
            "stream": stream,
            "seq": seq,
            "ts": ts_us,
            "metric": metric,
            "value": value,
            "uuid": uuid,
            "container": None,
            "pod": None,
            "namespace": None,
        }
    )


async def register(cur, uuids=GPUS[:3], streams=("s1", "s2")) -> None:
    from telemetry_store import GpuSighting

    await ensure_streams(cur, list(streams))
    by = {s.gpu.uuid: s.gpu for s in SAMPLES}
    await upsert_gpus(
        cur,
        [
            GpuSighting(u, by[u].hostname, by[u].index, by[u].device, by[u].model, None, 0, 0)
            for u in sorted(uuids)
        ],
    )


async def store(pool, points: list[tuple[bytes, int]]):
    async with transaction(pool) as cur:
        return await store_datapoints(cur, [p for p, _ in points], [t for _, t in points])


async def count(pool, where: str = "true") -> int:
    async with cursor(pool) as cur:
        await cur.execute(f"SELECT count(*) FROM telemetry WHERE {where}")
        return int((await cur.fetchone())[0])


def replay(
    start_us: int,
    seconds: int,
    *,
    uuids=GPUS[:3],
    every_s: int = 10,
    stream="s1",
    seq0: int = 0,
    jitter: bool = True,
) -> list[tuple[bytes, int]]:
    """The CSV's rows for ``uuids`` (real DCGM values), one scrape every ``every_s`` seconds,
    as a streamer stamps them (a little jitter inside each scrape)."""
    rows = [s for s in SAMPLES if s.gpu.uuid in set(uuids)]
    rng = random.Random(start_us)
    out = []
    seq = seq0
    for k in range(0, seconds, every_s):
        for i, s in enumerate(rows):
            ts = start_us + k * 1_000_000 + (rng.randrange(0, 900_000) if jitter else i)
            value = s.value * (1 + 0.01 * math.sin(k + i))
            out.append((wire(stream, seq, ts, s.metric, value, s.gpu.uuid), ts))
            seq += 1
    return out


# --- partitions ---------------------------------------------------------------------------


async def test_partitions_appear_ahead_of_time(db):
    report = await run_maintenance(db, Policy(), now_us=NOW_US)
    async with cursor(db) as cur:
        names = {p.name for p in await list_partitions(cur, "telemetry")}
    # Today and three days ahead (the default), besides the two outside the data's domain.
    assert {f"telemetry_p202{d}" for d in ("61130", "61201", "61202", "61203")} <= names
    assert "telemetry_p20261204" not in names
    assert set(report.created) == {
        "telemetry_p20261130",
        "telemetry_p20261201",
        "telemetry_p20261202",
        "telemetry_p20261203",
    }
    # A later run a day on creates one more, and nothing twice.
    report = await run_maintenance(db, Policy(), now_us=NOW_US + DAY_US)
    assert report.created == ["telemetry_p20261204"]


async def test_a_row_whose_day_has_no_partition_gets_one_on_demand(db):
    async with transaction(db) as cur:
        await register(cur)
    far = NOW_US + 40 * DAY_US  # no maintenance has run: no partition for that day
    stored = await store(db, replay(far, 10) + replay(NOW_US, 10, seq0=1000))
    assert stored.inserted == 60 and stored.expired == 0
    assert set(stored.partitions) == {"telemetry_p20270109", "telemetry_p20261130"}
    async with cursor(db) as cur:
        assert {p.name for p in await list_partitions(cur, "telemetry")} >= set(stored.partitions)


async def test_duplicates_across_a_partition_boundary_are_stored_once(db):
    # The last millisecond of one day's partition and the first of the next: both datapoints
    # delivered twice (a redelivery carries the same bytes, so the same ts), in separate
    # transactions and once more within one batch, before and after maintenance.
    async with transaction(db) as cur:
        await register(cur)
    await run_maintenance(db, Policy(), now_us=NOW_US)
    eve = to_micros(datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC))
    uuid = GPUS[0]
    late = wire("s1", 7, eve, "DCGM_FI_DEV_GPU_TEMP", 63.0, uuid)
    early = wire("s1", 8, eve + 1000, "DCGM_FI_DEV_GPU_TEMP", 64.0, uuid)
    first = await store(db, [(late, eve), (early, eve + 1000)])
    again = await store(db, [(late, eve), (early, eve + 1000)])
    twice = await store(db, [(late, eve), (late, eve), (early, eve + 1000)])
    assert (first.inserted, again.inserted, twice.inserted) == (2, 0, 0)
    async with cursor(db) as cur:
        await cur.execute("SELECT tableoid::regclass::text, seq FROM telemetry ORDER BY seq")
        assert await cur.fetchall() == [("telemetry_p20261130", 7), ("telemetry_p20261201", 8)]


async def test_an_existing_database_migrates_with_its_data(fresh_database_url):
    from telemetry_store import create_pool, migrate

    pool = await create_pool(fresh_database_url, maxsize=2)
    try:
        assert (await migrate(pool, target=10))[-1] == 10
        day1 = to_micros(datetime(2026, 11, 28, 23, 0, tzinfo=UTC))
        old = replay(day1, 7200, seq0=0)  # two hours over midnight
        async with transaction(pool) as cur:
            await register(cur)
            assert await insert_old_schema(cur, [p for p, _ in old]) == len(old)
        assert await migrate(pool) == [20]
        assert await count(pool) == len(old)
        async with cursor(pool) as cur:
            parts = {p.name: p for p in await list_partitions(cur, "telemetry")}
            # The old table whole, over the days of its data (no row copied).
            legacy = parts["telemetry_legacy"]
            assert (legacy.lo_us, legacy.hi_us) == (
                to_micros(datetime(2026, 11, 28, tzinfo=UTC)),
                to_micros(datetime(2026, 11, 30, tzinfo=UTC)),
            )
        # The idempotency key holds across the upgrade: a redelivery is stored once.
        assert (await store(pool, old[:500])).inserted == 0
        newer = replay(to_micros(datetime(2026, 11, 30, 1, tzinfo=UTC)), 60, seq0=len(old))
        assert (await store(pool, newer)).inserted == len(newer)
        report = await run_maintenance(pool, Policy(), now_us=NOW_US)
        assert report.rows_1m > 0
        async with cursor(pool) as cur:
            await cur.execute("SELECT sum(count) FROM telemetry_1m")
            assert (await cur.fetchone())[0] == len(old) + len(newer)
    finally:
        pool.close()
        await pool.wait_closed()


# --- retention ----------------------------------------------------------------------------


async def test_data_older_than_the_retention_is_gone_newer_data_and_rollups_stay(db):
    async with transaction(db) as cur:
        await register(cur)
    # One hour of data on each of ten days before NOW (10:00-11:00), rolled up day by day as
    # the job would have while those days were current.
    per_day = {}
    for d in range(10, 0, -1):
        start = to_micros(NOW - timedelta(days=d, hours=2))
        per_day[d] = replay(start, 3600, seq0=d * 1_000_000)
        assert (await store(db, per_day[d])).inserted == len(per_day[d])
    report = await run_maintenance(db, Policy(), now_us=NOW_US)
    # Raw: the days wholly older than 7 days are dropped, day -7 (its partition reaches past
    # the horizon) and newer stay, whole.
    horizon = NOW_US - 7 * DAY_US
    assert sorted(report.dropped) == [
        "telemetry_early",
        "telemetry_p20261120",
        "telemetry_p20261121",
        "telemetry_p20261122",
    ]
    assert await count(db, "ts < '2026-11-23'") == 0
    for d in range(7, 0, -1):
        lo = to_micros(NOW - timedelta(days=d, hours=2))
        assert await count(
            db,
            f"ts >= 'epoch'::timestamptz + {lo} * interval '1 us'"
            f" AND ts < 'epoch'::timestamptz + {lo + 3_600_000_000} * interval '1 us'",
        ) == len(per_day[d])
    # Rollups of every day, the dropped ones included, hold every datapoint.
    async with cursor(db) as cur:
        for table in ("telemetry_1m", "telemetry_1h"):
            await cur.execute(f"SELECT sum(count) FROM {table}")
            assert (await cur.fetchone())[0] == sum(len(v) for v in per_day.values()), table
    # A datapoint older than the horizon is refused (its day is expired), a newer one stored.
    old = replay(horizon - 600_000_000, 10, seq0=99_000_000)
    new = replay(horizon + 600_000_000, 10, seq0=98_000_000)
    stored = await store(db, old + new)
    assert (stored.inserted, stored.expired) == (len(new), len(old))
    # The rollups outlive the raw data for their own retention: 90 days for minutes.
    report = await run_maintenance(db, Policy(), now_us=NOW_US + 85 * DAY_US)
    async with cursor(db) as cur:
        await cur.execute("SELECT count(*) FROM telemetry_1m")
        assert (await cur.fetchone())[0] > 0
        assert [
            p.name
            for p in await list_partitions(cur, "telemetry")
            if p.name.startswith("telemetry_p2026")
        ] == []
    report = await run_maintenance(db, Policy(), now_us=NOW_US + 120 * DAY_US)
    async with cursor(db) as cur:
        await cur.execute("SELECT count(*) FROM telemetry_1m")
        assert (await cur.fetchone())[0] == 0
        await cur.execute("SELECT sum(count) FROM telemetry_1h")
        assert (await cur.fetchone())[0] == sum(len(v) for v in per_day.values()) + len(new)


# --- rollups ------------------------------------------------------------------------------


async def _raw_and_rolled(cur, gpu: int, window: Window, step, origin, agg, after=None):
    rolled = await read_buckets_json(
        cur,
        window,
        step=step,
        origin=origin,
        aggregate=agg,
        limit=10_000,
        max_rows=1_000_000,
        after=after,
    )
    sql, params = buckets_json_query(
        window,
        step=step,
        origin=origin,
        aggregate=agg,
        limit=10_000,
        max_rows=1_000_000,
        after=after,
    )
    await cur.execute(sql, params)
    raw = (await cur.fetchone())[0]
    return json.loads(f"[{rolled.items}]"), json.loads(f"[{raw}]"), rolled


def _assert_same(rolled, raw, where):
    assert [(b["time"], b["metric"], b["count"]) for b in rolled] == [
        (b["time"], b["metric"], b["count"]) for b in raw
    ], where
    for a, b in zip(rolled, raw, strict=True):
        assert a["value"] == pytest.approx(b["value"], rel=1e-12, abs=1e-9), (where, a, b)


async def _gpu_id(cur, uuid) -> int:
    await cur.execute("SELECT id FROM gpus WHERE uuid = %s", (uuid,))
    return int((await cur.fetchone())[0])


async def test_rollup_answers_equal_raw_aggregation(db):
    async with transaction(db) as cur:
        await register(cur, uuids=GPUS[:4])
    # Six hours of the CSV's real values for four GPUs, from two streams, ending an hour
    # before NOW, so the last part is not rolled up yet when the job has run.
    start = to_micros(NOW - timedelta(hours=7, minutes=13, seconds=17))
    points = replay(start, 6 * 3600, uuids=GPUS[:4], every_s=15)
    points += replay(start + 5_000_000, 6 * 3600, uuids=GPUS[:4], every_s=30, stream="s2")
    for k in range(0, len(points), 2000):
        await store(db, points[k : k + 2000])
    report = await run_maintenance(db, Policy(), now_us=NOW_US - 3_600_000_000 - 47_000_000)
    assert report.rows_1m > 0 and report.rows_1h > 0
    async with cursor(db) as cur:
        gpu = await _gpu_id(cur, GPUS[1])
        t0 = NOW - timedelta(hours=8)
        cases = [
            # (start, end, step, origin): aligned and ragged windows, coarse and fine steps
            (t0, NOW, timedelta(hours=1), t0),
            (t0, NOW, timedelta(hours=2), t0),
            (t0 + timedelta(minutes=7, seconds=3), NOW, timedelta(minutes=1), t0),
            (t0, NOW - timedelta(seconds=31), timedelta(minutes=5), t0),
            (t0, NOW, timedelta(minutes=90), t0 + timedelta(minutes=30)),
            (t0 + timedelta(seconds=13), NOW, timedelta(hours=1), t0 + timedelta(seconds=13)),
            (t0, NOW, timedelta(seconds=30), t0),
            (t0, NOW, timedelta(days=1), datetime(1970, 1, 1, tzinfo=UTC)),
        ]
        used = set()
        for metrics in ((), (METRICS[0].id, METRICS[4].id)):
            for lo, hi, step, origin in cases:
                for agg in ("avg", "min", "max"):
                    window = Window(gpu, lo, hi, metrics)
                    rolled, raw, page = await _raw_and_rolled(cur, gpu, window, step, origin, agg)
                    assert raw, (lo, hi, step)
                    _assert_same(rolled, raw, (metrics, lo, hi, step, origin, agg))
                    used.add(page.scanned < sum(b["count"] for b in raw))
        assert used == {True, False}  # rollups served some cases, raw data the rest


async def test_late_data_corrects_the_rollup_it_belongs_to(db):
    async with transaction(db) as cur:
        await register(cur)
    start = to_micros(NOW - timedelta(hours=3))
    await store(db, replay(start, 3 * 3600 - 120))
    await run_maintenance(db, Policy(), now_us=NOW_US)
    # A redelivery after an outage: datapoints of a minute rolled up long ago, from another
    # stream (new seqs), and one already stored (a duplicate: changes nothing).
    minute = start + 37 * MINUTE_US
    late = replay(minute + 5_000_000, 40, stream="s2", seq0=5_000_000)
    stored = await store(db, late + replay(start, 10)[:1])
    assert stored.inserted == len(late) and stored.late == len(late) + 1
    async with cursor(db) as cur:
        gpu = await _gpu_id(cur, GPUS[0])
        window = Window(gpu, NOW - timedelta(hours=4), NOW)
        for step in (timedelta(minutes=1), timedelta(hours=1)):
            # At once: the late minute (and its hour) come from raw data until re-aggregated.
            rolled, raw, _ = await _raw_and_rolled(cur, gpu, window, step, window.start, "avg")
            _assert_same(rolled, raw, step)
        await cur.execute("SELECT count(DISTINCT minute) FROM telemetry_late")
        assert (await cur.fetchone())[0] == 2  # the late minute, and the duplicate's
    report = await run_maintenance(db, Policy(), now_us=NOW_US + 60_000_000)
    assert report.late_minutes == 2
    async with cursor(db) as cur:
        await cur.execute("SELECT count(*) FROM telemetry_late")
        assert (await cur.fetchone())[0] == 0
        for table, width in (("telemetry_1m", "1 minute"), ("telemetry_1h", "1 hour")):
            await cur.execute(
                f"SELECT r.bucket, r.metric_id, r.count, t.n FROM {table} r JOIN ("
                f" SELECT gpu_id, metric_id, date_bin('{width}', ts, 'epoch') AS b, count(*) n"
                " FROM telemetry GROUP BY 1, 2, 3) t ON (t.gpu_id, t.metric_id, t.b)"
                " = (r.gpu_id, r.metric_id, r.bucket) WHERE r.count <> t.n"
            )
            assert await cur.fetchall() == [], table
        for step in (timedelta(minutes=1), timedelta(hours=1)):
            rolled, raw, page = await _raw_and_rolled(cur, gpu, window, step, window.start, "max")
            _assert_same(rolled, raw, step)


# --- reads over many partitions -----------------------------------------------------------


async def test_latest_state_reads_only_the_newest_partition_with_data(db):
    async with transaction(db) as cur:
        await register(cur)
    for d in range(6, 0, -1):
        await store(db, replay(to_micros(NOW - timedelta(days=d)), 60, seq0=d * 10_000))
    await run_maintenance(db, Policy(), now_us=NOW_US)
    async with cursor(db) as cur:
        from telemetry_store.reads import _GPU_STATE, _statement

        # The generic plan, as the API runs it prepared.
        await cur.execute("SET plan_cache_mode = force_generic_plan")
        _, prepare, execute = _statement(_GPU_STATE)
        await cur.execute(prepare)
        await cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + execute, {"uuid": GPUS[0]})
        (plan,) = await cur.fetchone()
        plan = plan if isinstance(plan, list) else json.loads(plan)
        await cur.execute("DEALLOCATE ALL")

        def nodes(n):
            yield n
            for c in n.get("Plans", []):
                yield from nodes(c)

        run = {
            n["Relation Name"]
            for n in nodes(plan[0]["Plan"])
            if n.get("Relation Name", "").startswith("telemetry_p") and n["Actual Loops"] > 0
        }
        # Newest first, stopping at the first partition with the metric: the empty ones
        # ahead and the last day's; never the five older days.
        assert "telemetry_p20261129" in run
        assert not run & {f"telemetry_p202611{d}" for d in range(24, 29)}, run
        assert json.loads(await find_gpu_json(cur, GPUS[0]))["metrics"]


async def test_a_gpu_whose_raw_data_is_gone_is_still_listed_from_its_rollups(db):
    async with transaction(db) as cur:
        await register(cur, uuids=GPUS[:1])
    await store(db, replay(to_micros(NOW - timedelta(days=20)), 120, uuids=GPUS[:1]))
    await run_maintenance(db, Policy(), now_us=NOW_US)
    assert await count(db) == 0
    async with cursor(db) as cur:
        page = await list_gpus_json(cur, limit=10)
        assert json.loads(f"[{page.items}]")[0]["id"] == GPUS[0]

"""The API's read path on a real PostgreSQL: ordering, inclusive bounds, keysets, buckets, plans."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from telemetry_model import METRICS_BY_ID, to_micros
from telemetry_store import (
    BucketKey,
    GpuKey,
    PointKey,
    Window,
    create_pool,
    cursor,
    find_gpu,
    latest_values,
    list_gpus,
    migrate,
    read_buckets_json,
    read_window,
    window_query,
)
from telemetry_store.reads import (
    GpuJsonPage,
    JsonPage,
    _statement,
    list_gpus_json,
    read_window_json,
    window_json_query,
)

from conftest import is_raw_partition as _is_raw
from conftest import raw_partitions

T0 = datetime(2025, 7, 18, 20, 0, tzinfo=UTC)

# Three GPUs on two hosts; GPU 1 has 3 metrics x 6 times x 2 streams (ties on time), GPU 3 none.
_SEED = """
INSERT INTO streams (name) VALUES ('s1'), ('s2');
INSERT INTO gpus (uuid, hostname, gpu_index, device, model, driver_version, first_seen, last_seen)
VALUES ('GPU-b', 'host-1', 1, 'nvidia1', 'H100', '535', %(t0)s, %(t0)s),
       ('GPU-a', 'host-1', 0, 'nvidia0', 'H100', NULL, %(t0)s, %(t0)s),
       ('GPU-c', 'host-2', 0, 'nvidia0', 'H100', '535', %(t0)s, %(t0)s);
INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)
SELECT g.id, %(t0)s + (i / 3) * interval '10 seconds', 1 + i %% 3, i * 1.5, s.id, g.id * 100 + i
FROM generate_series(0, 17) AS i, streams s, gpus g
WHERE g.uuid IN ('GPU-a', 'GPU-b');
"""


@pytest.fixture
async def seeded(cur):
    await raw_partitions(cur, T0)
    await cur.execute(_SEED, {"t0": T0})
    await cur.execute("SELECT uuid, id FROM gpus")
    return dict(await cur.fetchall())


async def test_list_gpus_orders_by_host_index_and_skips_gpus_without_telemetry(cur, seeded):
    rows = await list_gpus(cur, limit=10)
    assert [r.uuid for r in rows] == ["GPU-a", "GPU-b"]
    assert rows[0].driver_version is None and rows[1].index == 1
    assert await list_gpus(cur, limit=10, hostname="host-2") == []
    assert [r.uuid for r in await list_gpus(cur, limit=1, after=rows[0].key)] == ["GPU-b"]
    assert await list_gpus(cur, limit=10, after=GpuKey("host-1", 1, "GPU-b")) == []


async def test_find_gpu(cur, seeded):
    row = await find_gpu(cur, "GPU-c")
    assert row is not None and row.hostname == "host-2" and row.id == seeded["GPU-c"]
    assert await find_gpu(cur, "GPU-zzz") is None


async def test_latest_values_break_time_ties_by_stream_and_seq(cur, seeded):
    latest = await latest_values(cur, seeded["GPU-a"])
    assert [v.metric_id for v in latest] == [1, 2, 3]
    # i = 15, 16, 17 share the last time; stream s2 wins over s1 at equal time and seq.
    assert [v.value for v in latest] == [15 * 1.5, 16 * 1.5, 17 * 1.5]
    assert {v.ts for v in latest} == {T0 + timedelta(seconds=50)}
    assert await latest_values(cur, seeded["GPU-c"]) == []


async def test_window_is_inclusive_and_ordered(cur, seeded):
    gpu = seeded["GPU-a"]
    at = T0 + timedelta(seconds=20)
    points = await read_window(cur, Window(gpu, at, at), limit=100)
    assert len(points) == 6 and {p.ts for p in points} == {at}
    assert [(p.stream_id, p.seq) for p in points] == sorted((p.stream_id, p.seq) for p in points)
    everything = await read_window(cur, Window(gpu), limit=100)
    assert len(everything) == 36
    keys = [(p.ts, p.stream_id, p.seq) for p in everything]
    assert keys == sorted(keys)


async def test_window_pages_with_the_keyset_have_no_gap_and_no_duplicate(cur, seeded):
    window = Window(seeded["GPU-b"], T0, T0 + timedelta(seconds=40), metric_ids=(1, 3))
    whole = await read_window(cur, window, limit=1000)
    assert {p.metric_id for p in whole} == {1, 3}
    for size in (1, 4, 5):
        paged, after = [], None
        while True:
            page = await read_window(cur, window, limit=size, after=after)
            paged += page
            if len(page) < size:
                break
            after = page[-1].key
        assert paged == whole


async def test_buckets_aggregate_and_page(cur, seeded):
    window = Window(seeded["GPU-a"], T0, None, metric_ids=(1,))
    step = timedelta(seconds=30)
    page = await read_buckets_json(
        cur, window, step=step, origin=T0, aggregate="max", limit=10, max_rows=1000
    )
    # metric 1 is i = 0, 3, ..., 15 at t = 0..50 s, from both streams.
    assert orjson.loads(f"[{page.items}]") == [
        {
            "time": "2025-07-18T20:00:00Z",
            "metric": "DCGM_FI_DEV_GPU_UTIL",
            "unit": "%",
            "value": 6 * 1.5,
            "count": 6,
        },
        {
            "time": "2025-07-18T20:00:30Z",
            "metric": "DCGM_FI_DEV_GPU_UTIL",
            "unit": "%",
            "value": 15 * 1.5,
            "count": 6,
        },
    ]
    assert (page.count, page.last, page.scanned) == (2, None, 12)
    first = await read_buckets_json(
        cur, window, step=step, origin=T0, aggregate="avg", limit=1, max_rows=1000
    )
    assert first.count == 1 and first.last == BucketKey(to_micros(T0), 1)
    rest = await read_buckets_json(
        cur,
        window,
        step=step,
        origin=T0,
        aggregate="avg",
        limit=10,
        max_rows=1000,
        after=first.last,
    )
    assert [b["time"] for b in orjson.loads(f"[{rest.items}]")] == ["2025-07-18T20:00:30Z"]
    assert rest.last is None
    with pytest.raises(ValueError):
        await read_buckets_json(
            cur, window, step=timedelta(0), origin=T0, aggregate="avg", limit=1, max_rows=1
        )
    with pytest.raises(ValueError):
        await read_buckets_json(
            cur,
            window,
            step=timedelta(1),
            origin=T0,
            aggregate="sum",  # type: ignore[arg-type]
            limit=1,
            max_rows=1,
        )


async def test_buckets_read_at_most_one_row_past_the_limit(cur, seeded):
    window = Window(seeded["GPU-a"], T0, None)
    step = timedelta(days=1)
    whole = await read_buckets_json(
        cur, window, step=step, origin=T0, aggregate="avg", limit=10, max_rows=36
    )
    assert whole.scanned == 36 and whole.count == 3  # 36 datapoints, 3 metrics, one day
    over = await read_buckets_json(
        cur, window, step=step, origin=T0, aggregate="avg", limit=10, max_rows=20
    )
    assert over.scanned == 21  # one past the limit tells the caller the window is too large


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def test_window_query_uses_the_time_index(fresh_database_url):
    # A committed, vacuumed and analyzed table, as autovacuum keeps a live one: 10 GPUs x
    # 10 metrics x one scrape every 10 s for 4 h = 144,000 rows, inserted time-major like
    # the collector writes them (every GPU's rows interleaved on the heap).
    pool = await create_pool(fresh_database_url, maxsize=1)
    try:
        await migrate(pool)
        async with cursor(pool) as cur:
            await cur.execute("INSERT INTO streams (name) VALUES ('explain') RETURNING id")
            (stream,) = await cur.fetchone()
            await cur.execute(
                "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen,"
                " last_seen) SELECT 'GPU-x' || g, 'host-' || g / 8, g %% 8, 'nvidia0', 'H100',"
                " %(t0)s, %(t0)s FROM generate_series(0, 9) AS g",
                {"t0": T0},
            )
            await raw_partitions(cur, T0)
            await cur.execute(
                "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
                " SELECT g.id, %(t0)s + m * interval '10 seconds', k, random(), %(stream)s,"
                "        row_number() OVER (ORDER BY m, g.id, k)"
                " FROM gpus g, generate_series(0, 1439) AS m, generate_series(1, 10) AS k"
                " ORDER BY m, g.id, k",
                {"t0": T0, "stream": stream},
            )
            await cur.execute("VACUUM ANALYZE telemetry")
            await cur.execute("SELECT id FROM gpus WHERE uuid = 'GPU-x7'")
            (gpu,) = await cur.fetchone()
            # One hour of one GPU (the benchmark's query): 3,600 rows, over a page of 1,000.
            window = Window(gpu, T0 + timedelta(hours=2), T0 + timedelta(hours=3))
            second_page = PointKey(to_micros(T0 + timedelta(hours=2, minutes=10)), stream, 0)
            plans = {}
            for name, after in (("first", None), ("next", second_page)):
                sql, params = window_query(window, limit=1001, after=after)
                await cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
                (raw,) = await cur.fetchone()
                plans[name] = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            # The API's query: the same walk, rendered without a sort.
            sql, params = window_json_query(
                "GPU-x7", start=window.start, end=window.end, limit=1000
            )
            await cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            (raw,) = await cur.fetchone()
            plans["json"] = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            # It runs prepared: after five runs PostgreSQL may switch to the generic plan.
            _, prepare, execute = _statement(sql)
            await cur.execute("SET plan_cache_mode = force_generic_plan")
            await cur.execute(prepare)
            await cur.execute("EXPLAIN (FORMAT JSON) " + execute, params)
            (raw,) = await cur.fetchone()
            plans["generic"] = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    finally:
        pool.close()
        await pool.wait_closed()
    # The first page walks the index in order and stops after the limit: no sort, and no
    # heap visit either (the index covers every column the window reads).
    first = _nodes(plans["first"])
    assert [n["Node Type"] for n in first] == ["Limit", "Index Only Scan"], plans["first"]
    assert first[1]["Index Name"].endswith("_gpu_time")  # of the window's day partition
    # A later page seeks straight to the cursor: the keyset bound is an index condition.
    # (PostgreSQL guesses a row comparison keeps 1/3 of the rows, so near the end of a
    # window it may prefer a bitmap scan plus a sort of at most ~3 pages: still bounded.)
    nxt = _nodes(plans["next"])
    scans = [
        n for n in nxt if n["Node Type"] in ("Index Only Scan", "Index Scan", "Bitmap Index Scan")
    ]
    assert len(scans) == 1 and scans[0]["Index Name"].endswith("_gpu_time"), plans["next"]
    assert "stream_id, seq) >" in scans[0]["Index Cond"], scans[0]
    assert "Seq Scan" not in {n["Node Type"] for n in nxt}
    for name in ("json", "generic"):
        rendered = _nodes(plans[name])
        scans = [n for n in rendered if _is_raw(n.get("Relation Name"))]
        # One partition: the others are pruned (at plan time, or at start for the generic plan).
        assert [(n["Node Type"], n["Index Name"][-9:]) for n in scans] == [
            ("Index Only Scan", "_gpu_time")
        ], plans[name]
        assert "Sort" not in {n["Node Type"] for n in rendered}, plans[name]


# --- the JSON renderings: byte for byte what orjson makes of the rows ------------------------


def _points_json(points: list[Any]) -> str:
    return orjson.dumps(
        [
            {
                "time": p.ts.astimezone(UTC),
                "metric": METRICS_BY_ID[p.metric_id].name,
                "unit": METRICS_BY_ID[p.metric_id].unit,
                "value": p.value,
                "container": p.container,
                "pod": p.pod,
                "namespace": p.namespace,
            }
            for p in points
        ],
        option=orjson.OPT_UTC_Z,
    ).decode()


def _gpus_json(rows: list[Any]) -> str:
    return orjson.dumps(
        [
            {
                "id": r.uuid,
                "hostname": r.hostname,
                "index": r.index,
                "device": r.device,
                "model": r.model,
                "driver_version": r.driver_version,
                "first_seen": r.first_seen.astimezone(UTC),
                "last_seen": r.last_seen.astimezone(UTC),
            }
            for r in rows
        ],
        option=orjson.OPT_UTC_Z,
    ).decode()


async def _json_pages(cur: Any, uuid: str, size: int, **window: Any) -> list[JsonPage]:
    pages, after = [], None
    while True:
        page = await read_window_json(cur, uuid, limit=size, after=after, **window)
        assert page is not None
        pages.append(page)
        if page.last is None:
            return pages
        after = page.last


async def test_window_json_is_what_orjson_makes_of_the_rows_page_by_page(cur, seeded):
    whole = await read_window(cur, Window(seeded["GPU-a"]), limit=100)
    assert len(whole) == 36
    for size in (1, 5, 35, 36, 37, 1000):  # 36 exactly: a last page, no cursor
        pages = await _json_pages(cur, "GPU-a", size)
        assert len(pages) == -(-36 // size)
        for n, page in enumerate(pages):
            rows = whole[n * size : (n + 1) * size]
            assert f"[{page.items}]" == _points_json(rows) and page.count == len(rows)
            assert page.last == (rows[-1].key if n < len(pages) - 1 else None)
    window = {"start": T0 + timedelta(seconds=10), "end": T0 + timedelta(seconds=30)}
    rows = await read_window(cur, Window(seeded["GPU-b"], metric_ids=(2,), **window), limit=99)
    page = await read_window_json(cur, "GPU-b", metric_ids=(2,), limit=99, **window)
    assert page is not None and page.count == len(rows) == 6
    assert f"[{page.items}]" == _points_json(rows)


async def test_window_json_of_unknown_gpu_is_none_and_empty_window_is_empty(cur, seeded):
    assert await read_window_json(cur, "GPU-zzz", limit=10) is None
    assert await read_window_json(cur, "GPU-c", limit=10) == JsonPage("", 0, None)
    later = T0 + timedelta(days=1)
    assert await read_window_json(cur, "GPU-a", start=later, limit=10) == JsonPage("", 0, None)


async def test_window_json_renders_times_values_and_labels_exactly(cur, seeded):
    # Fractional and whole times; integral, tiny, large and negative values; labels that
    # need escaping. Times and values not a JSON writer's favourites either way.
    gpu = seeded["GPU-c"]
    odd = [
        (T0 + timedelta(microseconds=250000), 50.0, None, None, None),
        (T0 + timedelta(microseconds=1), -0.0, 'c"1\\', "pod\n\x01", "ns-é-✓"),
        (T0 + timedelta(seconds=1, microseconds=999999), 48.67, "", None, "x"),
        (T0 + timedelta(seconds=2), 123456789012345.6, None, "p", None),
        (T0 + timedelta(seconds=3), 1e14, None, None, None),
        (T0 + timedelta(seconds=4), -7.0, None, None, None),
        (T0 + timedelta(seconds=5), 0.5, None, None, None),
    ]
    for seq, (ts, value, container, pod, namespace) in enumerate(odd):
        await cur.execute(
            "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq, container,"
            " pod, namespace) SELECT %s, %s, 7, %s, id, %s, %s, %s, %s FROM streams"
            " WHERE name = 's1'",
            (gpu, ts, value, 10_000 + seq, container, pod, namespace),
        )
    rows = await read_window(cur, Window(gpu), limit=100)
    page = await read_window_json(cur, "GPU-c", limit=100)
    assert page is not None and f"[{page.items}]" == _points_json(rows)
    assert orjson.loads(f"[{page.items}]")[0]["pod"] == "pod\n\x01"


async def test_window_json_prepares_each_query_shape_once_per_connection(cur, seeded):
    after = PointKey(to_micros(T0), 0, 0)
    for _ in range(2):
        for kwargs in ({}, {"metric_ids": (1, 2)}, {"after": after}, {"start": T0, "end": T0}):
            assert await read_window_json(cur, "GPU-a", limit=3, **kwargs) is not None
    await cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name ~ '^telemetry_'")
    assert (await cur.fetchone())[0] == 4


async def test_prepared_window_json_survives_discard_all_outside_a_transaction(pool):
    async with cursor(pool) as cur:
        assert await read_window_json(cur, "GPU-none", limit=1) is None
        await cur.execute("DISCARD ALL")
        assert await read_window_json(cur, "GPU-none", limit=1) is None


async def test_gpu_list_json_is_what_orjson_makes_of_the_rows(cur, seeded):
    await cur.execute(
        "UPDATE gpus SET last_seen = last_seen + interval '0.000123 s' WHERE uuid = 'GPU-b'"
    )
    rows = await list_gpus(cur, limit=10)
    assert f"[{(await list_gpus_json(cur, limit=10)).items}]" == _gpus_json(rows)
    for size in (1, 2):  # 2 exactly: a last page, no cursor
        page = await list_gpus_json(cur, limit=size)
        assert f"[{page.items}]" == _gpus_json(rows[:size])
        assert page.last == (rows[0].key if size == 1 else None)
    second = await list_gpus_json(cur, limit=1, after=rows[0].key)
    assert second == GpuJsonPage(_gpus_json(rows[1:])[1:-1], None)
    assert await list_gpus_json(cur, limit=5, hostname="host-2") == GpuJsonPage("", None)

"""Reads whose work is bounded, and reads that render whatever time PostgreSQL holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from telemetry_model import to_micros
from telemetry_store import (
    BEGIN_US,
    END_US,
    PointKey,
    Window,
    at,
    buckets_json_query,
    create_pool,
    cursor,
    find_gpu,
    find_gpu_json,
    find_gpu_span,
    latest_values,
    list_gpus,
    list_gpus_json,
    migrate,
    read_buckets_json,
    read_window_json,
    window_json_query,
)
from telemetry_store.reads import _micros, _rfc3339, _statement

from conftest import is_raw_partition as _is_raw
from conftest import raw_partitions

T0 = datetime(2025, 7, 18, 20, 0, tzinfo=UTC)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def _plan(cur: Any, sql: str, params: dict[str, Any], *, generic: bool) -> dict[str, Any]:
    """The executed plan of ``sql``: custom, or the generic plan of its prepared form."""
    if generic:
        name, prepare, execute = _statement(sql)
        await cur.execute("SET plan_cache_mode = force_generic_plan")
        await cur.execute(f"DEALLOCATE ALL; {prepare}")
        await cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + execute, params)
    else:
        await cur.execute("SET plan_cache_mode = force_custom_plan")
        await cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
    (raw,) = await cur.fetchone()
    plan: dict[str, Any] = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    return plan


async def test_a_metric_filter_reads_only_that_metric(fresh_database_url):
    # 10 GPUs x 9 metrics (never metric 10) x one scrape every 10 s for 4 h: 129,600 rows,
    # committed, vacuumed and analyzed, interleaved on the heap as the collector writes them.
    pool = await create_pool(fresh_database_url, maxsize=1)
    try:
        await migrate(pool)
        async with cursor(pool) as cur:
            await cur.execute("INSERT INTO streams (name) VALUES ('explain') RETURNING id")
            (stream,) = await cur.fetchone()
            await cur.execute(
                "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen,"
                " last_seen) SELECT 'GPU-x' || g, 'host-' || g / 8, g %% 8, 'nvidia0', 'H100',"
                " %(t0)s, %(t0)s + interval '4 hours' FROM generate_series(0, 9) AS g",
                {"t0": T0},
            )
            await raw_partitions(cur, T0)
            await cur.execute(
                "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
                " SELECT g.id, %(t0)s + m * interval '10 seconds', k, random(), %(stream)s,"
                "        row_number() OVER (ORDER BY m, g.id, k)"
                " FROM gpus g, generate_series(0, 1439) AS m, generate_series(1, 9) AS k"
                " ORDER BY m, g.id, k",
                {"t0": T0, "stream": stream},
            )
            await cur.execute("VACUUM ANALYZE telemetry")
            await cur.execute("SELECT id FROM gpus WHERE uuid = 'GPU-x7'")
            (gpu,) = await cur.fetchone()
            plans = {}
            for metrics in ((10,), (3,), (2, 10)):
                sql, params = window_json_query("GPU-x7", metric_ids=metrics, limit=1000)
                later, later_params = window_json_query(
                    "GPU-x7",
                    metric_ids=metrics,
                    limit=1000,
                    after=PointKey(to_micros(T0 + timedelta(hours=1)), stream, 0),
                )
                buckets, bucket_params = buckets_json_query(
                    Window(gpu, T0, T0 + timedelta(hours=4), metrics),
                    step=timedelta(minutes=5),
                    origin=T0,
                    aggregate="avg",
                    limit=1000,
                    max_rows=1_000_000,
                )
                for generic in (False, True):
                    plans[metrics, "window", generic] = await _plan(
                        cur, sql, params, generic=generic
                    )
                    plans[metrics, "later", generic] = await _plan(
                        cur, later, later_params, generic=generic
                    )
                plans[metrics, "buckets", False] = await _plan(
                    cur, buckets, bucket_params, generic=False
                )
    finally:
        pool.close()
        await pool.wait_closed()
    for (metrics, kind, generic), plan in plans.items():
        scans = [n for n in _nodes(plan) if _is_raw(n.get("Relation Name"))]
        walked = [
            (n["Node Type"], n.get("Index Name"), n.get("Rows Removed by Filter"))
            for n in _nodes(plan)
            if "Index Name" in n
        ]
        where = f"{metrics} {kind} {'generic' if generic else 'custom'}: {walked}"
        # Each metric is a range of the (gpu, metric, time) index, read index-only: nothing
        # of the GPU's other metrics is read and thrown away.
        assert scans and all(
            n["Node Type"] == "Index Only Scan" and n["Index Name"].endswith("_gpu_metric_time")
            for n in scans
        ), where
        assert all("metric_id" in n["Index Cond"] for n in scans), where
        assert sum(n.get("Rows Removed by Filter", 0) for n in _nodes(plan)) == 0, where
        read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
        if metrics == (10,):  # the GPU never reported it: one probe, nothing read
            assert read == 0, where
        elif kind != "buckets":  # a page: at most a page (plus one) per metric
            assert read <= 1001 * len(metrics), where


async def test_a_time_holds_one_key_and_one_rendering(cur):
    # Every kind of time PostgreSQL holds: the epoch, Python's range, beyond it both ways,
    # PostgreSQL's own extremes, and the infinities.
    cases = {
        "2025-07-18 20:42:34.252+00": "2025-07-18T20:42:34.252000Z",
        "2025-07-18 20:42:34+00": "2025-07-18T20:42:34Z",
        "1970-01-01 00:00:00+00": "1970-01-01T00:00:00Z",
        "1969-12-31 23:59:59.999999+00": "1969-12-31T23:59:59.999999Z",
        "0001-01-01 00:00:00+00": "0001-01-01T00:00:00Z",
        "9999-12-31 23:59:59.999999+00": "9999-12-31T23:59:59.999999Z",
        "10000-01-01 00:00:00+00": "+10000-01-01T00:00:00Z",
        "20983-03-01 12:00:00.5+00": "+20983-03-01T12:00:00.500000Z",
        "0044-03-15 10:00:00+00 BC": "-0043-03-15T10:00:00Z",
        "0001-12-31 23:59:59+00 BC": "0000-12-31T23:59:59Z",
        "4714-11-24 00:00:00+00 BC": "-4713-11-24T00:00:00Z",
        "294276-12-31 23:59:59.999999+00": "+294276-12-31T23:59:59.999999Z",
        "infinity": "infinity",
        "-infinity": "-infinity",
    }
    keys = []
    for text, rendered in cases.items():
        await cur.execute(
            f"SELECT {_rfc3339('t')}, {_micros('t')} FROM (SELECT %s::timestamptz AS t) v",
            (text,),
        )
        shown, micros = await cur.fetchone()
        assert shown == rendered, text
        key = int(micros)
        keys.append(key)
        # The key reads back as the same time, whatever its year.
        await cur.execute("SELECT %s = %s::timestamptz", (at(key), text))
        assert (await cur.fetchone())[0] is True, text
        if text[4:5] == "-" and "BC" not in text:  # years 0001-9999: Python's own key agrees
            parsed = datetime.fromisoformat(text.replace("+00", "+00:00"))
            assert key == to_micros(parsed), text
    assert keys[-2:] == [END_US, BEGIN_US - 1]
    assert max(keys[:-2]) == END_US - 1 and min(keys[:-2]) == BEGIN_US


@pytest.fixture
async def odd(cur):
    """A GPU whose stored times run past Python's years (rows stored before ingestion checked
    its domain, or by hand): the year 20983, 44 BC, +infinity, and an unknown metric id."""
    await cur.execute("INSERT INTO streams (name) VALUES ('odd') RETURNING id;")
    (stream,) = await cur.fetchone()
    await cur.execute(
        "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, driver_version,"
        " first_seen, last_seen) VALUES ('GPU-odd', 'host-odd', 0, 'nvidia0', 'H100', NULL,"
        " '0044-03-15 10:00:00+00 BC', '20983-03-01 12:00:00.5+00') RETURNING id"
    )
    (gpu,) = await cur.fetchone()
    rows = [
        ("0044-03-15 10:00:00+00 BC", 1, 1.0),
        ("2025-07-18 20:00:00+00", 1, 2.0),
        ("2025-07-18 20:00:00+00", 2, 3.0),
        ("20983-03-01 12:00:00.5+00", 1, 4.0),
        ("20983-03-01 12:00:00.5+00", 99, 5.0),  # a metric id nothing knows
        ("infinity", 2, 6.0),
    ]
    await raw_partitions(cur, datetime(2025, 7, 18, 20, tzinfo=UTC))
    for seq, (ts, metric, value) in enumerate(rows):
        await cur.execute(
            "INSERT INTO telemetry (gpu_id, ts, metric_id, value, stream_id, seq)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (gpu, ts, metric, value, stream, seq),
        )
    return gpu


async def test_the_gpu_of_odd_times_renders(cur, odd):
    body = orjson.loads(await find_gpu_json(cur, "GPU-odd"))
    assert body["first_seen"] == "-0043-03-15T10:00:00Z"
    assert body["last_seen"] == "+20983-03-01T12:00:00.500000Z"
    assert body["metrics"] == [
        {
            "metric": "DCGM_FI_DEV_GPU_UTIL",
            "unit": "%",
            "value": 4.0,
            "time": "+20983-03-01T12:00:00.500000Z",
        },
        {"metric": "DCGM_FI_DEV_MEM_COPY_UTIL", "unit": "%", "value": 6.0, "time": "infinity"},
    ]
    [item] = orjson.loads(f"[{(await list_gpus_json(cur, limit=10, hostname='host-odd')).items}]")
    assert item["last_seen"] == "+20983-03-01T12:00:00.500000Z"
    span = await find_gpu_span(cur, "GPU-odd")
    assert span is not None and span.id == odd
    assert span.last_us == 599_997_499_200_500_000
    assert await find_gpu_json(cur, "GPU-none") is None


async def test_a_window_of_odd_times_renders_and_pages(cur, odd):
    whole = await read_window_json(cur, "GPU-odd", limit=100)
    assert whole is not None and whole.last is None
    items = orjson.loads(f"[{whole.items}]")
    assert [(i["time"], i["metric"]) for i in items] == [
        ("-0043-03-15T10:00:00Z", "DCGM_FI_DEV_GPU_UTIL"),
        ("2025-07-18T20:00:00Z", "DCGM_FI_DEV_GPU_UTIL"),
        ("2025-07-18T20:00:00Z", "DCGM_FI_DEV_MEM_COPY_UTIL"),
        ("+20983-03-01T12:00:00.500000Z", "DCGM_FI_DEV_GPU_UTIL"),
        ("+20983-03-01T12:00:00.500000Z", "metric_99"),
        ("infinity", "DCGM_FI_DEV_MEM_COPY_UTIL"),
    ]
    assert items[4]["unit"] == ""
    # Page by page, one datapoint each, through every kind of key.
    paged, after = [], None
    while True:
        page = await read_window_json(cur, "GPU-odd", limit=1, after=after)
        assert page is not None
        paged += orjson.loads(f"[{page.items}]")
        if page.last is None:
            break
        after = page.last
    assert paged == items
    for metrics in ((1,), (2,), (1, 2)):
        filtered = await read_window_json(cur, "GPU-odd", limit=100, metric_ids=metrics)
        assert filtered is not None
        wanted = {1: "DCGM_FI_DEV_GPU_UTIL", 2: "DCGM_FI_DEV_MEM_COPY_UTIL"}
        names = {wanted[m] for m in metrics}
        assert orjson.loads(f"[{filtered.items}]") == [i for i in items if i["metric"] in names]


async def test_buckets_of_odd_times_render(cur, odd):
    # The API's buckets cover the years 0001-9999; within them a window of any GPU renders.
    window = Window(odd, datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
    page = await read_buckets_json(
        cur, window, step=timedelta(days=1), origin=T0, aggregate="max", limit=10, max_rows=100
    )
    assert [(b["time"], b["value"]) for b in orjson.loads(f"[{page.items}]")] == [
        ("2025-07-18T20:00:00Z", 2.0),
        ("2025-07-18T20:00:00Z", 3.0),
    ]


async def test_the_typed_reads_still_read_ordinary_rows(cur):
    # The typed reads (datetimes) serve callers in Python's range; the API uses the *_json ones.
    await cur.execute(
        "INSERT INTO gpus (uuid, hostname, gpu_index, device, model, first_seen, last_seen)"
        " VALUES ('GPU-t', 'host-t', 0, 'nvidia0', 'H100', %(t)s, %(t)s) RETURNING id",
        {"t": T0},
    )
    (gpu,) = await cur.fetchone()
    row = await find_gpu(cur, "GPU-t")
    assert row is not None and row.first_seen == T0 and row.id == gpu
    assert await latest_values(cur, gpu) == []
    assert await list_gpus(cur, limit=10, hostname="host-t") == []

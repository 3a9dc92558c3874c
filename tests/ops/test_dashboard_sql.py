"""Every query of the fleet dashboard runs against the real schema, with real datapoints.

The committed dashboard JSON is what Grafana loads; its SQL goes through Grafana's variable and
macro expansion (tests/ops/grafana.py) and runs on a migrated PostgreSQL holding datapoints of
three hosts from the DCGM CSV, written through the collector's own write path.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from telemetry_model import WireTemplate, read_samples
from telemetry_store import GpuSighting, ensure_streams, insert_datapoints, upsert_gpus

from conftest import CSV_PATH
from tests.ops import grafana

BOARD = grafana.load("telemetry-fleet")
SQL_TARGETS = [(name, t) for name, t in grafana.targets(BOARD) if "rawSql" in t]
NOW = datetime.now(UTC).replace(microsecond=0)
START, END = NOW - timedelta(hours=1), NOW
HOSTS = 3


async def _fill(cur) -> tuple[list[str], list[str]]:
    """Datapoints of every metric of the first hosts' GPUs, 4 rounds over the last 40 minutes."""
    samples = read_samples(CSV_PATH)
    hosts = list(dict.fromkeys(s.gpu.hostname for s in samples))[:HOSTS]
    chosen = [s for s in samples if s.gpu.hostname in hosts]
    rounds = [NOW - timedelta(minutes=m) for m in (40, 30, 20, 5)]
    first_us = int(rounds[0].timestamp() * 1e6)
    last_us = int(rounds[-1].timestamp() * 1e6)
    gpus = {
        s.gpu.uuid: GpuSighting(
            s.gpu.uuid,
            s.gpu.hostname,
            s.gpu.index,
            s.gpu.device,
            s.gpu.model,
            s.gpu.driver_version,
            first_us,
            last_us,
        )
        for s in chosen
    }
    await ensure_streams(cur, ["dashboards"])
    await upsert_gpus(cur, gpus.values())
    seq = itertools.count()
    encoded = [
        WireTemplate(s).encode(b'"dashboards"', next(seq), int(at.timestamp() * 1e6))
        for at in rounds
        for s in chosen
    ]
    assert await insert_datapoints(cur, encoded) == len(encoded)
    return hosts, sorted(gpus)


async def _run(cur, sql: str) -> tuple[list[str], list[tuple]]:
    await cur.execute(sql)
    columns = [c.name for c in cur.description]
    return columns, await cur.fetchall()


async def _choices(cur) -> dict[str, list[str]]:
    """Each variable's options, from its own query (each sees the ones before it), all chosen."""
    values: dict[str, list[str]] = {}
    for var in grafana.variables(BOARD):
        if var["type"] != "query":
            continue
        sql = grafana.expand_sql(var["query"], start=START, end=END, interval="1m", values=values)
        columns, rows = await _run(cur, sql)
        # A query variable's value is its __value column, else its first column.
        at = columns.index("__value") if "__value" in columns else 0
        values[var["name"]] = [str(r[at]) for r in rows]
    return values


def test_the_dashboard_has_sql_panels_and_host_and_gpu_variables():
    names = [v["name"] for v in grafana.variables(BOARD)]
    assert {"host", "gpu"} <= set(names)
    titles = " ".join(name for name, _ in SQL_TARGETS)
    for subject in ("utilisation", "Temperature", "Power", "memory"):
        assert subject in titles
    assert len(SQL_TARGETS) >= 8
    # Queries name the tables, so time partitions of `telemetry` stay transparent.
    assert all(
        "FROM telemetry t" in t["rawSql"] or "FROM gpus g" in t["rawSql"] for _, t in SQL_TARGETS
    )


async def test_variables_list_the_hosts_and_gpus_stored(cur):
    hosts, gpus = await _fill(cur)
    values = await _choices(cur)
    assert values["host"] == sorted(hosts)
    assert sorted(values["gpu"]) == gpus


@pytest.mark.parametrize(("panel", "target"), SQL_TARGETS, ids=[n for n, _ in SQL_TARGETS])
async def test_each_panel_query_runs_and_returns_rows(cur, panel, target):
    hosts, gpus = await _fill(cur)
    values = await _choices(cur)
    sql = grafana.expand_sql(target["rawSql"], start=START, end=END, interval="5m", values=values)
    assert "$" not in sql, f"{panel}: something was left unexpanded: {sql}"
    columns, rows = await _run(cur, sql)
    assert rows, f"{panel}: no rows for {sql}"
    if target["format"] == "time_series":
        # Grafana's time-series form: a time column, a series name, a value; sorted by time.
        assert columns[0] == "time" and "metric" in columns, columns
        times = [r[0] for r in rows]
        assert times == sorted(times)
        assert all(START.timestamp() - 300 <= float(t) <= END.timestamp() for t in times)
        series = {r[columns.index("metric")] for r in rows}
        assert len(series) > 1, f"{panel}: one series only: {series}"
    values_at = [i for i, c in enumerate(columns) if c not in ("time", "metric")]
    assert any(r[i] is not None for r in rows for i in values_at), f"{panel}: only NULLs"


async def test_choosing_one_host_narrows_every_panel(cur):
    hosts, _ = await _fill(cur)
    values = await _choices(cur)
    values["host"] = hosts[:1]
    _, rows = await _run(
        cur,
        grafana.expand_sql(
            next(t["rawSql"] for n, t in SQL_TARGETS if n.startswith("Latest values")),
            start=START,
            end=END,
            interval="5m",
            values=values,
        ),
    )
    assert rows and {r[0] for r in rows} == {hosts[0]}


async def test_nothing_outside_the_time_range(cur):
    await _fill(cur)
    values = await _choices(cur)
    for panel, target in SQL_TARGETS:
        sql = grafana.expand_sql(
            target["rawSql"],
            start=NOW - timedelta(days=2),
            end=NOW - timedelta(days=1),
            interval="5m",
            values=values,
        )
        _, rows = await _run(cur, sql)
        assert all(v in (None, 0) for r in rows for v in r), f"{panel}: rows outside the range"


def test_macros_expand_as_grafana_does():
    start = datetime(2025, 7, 18, 11, 15, 52, tzinfo=UTC)
    end = datetime(2025, 7, 18, 11, 25, 52, 500000, tzinfo=UTC)
    sql = (
        "SELECT $__timeGroupAlias(ts, $__interval), $__timeGroup(ts, '5m'), x"
        " FROM t WHERE $__timeFilter(ts) AND host IN ($host) AND g = ${gpu}"
    )
    assert grafana.expand_sql(
        sql, start=start, end=end, interval="30s", values={"host": ["a", "o'b"], "gpu": ["u1"]}
    ) == (
        'SELECT floor(extract(epoch from ts)/30)*30 AS "time",'
        ' floor(extract(epoch from ts)/300)*300 AS "time", x'
        " FROM t WHERE ts BETWEEN '2025-07-18T11:15:52Z' AND '2025-07-18T11:25:52.5Z'"
        " AND host IN ('a','o''b') AND g = 'u1'"
    )

"""A real Prometheus (Debian's /usr/bin/prometheus) scraping a running stack, with the alerts.

One stack and one Prometheus for the module: every service is up and ready, the series the
dashboards and alerts read exist with the labels they use, every dashboard and alert expression
evaluates, the rules load, and an alert goes pending on a real fault.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from psycopg2.extensions import parse_dsn
from telemetry_devstack import (
    Prometheus,
    Stack,
    StackConfig,
    create_database,
    drop_database,
    find_prometheus,
    scrape_config,
)
from telemetry_store import create_pool, migrate

from conftest import CSV_PATH
from tests.helpers import wait_for
from tests.ops import grafana

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "telemetry" / "files" / "alerts.yaml"
JOBS = ("telemetry-broker", "telemetry-streamer", "telemetry-collector", "telemetry-api")
SCRAPE_INTERVAL = 0.5
RATE_INTERVAL = "5s"

pytestmark = [
    pytest.mark.system,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        find_prometheus() is None,
        reason="prometheus is not installed (Debian: apt-get install prometheus; .ci/run does)",
    ),
]


@dataclass
class Observed:
    """The running stack and a client of the Prometheus scraping it."""

    stack: Stack
    prometheus: Prometheus
    http: aiohttp.ClientSession

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, else the test fails with the error."""
        async with self.http.get(f"{self.prometheus.url}/api/v1/{path}", params=params) as r:
            body = await r.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or scalar)."""
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every series of metric ``name`` now."""
        return [r["metric"] for r in await self.query(name)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def observed(pg_server: str) -> AsyncIterator[Observed]:
    dsn = create_database(pg_server)
    pool = await create_pool(dsn, maxsize=1)
    try:
        await migrate(pool)
    finally:
        pool.close()
        await pool.wait_closed()
    with tempfile.TemporaryDirectory(prefix="telemetry-prom-") as tmp:
        stack = Stack(
            StackConfig(
                database_url=dsn,
                data_dir=Path(tmp),
                csv_path=CSV_PATH,
                streamers=1,
                collectors=2,
                api_port=0,
                rate=500,
                log_format="json",
            ),
            sink=None,
        )
        prometheus = Prometheus(Path(tmp) / "prometheus", sink=None)
        try:
            await stack.start()
            await prometheus.start_with(
                scrape_config(stack, interval=SCRAPE_INTERVAL, rules=[RULES])
            )
            await prometheus.wait_ready(60)
            async with aiohttp.ClientSession() as http:
                yield Observed(stack, prometheus, http)
        finally:
            await prometheus.stop()
            await stack.stop()
            drop_database(pg_server, parse_dsn(dsn)["dbname"])


async def test_every_service_is_up_and_ready(observed: Observed):
    stack = observed.stack
    expected = {
        "telemetry-broker": 1,
        "telemetry-streamer": len(stack.streamers),
        "telemetry-collector": len(stack.collectors),
        "telemetry-api": 1,
    }

    async def all_up() -> dict[str, int] | None:
        up: dict[str, int] = {}
        for r in await observed.query("up == 1"):
            up[r["metric"]["job"]] = up.get(r["metric"]["job"], 0) + 1
        return up if up == expected else None

    await wait_for(all_up, timeout=30, what=f"targets up: {expected}")

    async def all_ready() -> bool:
        # One series per process, each 1: the readiness check passed at the last scrape.
        ready = await observed.query('{__name__=~"telemetry_.+_ready"} == 1')
        return sorted(r["metric"]["job"] for r in ready) == sorted(
            job for job, n in expected.items() for _ in range(n)
        )

    await wait_for(all_ready, timeout=30, what="telemetry_<service>_ready == 1 everywhere")
    # Process metrics (the dashboard's CPU and memory panels) from every service.
    cpu = {r["metric"]["job"] for r in await observed.query("process_cpu_seconds_total")}
    rss = {r["metric"]["job"] for r in await observed.query("process_resident_memory_bytes")}
    assert cpu == rss == set(JOBS)


async def _flowing(observed: Observed) -> None:
    """Wait until datapoints are published and stored, per topic, at a rate above 0."""

    async def rates() -> bool:
        found = [
            await observed.query(f"sum by (topic) (rate({name}[{RATE_INTERVAL}])) > 0")
            for name in (
                "telemetry_streamer_datapoints_published_total",
                "telemetry_broker_records_published_total",
                "telemetry_collector_datapoints_stored_total",
            )
        ]
        return all(r and r[0]["metric"] == {"topic": "telemetry"} for r in found)

    await wait_for(rates, timeout=60, what="published and stored rates above 0")


async def test_throughput_and_lag_series_carry_the_labels_the_dashboards_use(observed: Observed):
    await _flowing(observed)
    for name in (
        "telemetry_broker_records_fetched_total",
        "telemetry_broker_records_acked_total",
        "telemetry_broker_in_flight_records",
    ):
        labels = await observed.series(name)
        assert {(s["topic"], s["consumer_group"]) for s in labels} == {("telemetry", "collectors")}
    lag = await observed.series("telemetry_broker_consumer_lag_records")
    partitions = {s["partition"] for s in lag if s["consumer_group"] == "collectors"}
    assert len(partitions) == 16 and {s["topic"] for s in lag} == {"telemetry"}
    outcomes = {s["outcome"] for s in await observed.series("telemetry_collector_batches_total")}
    assert "stored" in outcomes

    # The collectors' database gauge (TelemetryDatabaseUnreachable): 1 per collector once migrated.
    async def reaching() -> bool:
        up = await observed.query("telemetry_collector_database_up == 1")
        return sorted((u["metric"]["topic"], u["metric"]["instance"]) for u in up) == sorted(
            ("telemetry", f"127.0.0.1:{c.port}") for c in observed.stack.collectors
        )

    await wait_for(reaching, timeout=30, what="telemetry_collector_database_up == 1")
    dead = await observed.series("telemetry_broker_dead_letter_records")
    assert {s["topic"] for s in dead} == {"telemetry"}
    routes = {s["route"] for s in await observed.series("telemetry_broker_http_requests_total")}
    # The alerts on publish and fetch errors select these two routes by name.
    assert {"/v1/topics/<topic>/records/", "/v1/topics/<topic>/groups/<group>/fetch"} <= routes


async def test_freshness_series(observed: Observed):
    async def observed_freshness() -> list[dict[str, Any]]:
        return await observed.query(
            "sum by (topic, le) (telemetry_collector_freshness_seconds_bucket) > 0"
        )

    buckets = await wait_for(observed_freshness, timeout=30, what="freshness observations")
    assert {b["metric"]["topic"] for b in buckets} == {"telemetry"}
    # With the age of each committed round's oldest datapoint (from the collectors that stored).
    oldest = await wait_for(
        lambda: observed.query("telemetry_collector_round_oldest_age_seconds_count > 0"),
        timeout=30,
        what="round oldest-age observations",
    )
    assert {(o["metric"]["job"], o["metric"]["topic"]) for o in oldest} == {
        ("telemetry-collector", "telemetry")
    }
    # The API: the age of the newest datapoint it can serve.
    (newest,) = await wait_for(
        lambda: observed.query("telemetry_api_newest_datapoint_age_seconds >= 0"),
        timeout=30,
        what="the API's newest datapoint age",
    )
    assert newest["metric"]["job"] == "telemetry-api"


async def test_broker_disk_series(observed: Observed):
    names = await observed.api("label/__name__/values")
    if "telemetry_broker_disk_used_bytes" not in names:
        pytest.skip(
            "telemetry_broker_disk_* is exported once the broker's disk budgets land; the disk"
            " panels and alerts are checked for syntax only"
        )
    for name in ("telemetry_broker_disk_used_bytes", "telemetry_broker_disk_free_bytes"):
        (sample,) = await observed.query(name)
        assert float(sample["value"][1]) > 0, name


def _dashboard_expressions() -> list[tuple[str, str]]:
    board = grafana.load("telemetry-pipeline")
    return [(name, t["expr"]) for name, t in grafana.targets(board) if "expr" in t]


# Queries ("panel / refId") that must show data on any running stack; the others need a fault
# (errors, 429s, redeliveries) or a metric that lands later (disk).
MUST_SHOW_DATA = {
    "Targets up / A",
    "Published / A",
    "Stored / A",
    "Consumer lag / A",
    "Freshness p99 / A",
    "Dead letters / A",
    "Broker: published, fetched, acked / A",
    "Broker: published, fetched, acked / B",
    "Broker: published, fetched, acked / C",
    "Streamers and collectors: datapoints / A",
    "Streamers and collectors: datapoints / B",
    "Collector batches by outcome / A",
    "Broker backlog / A",
    "Broker backlog / B",
    "Consumer lag per partition and group / A",
    "In-flight records per group / A",
    "Freshness / A",
    "Freshness / B",
    "Freshness / C",
    "Collectors reaching the database / A",
    "Collectors reaching the database / B",
    "Publish and store / A",
    "Publish and store / B",
    "Publish and store / C",
    "Broker requests / A",
    "API requests / A",
    "API database queries / A",
    "CPU / A",
    "Memory / A",
}


async def test_every_dashboard_expression_evaluates(observed: Observed):
    await _flowing(observed)  # every target scraped and the topic's series there, not before
    jobs = sorted({s["job"] for s in await observed.series("up")})
    values = {"namespace": ".*", "topic": ".*", "job": grafana.all_of(jobs)}
    # The dashboard's own variable queries, as Grafana's label_values() runs them.
    topics = await observed.api(
        "label/topic/values", **{"match[]": "telemetry_broker_records_published_total"}
    )
    assert "telemetry" in topics
    expressions = _dashboard_expressions()
    assert len(expressions) >= 30
    empty = []
    for name, expr in expressions:
        promql = grafana.expand_promql(expr, rate_interval=RATE_INTERVAL, values=values)
        result = await observed.query(promql)  # fails the test on a parse or evaluation error
        if not result and name in MUST_SHOW_DATA:
            # A rate needs two scrapes of its counter in the window: a slow scrape on a loaded
            # machine leaves it empty for a moment, a panel without data stays empty.
            try:
                await wait_for(lambda q=promql: observed.query(q), timeout=20, what=name)
            except AssertionError:
                empty.append(name)
    assert empty == [], f"panels without data on a running stack: {empty}"
    assert MUST_SHOW_DATA <= {name for name, _ in expressions}


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


async def test_every_alert_expression_evaluates_and_the_rules_load(observed: Observed):
    for rule in _alert_rules():
        await observed.query(rule["expr"])  # fails the test on a parse or evaluation error

    async def loaded() -> list[dict[str, Any]] | None:
        groups = (await observed.api("rules", type="alert"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = await wait_for(loaded, timeout=30, what="every alert rule evaluated once")
    assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in _alert_rules())
    assert all(not r.get("lastError") for r in rules)
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == [], f"alerts firing on a healthy stack: {firing}"


async def test_a_killed_collector_sets_off_the_target_alert(observed: Observed):
    # Last in the module: it breaks the stack the others observe.
    victim = observed.stack.collectors[0]
    victim.kill()
    await victim.wait()
    instance = f"127.0.0.1:{victim.port}"

    async def pending() -> list[dict[str, Any]]:
        alerts = (await observed.api("alerts"))["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "TelemetryTargetDown"
            and a["labels"].get("instance") == instance
        ]

    (alert,) = await wait_for(pending, timeout=30, what="TelemetryTargetDown for the collector")
    assert alert["state"] == "pending"  # for: 5m
    assert alert["labels"]["component"] == "collector"
    assert alert["labels"]["job"] == "telemetry-collector"
    assert re.fullmatch(
        r"telemetry-collector target 127\.0\.0\.1:\d+ does not answer scrapes\.",
        alert["annotations"]["summary"],
    )
    # The service as a whole is still up: its other collector answers.
    alerts = (await observed.api("alerts"))["alerts"]
    assert not [a for a in alerts if a["labels"]["alertname"] == "TelemetryCollectorsDown"]

"""Disk and memory budgets over HTTP: 429 DISK_FULL past the watermark, and their metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as Client
from telemetry_broker import create_app
from telemetry_mq.disk import disk_usage

from .test_routes import TOPIC, assert_problem, fetch, lease_path, opened, publish, raw, records
from .test_routes import settings as route_settings


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await raw(await client.get("/metrics"))).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_past_the_watermark_publish_is_429_disk_full(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    usage = disk_usage(tmp_path / "data")
    watermark = usage.used / usage.capacity / 2  # the test filesystem is already past it
    app = create_app(route_settings(tmp_path, disk_high_watermark=watermark))
    async with app.test_app() as test_app:
        await opened(app)
        client = test_app.test_client()
        resp = await client.post(f"{TOPIC}/records/", data=records(3))
        doc = await assert_problem(resp, 429, "DISK_FULL")
        assert resp.headers["Retry-After"] == "1"
        assert doc["used_bytes"] >= doc["watermark_bytes"] > 0
        stats = await (await client.get(TOPIC)).get_json()
        assert stats["records"] == 0
        samples = await scrape(client)
        refused = (("reason", "disk_full"), ("topic", "telemetry"))
        assert samples[("telemetry_broker_publishes_refused_total", refused)] == 1
        assert samples[("telemetry_broker_disk_full", ())] == 1
        assert samples[("telemetry_broker_disk_watermark_bytes", ())] == doc["watermark_bytes"]


async def test_budget_metrics(tmp_path: Path) -> None:
    app = create_app(route_settings(tmp_path, retention_age=0))
    async with app.test_app() as test_app:
        await opened(app)
        client = test_app.test_client()
        await publish(client, 40)
        batch: dict[str, Any] = await fetch(client, max_records=1000)
        await client.post(lease_path(batch, "ack"), json={})
        samples = await scrape(client)
        topic = (("topic", "telemetry"),)
        usage = disk_usage(tmp_path / "data")
        assert samples[("telemetry_broker_disk_used_bytes", ())] > 0
        assert 0 < samples[("telemetry_broker_disk_free_bytes", ())] <= usage.capacity
        assert samples[("telemetry_broker_disk_full", ())] == 0
        assert samples[("telemetry_broker_index_bytes", topic)] > 0
        # Every record of the fetched partition is consumed, and still on disk.
        assert samples[("telemetry_broker_retained_bytes", topic)] > 0
        stats = await (await client.get(TOPIC)).get_json()
        assert stats["retained_bytes"] == samples[("telemetry_broker_retained_bytes", topic)]
        assert stats["retained_bytes"] + stats["backlog_bytes"] == stats["bytes"]

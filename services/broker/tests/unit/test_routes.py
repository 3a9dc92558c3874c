"""The broker's HTTP API through ``app.test_client()`` (a real broker core on a temp dir)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as Client
from telemetry_broker import BrokerSettings, create_app
from telemetry_mq.protocol import NDJSON, decode_batch_ndjson

TOPIC = "/v1/topics/telemetry"
FETCH = f"{TOPIC}/groups/collectors/fetch"


def settings(tmp_path: Path, **overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "topics": "telemetry:4",
        "max_request_bytes": 64 * 1024,
        "max_backlog_bytes": 32 * 1024,
        "maintenance_interval": 3600.0,
        **overrides,
    }
    return BrokerSettings(**values)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(settings(tmp_path))
    async with app.test_app() as test_app:
        yield test_app.test_client()


def records(n: int, start: int = 0) -> bytes:
    return orjson.dumps(
        {"records": [{"key": f"gpu-{i % 5}", "value": {"i": i}} for i in range(start, start + n)]}
    )


async def publish(client: Client, n: int, start: int = 0) -> list[list[int]]:
    resp = await client.post(f"{TOPIC}/records/", data=records(n, start))
    assert resp.status_code == 200, await resp.get_data()
    positions: list[list[int]] = (await resp.get_json())["positions"]
    return positions


async def fetch(client: Client, **body: Any) -> dict[str, Any]:
    resp = await client.post(FETCH, json={"max_records": 100, **body})
    assert resp.status_code == 200, await resp.get_data()
    doc: dict[str, Any] = await resp.get_json()
    return doc


async def raw(resp: Any) -> bytes:
    data = await resp.get_data()
    assert isinstance(data, bytes)
    return data


def lease_path(batch: dict[str, Any], action: str) -> str:
    return f"{TOPIC}/groups/collectors/leases/{batch['lease']}/{action}"


async def assert_problem(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, await resp.get_data()
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = orjson.loads(await raw(resp))
    assert doc["status"] == status
    if code is not None:
        assert doc["code"] == code
    return doc


async def test_control_routes(client: Client) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_publish_fetch_ack_round_trip(client: Client) -> None:
    positions = await publish(client, 10)
    assert len(positions) == 10 and all(0 <= p < 4 for p, _ in positions)
    seen: list[int] = []
    while True:
        resp = await client.post(FETCH, json={"max_records": 100})
        if resp.status_code == 204:
            break
        batch = await resp.get_json()
        assert batch["topic"] == "telemetry" and batch["group"] == "collectors"
        seen.extend(r["value"]["i"] for r in batch["records"])
        assert all(r["delivery_count"] == 1 for r in batch["records"])
        ack = await client.post(lease_path(batch, "ack"), json={})
        assert await ack.get_json() == {"records": len(batch["records"])}
        again = await client.post(lease_path(batch, "ack"), data=b"")
        assert await again.get_json() == {"records": 0}
    assert sorted(seen) == list(range(10))
    stats = await (await client.get(f"{TOPIC}/groups/collectors/")).get_json()
    assert stats["lag"] == 0 and len(stats["partitions"]) == 4


async def test_fetch_as_ndjson_hands_over_the_published_bytes(client: Client) -> None:
    body = b'{"records":[{"key":"k","value":{"b":[1,2.5,"x"],"a":null}}]}'
    assert (await client.post(f"{TOPIC}/records/", data=body)).status_code == 200
    resp = await client.post(FETCH, json={}, headers={"Accept": NDJSON})
    assert resp.headers["Content-Type"] == NDJSON
    batch = decode_batch_ndjson(await raw(resp))
    assert batch.records[0].value == b'{"b":[1,2.5,"x"],"a":null}'


async def test_nack_extend_reject(client: Client) -> None:
    await client.post("/v1/topics/", json={"name": "one", "partitions": 1})
    await client.post("/v1/topics/one/records/", data=records(3))
    resp = await client.post("/v1/topics/one/groups/g/fetch", json={"ack_wait": 60})
    batch = await resp.get_json()
    base = f"/v1/topics/one/groups/g/leases/{batch['lease']}"
    extended = await client.post(f"{base}/extend", json={"ack_wait": 120})
    assert await extended.get_json() == {"ack_wait": 120.0}
    rejected = await client.post(f"{base}/reject", json={"offsets": [0], "error": "bad"})
    assert await rejected.get_json() == {"records": 1}
    nacked = await client.post(f"{base}/nack", json={"error": "db down"})
    assert await nacked.get_json() == {"records": 2}
    again = await (await client.post("/v1/topics/one/groups/g/fetch", json={})).get_json()
    assert [(r["offset"], r["delivery_count"]) for r in again["records"]] == [(1, 2), (2, 2)]
    dead = await (await client.post("/v1/topics/one.dlq/groups/ops/fetch", json={})).get_json()
    assert dead["records"][0]["value"]["error"] == "bad"


async def test_settling_an_unknown_lease_is_409(client: Client) -> None:
    await publish(client, 1)
    await fetch(client)
    resp = await client.post(f"{TOPIC}/groups/collectors/leases/nope/ack", json={})
    await assert_problem(resp, 409, "LEASE_EXPIRED")
    resp = await client.post(f"{TOPIC}/groups/other/leases/nope/ack", json={})
    await assert_problem(resp, 409, "LEASE_EXPIRED")


async def test_topics_admin(client: Client) -> None:
    created = await client.post("/v1/topics/", json={"name": "new", "partitions": 2})
    assert created.status_code == 201
    assert await created.get_json() == {"name": "new", "partitions": 2, "created": True}
    again = await client.post("/v1/topics/", json={"name": "new", "partitions": 5})
    assert again.status_code == 200
    assert (await again.get_json())["partitions"] == 2
    listed = await (await client.get("/v1/topics/")).get_json()
    assert [t["name"] for t in listed["topics"]] == ["new", "telemetry"]
    await publish(client, 4)
    stats = await (await client.get(TOPIC)).get_json()
    assert stats["records"] == 4 and stats["backlog_records"] == 4
    assert len(stats["partition_stats"]) == 4


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/topics/nope"),
        ("POST", "/v1/topics/nope/records/"),
        ("POST", "/v1/topics/nope/groups/g/fetch"),
        ("GET", f"{TOPIC}/groups/nobody/"),
    ],
)
async def test_not_found(client: Client, method: str, path: str) -> None:
    body = records(1) if path.endswith("records/") else b"{}"
    resp = await (client.get(path) if method == "GET" else client.post(path, data=body))
    await assert_problem(resp, 404)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{TOPIC}/records/", b""),
        (f"{TOPIC}/records/", b"{"),
        (f"{TOPIC}/records/", b"[]"),
        (f"{TOPIC}/records/", b'{"records": "x"}'),
        (f"{TOPIC}/records/", b'{"records": [{"key": 5, "value": 1}]}'),
        (f"{TOPIC}/records/", b'{"records": [{"key": "k"}]}'),
        (f"{TOPIC}/records/", b"\xff\xfe"),
        (FETCH, b"nope"),
        (FETCH, b"[1]"),
        (FETCH, b'{"max_records": 0}'),
        (FETCH, b'{"max_records": "many"}'),
        (FETCH, b'{"max_wait": -1}'),
        (FETCH, b'{"ack_wait": 0}'),
        (f"{TOPIC}/groups/collectors/leases/x/ack", b'{"offsets": "1"}'),
        (f"{TOPIC}/groups/collectors/leases/x/ack", b'{"offsets": [1.5]}'),
        (f"{TOPIC}/groups/collectors/leases/x/nack", b'{"delay": "soon"}'),
        (f"{TOPIC}/groups/collectors/leases/x/extend", b'{"ack_wait": -3}'),
        (f"{TOPIC}/groups/collectors/leases/x/reject", b"null"),
        ("/v1/topics/", b'{"name": "bad name"}'),
        ("/v1/topics/", b'{"name": "t", "partitions": 0}'),
        ("/v1/topics/", b"{}"),
        ("/v1/topics/bad%20name/groups/g/fetch", b"{}"),
        (f"{TOPIC}/groups/bad%20group/fetch", b"{}"),
    ],
)
async def test_malformed_requests_are_400_problems(client: Client, path: str, body: bytes) -> None:
    await publish(client, 1)  # so the group and topic paths exist
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    await assert_problem(resp, 400 if "bad%20name" not in path else 404)


async def test_oversized_request_is_413(client: Client) -> None:
    body = orjson.dumps({"records": [{"key": "k", "value": "x" * (70 * 1024)}]})
    resp = await client.post(f"{TOPIC}/records/", data=body)
    await assert_problem(resp, 413)
    stats = await (await client.get(TOPIC)).get_json()
    assert stats["records"] == 0


async def test_full_backlog_is_429_with_retry_after(client: Client) -> None:
    big = orjson.dumps({"records": [{"key": f"k{i}", "value": "x" * 1000} for i in range(40)]})
    assert (await client.post(f"{TOPIC}/records/", data=big)).status_code == 200
    resp = await client.post(f"{TOPIC}/records/", data=big)
    doc = await assert_problem(resp, 429, "BACKLOG_FULL")
    assert resp.headers["Retry-After"] == "1"
    assert doc["backlog_bytes"] >= doc["max_backlog_bytes"] == 32 * 1024
    stats = await (await client.get(TOPIC)).get_json()
    assert stats["records"] == 40  # the refused batch left no trace


async def test_token_is_required_on_v1_routes(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, token="s3cret"))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        resp = await client.get("/v1/topics/")
        await assert_problem(resp, 401, "UNAUTHORIZED")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await client.post(FETCH, json={}, headers={"Authorization": "Bearer nope"})
        await assert_problem(wrong, 401)
        ok = await client.get("/v1/topics/", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_metrics(client: Client) -> None:
    await publish(client, 6)
    batch = await fetch(client)
    await client.post(lease_path(batch, "ack"), json={})
    text = (await raw(await client.get("/metrics"))).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    group = (("consumer_group", "collectors"), ("topic", "telemetry"))
    n = len(batch["records"])
    assert samples[("telemetry_broker_records_published_total", (("topic", "telemetry"),))] == 6
    assert samples[("telemetry_broker_records_fetched_total", group)] == n
    assert samples[("telemetry_broker_records_acked_total", group)] == n
    assert samples[("telemetry_broker_backlog_records", (("topic", "telemetry"),))] == 6 - n
    assert samples[("telemetry_broker_in_flight_records", group)] == 0
    lag = sum(
        v
        for (name, labels), v in samples.items()
        if name == "telemetry_broker_consumer_lag_records" and ("topic", "telemetry") in labels
    )
    assert lag == 6 - n
    assert samples[("telemetry_broker_fsync_duration_seconds_count", ())] > 0
    assert any(name.startswith("telemetry_broker_http_requests") for name, _ in samples)


async def test_openapi_documents_the_api(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    paths = spec["paths"]
    assert {
        "/v1/topics/",
        "/v1/topics/{topic}",
        "/v1/topics/{topic}/records/",
        "/v1/topics/{topic}/groups/{group}/fetch",
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/ack",
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/nack",
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/reject",
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/extend",
    } <= set(paths)
    publish_op = paths["/v1/topics/{topic}/records/"]["post"]
    assert "requestBody" in publish_op and "200" in publish_op["responses"]
    assert "/healthz" not in paths and "/metrics" not in paths
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"

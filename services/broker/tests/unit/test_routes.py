"""The broker's HTTP API through ``app.test_client()`` (a real broker core on a temp dir).

The test client calls the app's ASGI entry, so the hot routes go through the fast path, as
they do when Hypercorn serves the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as Client
from telemetry_broker import BrokerSettings, create_app
from telemetry_broker.fastpath import FastPath
from telemetry_mq.protocol import NDJSON, decode_batch_ndjson, decode_batches_ndjson

from tests.helpers import parked_fetches, until

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


async def test_control_routes(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        healthz = await client.get("/healthz")
        assert (healthz.status_code, await healthz.get_json()) == (200, {"status": "ok"})
        readyz = await client.get("/readyz")
        assert (readyz.status_code, await readyz.get_json()) == (200, {"status": "ready"})
        metrics = (await raw(await client.get("/metrics"))).decode()
        assert "telemetry_broker_backlog_records" in metrics  # the broker's own metrics
        app.extensions["telemetry_broker"].broker.drain()  # readiness asks the broker core
        problem = await assert_problem(await client.get("/readyz"), 503, "NOT_READY")
        assert problem["detail"] == "draining"
        assert (await client.get("/healthz")).status_code == 200  # alive all the same


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


async def test_release_hands_records_back_without_a_delivery(client: Client) -> None:
    await client.post("/v1/topics/", json={"name": "one", "partitions": 1})
    await client.post("/v1/topics/one/records/", data=records(2))
    batch = await (await client.post("/v1/topics/one/groups/g/fetch", json={})).get_json()
    base = f"/v1/topics/one/groups/g/leases/{batch['lease']}"
    released = await client.post(f"{base}/release", json={"offsets": [1]})
    assert await released.get_json() == {"records": 1}
    released = await client.post(f"{base}/release", json={})
    assert await released.get_json() == {"records": 1}
    bad = await client.post(f"{base}/release", json={"delay": -1})
    await assert_problem(bad, 400, "INVALID_REQUEST")
    again = await (await client.post("/v1/topics/one/groups/g/fetch", json={})).get_json()
    assert [(r["offset"], r["delivery_count"]) for r in again["records"]] == [(0, 1), (1, 1)]


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
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/release",
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/reject",
        "/v1/topics/{topic}/groups/{group}/leases/{lease}/extend",
    } <= set(paths)
    publish_op = paths["/v1/topics/{topic}/records/"]["post"]
    assert "requestBody" in publish_op and "200" in publish_op["responses"]
    assert "/healthz" not in paths and "/metrics" not in paths
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_fetch_carries_acks_of_earlier_leases(client: Client) -> None:
    await publish(client, 10)
    first = await fetch(client, max_records=3)
    resp = await client.post(FETCH, json={"max_records": 100, "ack": [first["lease"]]})
    assert resp.status_code == 200 and resp.headers["Acked-Records"] == str(len(first["records"]))
    assert "Expired-Leases" not in resp.headers
    second = await resp.get_json()
    stats = await (await client.get(f"{TOPIC}/groups/collectors/")).get_json()
    assert stats["in_flight"] == len(second["records"])  # the first lease is acked, not in flight
    # An unknown (or expired) lease does not cost the fetch: it is reported instead.
    resp = await client.post(FETCH, json={"ack": [second["lease"], "gone-1"]})
    assert resp.headers["Acked-Records"] == str(len(second["records"]))
    assert resp.headers["Expired-Leases"] == "gone-1"
    acked = len(first["records"]) + len(second["records"])
    seen = [r["value"]["i"] for batch in (first, second) for r in batch["records"]]
    # Every fetch acks the lease before it, to the last one: a 204 that still acks.
    while resp.status_code == 200:
        batch = await resp.get_json()
        seen.extend(r["value"]["i"] for r in batch["records"])
        resp = await client.post(FETCH, json={"ack": [batch["lease"]]})
        acked += int(resp.headers["Acked-Records"])
    assert resp.status_code == 204
    assert acked == 10 and sorted(seen) == list(range(10))
    stats = await (await client.get(f"{TOPIC}/groups/collectors/")).get_json()
    assert (stats["lag"], stats["in_flight"]) == (0, 0)
    again = await client.post(FETCH, json={"ack": [first["lease"]]})  # a retried ack
    assert again.headers["Acked-Records"] == "0" and "Expired-Leases" not in again.headers


@pytest.mark.parametrize("ack", [["bad lease"], "x", [1], ["x"] * 1001])
async def test_fetch_with_malformed_acks_is_400(client: Client, ack: Any) -> None:
    await assert_problem(await client.post(FETCH, json={"ack": ack}), 400, "INVALID_REQUEST")


async def test_hot_routes_are_served_by_the_fast_path(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    fast = app.asgi_app
    assert isinstance(fast, FastPath)
    # Every documentation-only view is shadowed by the dispatcher, so none can ever answer.
    stubs = [r for r in app.url_map.iter_rules() if r.endpoint.startswith(("records.", "groups."))]
    hot = [r for r in stubs if r.endpoint != "groups.group_stats"]
    assert len(hot) == 7
    for rule in hot:
        path = rule.rule.replace("<topic>", "t").replace("<group>", "g").replace("<lease>", "l")
        assert fast.match("POST", path) is not None, rule.rule
    assert fast.match("GET", "/v1/topics/t/groups/g/fetch") is None
    assert fast.match("POST", "/v1/topics/t/records") is None  # Quart redirects that one
    assert fast.match("POST", "/v1/topics//records/") is None

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await publish(client, 3)
        await fetch(client)
        wrong_method = await client.get(FETCH)
        await assert_problem(wrong_method, 405)

        async def count(route: str, status: str | None = None) -> float | None:
            if status is None:
                name, labels = "telemetry_broker_http_request_duration_seconds_count", {}
            else:
                name, labels = "telemetry_broker_http_requests_total", {"status": status}
            labels = {"method": "POST", "route": route, **labels}
            text = (await raw(await client.get("/metrics"))).decode()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == name and s.labels == labels:
                        return s.value
            return None

        assert await count("/v1/topics/<topic>/records/", "200") == 1
        assert await count("/v1/topics/<topic>/groups/<group>/fetch", "200") == 1
        await client.post(f"{TOPIC}/records/", data=b"{")
        assert await count("/v1/topics/<topic>/records/", "400") == 1
        assert await count("/v1/topics/<topic>/records/") == 2


async def test_a_long_poll_is_cancelled_when_the_client_goes_away(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, max_fetch_wait=60.0))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.request(FETCH, method="POST") as connection:
            await connection.send(orjson.dumps({"max_wait": 60}))
            await connection.send_complete()
            await until(lambda: parked_fetches("telemetry"), timeout=10, what="the long-poll")
            await connection.disconnect()
            # Cancelled when the client left, long before its 60 s are up.
            await until(lambda: not parked_fetches("telemetry"), timeout=10, what="its end")
        await publish(client, 1)  # had the fetch still been waiting, it would lease this record
        stats = await (await client.get(f"{TOPIC}/groups/collectors/")).get_json()
        assert (stats["lag"], stats["in_flight"]) == (1, 0)
        assert (await fetch(client))["records"][0]["delivery_count"] == 1


async def test_multi_fetch_answers_several_batches(client: Client) -> None:
    await publish(client, 20)  # 5 keys over 4 partitions: at least two partitions hold records
    resp = await client.post(FETCH, json={"max_records": 100, "multi": True})
    assert resp.status_code == 200, await resp.get_data()
    batches = (await resp.get_json())["batches"]
    assert len(batches) >= 2
    assert len({b["partition"] for b in batches}) == len(batches)
    assert sorted(r["value"]["i"] for b in batches for r in b["records"]) == list(range(20))
    # The leases are acked together by the next fetch; nothing is left then: 204.
    resp = await client.post(FETCH, json={"multi": True, "ack": [b["lease"] for b in batches]})
    assert resp.status_code == 204 and resp.headers["Acked-Records"] == "20"
    stats = await (await client.get(f"{TOPIC}/groups/collectors/")).get_json()
    assert stats["lag"] == 0 and stats["in_flight"] == 0


async def test_multi_fetch_as_ndjson_and_bounded(client: Client) -> None:
    await publish(client, 20)
    resp = await client.post(
        FETCH, json={"max_records": 7, "multi": True}, headers={"Accept": NDJSON}
    )
    assert resp.status_code == 200 and resp.headers["Content-Type"] == NDJSON
    batches = decode_batches_ndjson(await raw(resp))
    assert sum(len(b.records) for b in batches) == 7
    assert all(orjson.loads(d.value)["i"] < 20 for b in batches for d in b.records)
    # Without "multi" the answer is one batch, as before.
    single = await fetch(client)
    assert "batches" not in single and single["records"]


async def test_openapi_documents_multi_fetch(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    op = spec["paths"]["/v1/topics/{topic}/groups/{group}/fetch"]["post"]
    schemas = spec["components"]["schemas"]
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/FetchAnswer"}
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in schemas["FetchAnswer"]["anyOf"]} == {
        "FetchResponse",
        "MultiFetchResponse",
    }
    request = op["requestBody"]["content"]["application/json"]["schema"]
    assert "multi" in schemas[request["$ref"].rsplit("/", 1)[1]]["properties"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/topics/", b'{"name": "\xff\xfe"}'),
        (FETCH, b'{"max_records": "\xff"}'),
        (f"{TOPIC}/groups/collectors/leases/l-1/extend", b"\xc3"),
    ],
)
async def test_a_body_that_is_not_utf8_is_a_400(client: Client, path: str, body: bytes) -> None:
    # The schema error used to render the raw input, which JSON cannot hold: a 500.
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    await assert_problem(resp, 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    "body",
    [
        {"max_records": "10"},  # a string is not an integer
        {"max_records": True},
        {"multi": 0},  # nor 0 a boolean
        {"max_wait": "1"},
        {"max_wait": 31.0},  # past BROKER_MAX_FETCH_WAIT: its own code
    ],
)
async def test_a_fetch_body_is_held_to_its_schema(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post(FETCH, json=body)
    code = "FETCH_WAIT_TOO_LONG" if body.get("max_wait") == 31.0 else "INVALID_REQUEST"
    doc = await assert_problem(resp, 400, code)
    if code == "FETCH_WAIT_TOO_LONG":
        assert doc["limit"] == 30.0


async def test_an_integral_float_is_an_integer(client: Client) -> None:
    await publish(client, 2)
    resp = await client.post(FETCH, json={"max_records": 1.0})  # JSON Schema: 1.0 is 1
    assert resp.status_code == 200 and len((await resp.get_json())["records"]) == 1

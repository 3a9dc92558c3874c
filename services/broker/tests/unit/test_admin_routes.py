"""Admin routes and limits over HTTP: delete a group, dead letters, the 4xx of each limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as Client
from telemetry_broker import BrokerSettings, create_app

TOPIC = "/v1/topics/telemetry"
GROUPS = f"{TOPIC}/groups"
DEAD = f"{TOPIC}/dead-letters"


def settings(tmp_path: Path, **overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "topics": "telemetry:1",
        "maintenance_interval": 3600.0,
        **overrides,
    }
    return BrokerSettings(**values)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(settings(tmp_path, max_groups_per_topic=3, max_in_flight_records=5))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def publish(client: Client, n: int, start: int = 0) -> None:
    body = {"records": [{"key": f"k{i}", "value": {"i": i}} for i in range(start, start + n)]}
    resp = await client.post(f"{TOPIC}/records/", json=body)
    assert resp.status_code == 200, await resp.get_data()


async def fetch(client: Client, group: str = "collectors", **body: Any) -> dict[str, Any]:
    resp = await client.post(f"{GROUPS}/{group}/fetch", json={"max_records": 100, **body})
    assert resp.status_code == 200, await resp.get_data()
    doc: dict[str, Any] = await resp.get_json()
    return doc


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, await resp.get_data()
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = orjson.loads(await resp.get_data())
    assert doc["code"] == code
    return doc


async def test_delete_a_group(client: Client) -> None:
    await publish(client, 3)
    batch = await fetch(client, "old")
    resp = await client.delete(f"{GROUPS}/old/")
    assert resp.status_code == 204
    await problem(await client.get(f"{GROUPS}/old/"), 404, "GROUP_NOT_FOUND")
    await problem(await client.delete(f"{GROUPS}/old/"), 404, "GROUP_NOT_FOUND")
    await problem(await client.delete("/v1/topics/nope/groups/old/"), 404, "TOPIC_NOT_FOUND")
    resp = await client.post(f"{GROUPS}/old/leases/{batch['lease']}/ack", json={})
    await problem(resp, 409, "LEASE_EXPIRED")
    stats = await (await client.get(TOPIC)).get_json()
    assert stats["groups"] == []


async def test_admin_routes_require_the_token(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, token="s3cret"))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await problem(await client.delete(f"{GROUPS}/g/"), 401, "UNAUTHORIZED")
        await problem(await client.get(f"{DEAD}/"), 401, "UNAUTHORIZED")
        resp = await client.post(f"{DEAD}/replay", json={"all": True})
        await problem(resp, 401, "UNAUTHORIZED")
        auth = {"Authorization": "Bearer s3cret"}
        assert (await client.get(f"{DEAD}/", headers=auth)).status_code == 200


async def test_each_limit_has_its_problem_code(client: Client, tmp_path: Path) -> None:
    await publish(client, 10)
    for group in ("a", "b", "c"):
        await fetch(client, group, max_records=1)
    resp = await client.post(f"{GROUPS}/d/fetch", json={})
    doc = await problem(resp, 409, "TOO_MANY_GROUPS")
    assert doc["limit"] == 3
    resp = await client.post(f"{GROUPS}/a/fetch", json={"max_records": 100})
    assert len((await resp.get_json())["records"]) == 4  # 5 in flight at most
    resp = await client.post(f"{GROUPS}/a/fetch", json={})
    await problem(resp, 429, "TOO_MANY_LEASES")
    assert resp.headers["Retry-After"] == "1"
    batch = await fetch(client, "b")
    resp = await client.post(f"{GROUPS}/b/leases/{batch['lease']}/nack", json={"delay": 3601})
    await problem(resp, 400, "NACK_DELAY_TOO_LONG")
    resp = await client.post("/v1/topics/", json={"name": "a" * 197})
    await problem(resp, 400, "INVALID_REQUEST")
    resp = await client.post("/v1/topics/", json={"name": "telemetry.dlq"})
    await problem(resp, 400, "INVALID_REQUEST")
    resp = await client.post(f"{GROUPS}/_broker-replay/fetch", json={})
    await problem(resp, 403, "RESERVED")  # the broker's own group


async def test_too_many_topics_is_409(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, max_topics=1))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        resp = await client.post("/v1/topics/", json={"name": "more"})
        await problem(resp, 409, "TOO_MANY_TOPICS")


async def test_dead_letters_listed_replayed_and_measured(client: Client) -> None:
    await publish(client, 4)
    batch = await fetch(client)
    resp = await client.post(
        f"{GROUPS}/collectors/leases/{batch['lease']}/reject",
        json={"offsets": [1, 2], "error": "bad record"},
    )
    assert (await resp.get_json()) == {"records": 2}
    doc = await (await client.get(f"{DEAD}/?limit=1")).get_json()
    assert doc["records"] == 2
    assert doc["by_reason"] == {"rejected": 2}
    assert doc["by_error"] == [{"reason": "rejected", "error": "bad record", "records": 2}]
    [letter] = doc["letters"]
    assert (letter["key"], letter["value"], letter["origin"]["offset"]) == ("k1", {"i": 1}, 1)
    assert doc["next"] == "0:0"
    page = await (await client.get(f"{DEAD}/?limit=10&after=0:0")).get_json()
    assert [x["value"] for x in page["letters"]] == [{"i": 2}]

    text = await (await client.get("/metrics")).get_data(as_text=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    depth = ("telemetry_broker_dead_letter_records", (("topic", "telemetry"),))
    assert samples[depth] == 2

    await problem(await client.post(f"{DEAD}/replay", json={}), 400, "INVALID_REQUEST")
    resp = await client.post(f"{DEAD}/replay", json={"origins": [[0, 2]]})
    assert (await resp.get_json()) == {"replayed": 1, "remaining": 0}
    resp = await client.post(f"{DEAD}/replay", json={"all": True})
    assert (await resp.get_json()) == {"replayed": 1, "remaining": 0}
    assert (await (await client.get(f"{DEAD}/")).get_json())["records"] == 0
    await problem(await client.get("/v1/topics/nope/dead-letters/"), 404, "TOPIC_NOT_FOUND")
    await problem(await client.get(f"{DEAD}/?after=x"), 400, "INVALID_REQUEST")


async def test_a_failed_reject_is_a_503_problem(client: Client, tmp_path: Path) -> None:
    await publish(client, 2)
    batch = await fetch(client)
    (tmp_path / "data" / "topics" / "telemetry.dlq").write_bytes(b"in the way")
    resp = await client.post(f"{GROUPS}/collectors/leases/{batch['lease']}/reject", json={})
    await problem(resp, 503, "DEAD_LETTER_FAILED")
    again = await fetch(client)  # the records were not lost
    assert [r["offset"] for r in again["records"]] == [0, 1]


async def test_openapi_documents_the_admin_routes(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    paths = spec["paths"]
    assert "delete" in paths["/v1/topics/{topic}/groups/{group}/"]
    assert "get" in paths["/v1/topics/{topic}/dead-letters/"]
    replay = paths["/v1/topics/{topic}/dead-letters/replay"]["post"]
    assert "requestBody" in replay and "200" in replay["responses"]

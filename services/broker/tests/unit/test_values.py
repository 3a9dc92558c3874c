"""Values over HTTP: whatever JSON a publish accepts, a fetch hands over intact (defect 8).

A value spanning lines loses its whitespace between tokens at publish; its numbers and strings
keep every byte. The NDJSON fetch encoding then cannot fail after the records are leased; if
encoding a fetch answer fails all the same, its leases are handed back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from telemetry_broker import BrokerSettings, create_app
from telemetry_mq.protocol import NDJSON, decode_batch_ndjson, decode_publish

TOPIC = "/v1/topics/telemetry"
FETCH = f"{TOPIC}/groups/collectors/fetch"

BIG_INT = b"123456789012345678901234567890"
SPANNING = [
    b'{"a":\n 1e400}',
    b'{"n": ' + BIG_INT + b',\r\n "s": "two\\nlines"}',
    b"[1,\n\t2.50]",
]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Quart]:
    settings = BrokerSettings(
        data_dir=tmp_path / "data", topics="telemetry:1", maintenance_interval=3600.0
    )
    app = create_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


def publish_body(values: list[bytes]) -> bytes:
    items = b",".join(b'{"key": "k", "value": ' + v + b"}" for v in values)
    return b'{"records": [' + items + b"]}"


def test_publish_makes_a_spanning_value_one_line_keeping_every_token() -> None:
    got = [v for _, v in decode_publish(publish_body([*SPANNING, b'{"x": 1}']))]
    assert got == [
        b'{"a":1e400}',
        b'{"n":' + BIG_INT + b',"s":"two\\nlines"}',
        b"[1,2.50]",
        b'{"x": 1}',  # one line already: byte for byte
    ]


async def test_values_spanning_lines_are_fetched_intact(client: Client) -> None:
    resp = await client.post(f"{TOPIC}/records/", data=publish_body(SPANNING))
    assert resp.status_code == 200, await resp.get_data()
    resp = await client.post(FETCH, json={"max_records": 10}, headers={"Accept": NDJSON})
    assert resp.status_code == 200, await resp.get_data()
    batch = decode_batch_ndjson(await resp.get_data(as_text=False))
    values = [d.value for d in batch.records]
    assert values == [
        b'{"a":1e400}',
        b'{"n":' + BIG_INT + b',"s":"two\\nlines"}',
        b"[1,2.50]",
    ]
    assert {d.delivery_count for d in batch.records} == {1}
    resp = await client.post(f"{FETCH.removesuffix('fetch')}leases/{batch.lease}/nack", json={})
    assert resp.status_code == 200
    resp = await client.post(FETCH, json={"max_records": 10})  # the plain JSON form too
    assert resp.status_code == 200
    raw = await resp.get_data()
    assert b"1e400" in raw and BIG_INT in raw


async def test_a_fetch_that_cannot_be_encoded_hands_its_leases_back(
    app: Quart, client: Client
) -> None:
    # Not JSON at all (a value stored by something other than the HTTP publish, as an older
    # broker could): the answer cannot be encoded.
    broker = app.extensions["telemetry_broker"].broker
    await broker.publish("telemetry", [("k", b'{"a":\n'), ("k", b"2")])
    resp = await client.post(FETCH, json={"max_records": 10}, headers={"Accept": NDJSON})
    assert resp.status_code == 500
    stats = broker.group_stats("telemetry", "collectors")
    assert stats.in_flight == 0  # released, not left leased to nobody
    again = await broker.fetch("telemetry", "collectors", max_records=10)
    assert [d.delivery_count for d in again.records] == [1, 1]  # no delivery was spent
    assert orjson.loads(again.records[1].value) == 2

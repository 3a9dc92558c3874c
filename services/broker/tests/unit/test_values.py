"""Values over HTTP: whatever JSON a publish accepts, a fetch hands over byte for byte.

Values are stored as published and never parsed again: numbers keep every digit (``1e400``, a
30-digit integer), and a value spanning lines travels in the NDJSON form with its length in
the header, so encoding a fetch answer cannot fail once its records are leased.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client
from telemetry_broker import BrokerSettings, create_app
from telemetry_mq import Batch, Delivery, ProtocolError
from telemetry_mq.protocol import (
    NDJSON,
    decode_batch_ndjson,
    decode_batches_ndjson,
    decode_publish,
    encode_batch_ndjson,
    encode_batches_ndjson,
)

from .test_routes import opened

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
        await opened(app)
        yield app


@pytest.fixture
def client(app: Quart) -> Client:
    return app.test_client()


def publish_body(values: list[bytes]) -> bytes:
    items = b",".join(b'{"key": "k", "value": ' + v + b"}" for v in values)
    return b'{"records": [' + items + b"]}"


def test_publish_keeps_every_value_byte_for_byte() -> None:
    values = [*SPANNING, b'{"x": 1}']
    assert [v for _, v in decode_publish(publish_body(values))] == values


@pytest.mark.parametrize("accept", [NDJSON, "application/json"])
async def test_values_spanning_lines_are_fetched_byte_for_byte(client: Client, accept: str) -> None:
    plain = b'{"x":1}'
    values = [plain, *SPANNING, plain, b'"a\\nb"', b"[\n]"]
    resp = await client.post(f"{TOPIC}/records/", data=publish_body(values))
    assert resp.status_code == 200, await resp.get_data()
    resp = await client.post(FETCH, json={"max_records": 10}, headers={"Accept": accept})
    assert resp.status_code == 200, await resp.get_data()
    raw = await resp.get_data(as_text=False)
    if accept == NDJSON:
        got = [d.value for d in decode_batch_ndjson(raw).records]
    else:  # the JSON form embeds each value as its stored bytes, in order
        got, at = [], 0
        for v in values:
            at = raw.index(b'"value":' + v, at)
            got.append(v)
    assert got == values


def test_the_ndjson_form_of_a_mixed_batch_round_trips() -> None:
    records = [
        Delivery(i, f"k{i}", v, 1_700_000_000_000_000 + i, 1)
        for i, v in enumerate([b'{"a":1}', b'{"a":\n\n2}', b"\n3", b"4\n", b'"x"'])
    ]
    batches = [
        Batch("t", "g", 0, "l0", 30.0, records),
        Batch("t", "g", 1, "l1", 30.0, records[:1]),
        Batch("t", "g", 2, "l2", 30.0, records[1:3]),
    ]
    assert decode_batches_ndjson(encode_batches_ndjson(batches)) == batches
    assert decode_batch_ndjson(encode_batch_ndjson(batches[0])) == batches[0]
    cut = encode_batch_ndjson(batches[2])
    with pytest.raises(ProtocolError):  # a value shorter than its header says
        decode_batch_ndjson(cut[:-3])

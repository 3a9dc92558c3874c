"""Framing, partitioning, names and the HTTP batch codecs."""

from __future__ import annotations

import orjson
import pytest
import telemetry_mq
from telemetry_mq import Batch, Delivery, ProtocolError, partition_for
from telemetry_mq.protocol import (
    FRAME_OVERHEAD,
    check_name,
    decode_batch_ndjson,
    decode_frames,
    decode_publish,
    encode_batch_json,
    encode_batch_ndjson,
    encode_frame,
    encode_publish,
)


def test_public_surface_is_exported() -> None:
    for name in telemetry_mq.__all__:
        assert hasattr(telemetry_mq, name), name
    assert {"Broker", "BrokerClient", "Batch", "Delivery", "MQError"} <= set(telemetry_mq.__all__)


def test_frame_round_trip() -> None:
    frames = encode_frame(7, 123, b"gpu-1", b'{"v":1}') + encode_frame(8, 124, b"", b"{}")
    assert len(frames) == 2 * FRAME_OVERHEAD + 5 + 7 + 2
    assert list(decode_frames(frames, 2)) == [(7, 123, "gpu-1", b'{"v":1}'), (8, 124, "", b"{}")]


def test_frame_checksum_detects_a_flipped_bit() -> None:
    frame = bytearray(encode_frame(7, 123, b"k", b'{"v":1}'))
    frame[-2] ^= 0x01
    with pytest.raises(ValueError, match="bad frame"):
        list(decode_frames(bytes(frame), 1))


def test_partition_is_stable_and_in_range() -> None:
    # crc32 is fixed forever: a key keeps its partition across restarts and versions.
    assert partition_for(b"GPU-5fd4f087-86f3-7a43-b711-4771313afc50", 16) == 9
    assert {partition_for(f"k{i}".encode(), 16) for i in range(1000)} == set(range(16))


@pytest.mark.parametrize("name", ["telemetry", "telemetry.dlq", "a", "A_b-c.9", "x" * 200])
def test_valid_names(name: str) -> None:
    assert check_name("topic", name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "a b", "x" * 201, "é", "a\n"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ProtocolError):
        check_name("topic", name)


def test_publish_body_round_trip_keeps_each_value_byte_for_byte() -> None:
    body = encode_publish([("k1", b'{"a": 1}'), ("k2", b"[1,2]"), ("k3", b'"s"')])
    assert decode_publish(body) == [("k1", b'{"a": 1}'), ("k2", b"[1,2]"), ("k3", b'"s"')]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"records": []}',
        b'{"records": {}}',
        b'{"records": [1]}',
        b'{"records": [{"key": 1, "value": 2}]}',
        b'{"records": [{"key": "k"}]}',
        b'{"records": [{"value": 1}]}',
        b'{"records": [{"key": "' + b"x" * 1025 + b'", "value": 1}]}',
        b'{"records": [{"key": "\\ud800", "value": 1}]}',
        b'{"records": [{"key": "k", "value": {"a": }}]}',
        b'{"records": [{"key": "k", "value": 1}], "x": [}',
    ],
)
def test_malformed_publish_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_publish(body)


def _batch() -> Batch:
    return Batch(
        "t",
        "g",
        3,
        "lease-1",
        30.0,
        [Delivery(5, "k", b'{"x":1}', 10, 1), Delivery(6, "k2", b'"s\\n"', 11, 2)],
    )


def test_ndjson_batch_round_trip() -> None:
    assert decode_batch_ndjson(encode_batch_ndjson(_batch())) == _batch()


def test_ndjson_batch_keeps_one_value_per_line() -> None:
    batch = Batch("t", "g", 0, "l", 1.0, [Delivery(0, "k", b'{\n"x": 1\n}', 1, 1)])
    decoded = decode_batch_ndjson(encode_batch_ndjson(batch))
    assert orjson.loads(decoded.records[0].value) == {"x": 1}


def test_json_batch_embeds_values() -> None:
    doc = orjson.loads(encode_batch_json(_batch()))
    assert doc["records"][0] == {
        "offset": 5,
        "key": "k",
        "timestamp_us": 10,
        "delivery_count": 1,
        "value": {"x": 1},
    }


@pytest.mark.parametrize("body", [b"", b"{}\n", b'{"records": [[1, 2, 3, "k"]]}\n', b"\xff"])
def test_malformed_fetch_answers_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_batch_ndjson(body)

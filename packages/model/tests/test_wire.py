from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
import telemetry_model
from telemetry_model import (
    METRICS_BY_ID,
    Datapoint,
    DecodeError,
    Gpu,
    WireTemplate,
    decode,
    encode,
    metric,
    read_samples,
    to_micros,
)

from conftest import CSV_PATH

GPU = Gpu("GPU-1", "host-1", 3, "nvidia3", "NVIDIA H100 80GB HBM3", "535.129.03")


def test_round_trip_keeps_every_field():
    dp = Datapoint(
        "s",
        7,
        1_752_871_354_123_456,
        "DCGM_FI_DEV_POWER_USAGE",
        312.5,
        GPU,
        container="c",
        pod="p",
        namespace="n",
        labels={"job": "j"},
    )
    back = decode(encode(dp))
    assert back == dp
    assert back.timestamp == datetime(2025, 7, 18, 20, 42, 34, 123456, tzinfo=UTC)
    assert back.id == "s:7"
    assert to_micros(back.timestamp) == dp.ts_us


def test_template_matches_full_encoding_for_every_real_row():
    for i, sample in enumerate(read_samples(CSV_PATH)):
        wire = WireTemplate(sample).encode(orjson.dumps("dcgm"), i, 1_000 + i)
        dp = decode(wire)
        assert (dp.stream, dp.seq, dp.ts_us, dp.metric, dp.value, dp.gpu) == (
            "dcgm",
            i,
            1_000 + i,
            sample.metric,
            sample.value,
            sample.gpu,
        )
        assert encode(dp) == wire


def test_records_are_compact():
    sample = read_samples(CSV_PATH)[0]
    assert len(WireTemplate(sample).encode(b'"dcgm"', 10**9, 1_800_000_000_000_000)) < 340


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"metric": "X"}', "unknown metric"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": "1"}', "finite number"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": 1, "labels": {"a": 1}}', "labels"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": 1, "uuid": ""}', "uuid"),
        (b'{"metric": "DCGM_FI_DEV_GPU_UTIL", "value": true}', "finite number"),
    ],
)
def test_decode_rejects(body, message):
    with pytest.raises(DecodeError, match=message):
        decode(body)


def test_decode_rejects_negative_seq():
    good = orjson.loads(encode(Datapoint("s", 1, 1, "DCGM_FI_DEV_GPU_UTIL", 1.0, GPU)))
    good["seq"] = -1
    with pytest.raises(DecodeError, match="seq"):
        decode(orjson.dumps(good))


def test_catalog():
    assert len(METRICS_BY_ID) == 10
    assert metric("DCGM_FI_DEV_FB_USED").unit == "MiB"
    with pytest.raises(KeyError):
        metric("nope")
    with pytest.raises(ValueError):
        to_micros(datetime(2025, 1, 1))


def test_public_surface():
    assert sorted(telemetry_model.__all__) == sorted(
        n
        for n in dir(telemetry_model)
        if not n.startswith("_")
        and n not in {"catalog", "csvreader", "errors", "labels", "records", "wire"}
    )

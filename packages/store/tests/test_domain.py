"""The decoder's domain is the database's: whatever ``decode`` accepts is stored and read back."""

from __future__ import annotations

import random
from datetime import timedelta

import orjson
import pytest
from telemetry_model import (
    EPOCH,
    MAX_GPU_INDEX,
    MAX_LABEL_VALUE_BYTES,
    MAX_LABELS,
    MAX_SEQ,
    MAX_STREAM_BYTES,
    MAX_TEXT_BYTES,
    MAX_TS_US,
    Datapoint,
    DecodeError,
    decode,
)
from telemetry_store import (
    GpuSighting,
    Window,
    ensure_streams,
    find_gpu,
    insert_datapoints,
    latest_values,
    list_gpus_json,
    read_buckets_json,
    read_window,
    read_window_json,
    upsert_gpus,
)

_RANDOM = random.Random(9)


def longest(limit: int, tag: str = "") -> str:
    """A string of exactly ``limit`` bytes of UTF-8 in random 4-byte code points (which
    PostgreSQL cannot compress into a smaller index entry), after ``tag``."""
    rest = limit - len(tag.encode())
    return (
        tag
        + "".join(chr(_RANDOM.randrange(0x10000, 0x110000)) for _ in range(rest // 4))
        + ("x" * (rest % 4))
    )


def edge_record(seq: int, ts_us: int, tag: str) -> bytes:
    """A record at the edges of the domain: every string as long as allowed."""
    body = {
        "stream": longest(MAX_STREAM_BYTES, tag),
        "seq": seq,
        "ts": ts_us,
        "metric": "DCGM_FI_DEV_POWER_USAGE",
        "value": 1.7976931348623157e308,
        "uuid": longest(MAX_TEXT_BYTES, tag),
        "host": longest(MAX_TEXT_BYTES, tag),
        "gpu": MAX_GPU_INDEX,
        "device": longest(MAX_TEXT_BYTES),
        "model": longest(MAX_TEXT_BYTES),
        "driver": longest(MAX_TEXT_BYTES),
        "container": longest(MAX_TEXT_BYTES),
        "pod": longest(MAX_TEXT_BYTES),
        "namespace": longest(MAX_TEXT_BYTES),
        "labels": {
            longest(MAX_TEXT_BYTES, f"l{i}"): longest(MAX_LABEL_VALUE_BYTES)
            for i in range(MAX_LABELS)
        },
    }
    return orjson.dumps(body)


def sighting(dp: Datapoint) -> GpuSighting:
    g = dp.gpu
    return GpuSighting(
        g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, dp.ts_us, dp.ts_us
    )


async def test_records_at_the_edges_of_the_domain_are_stored_and_read_back(cur):
    encoded = [
        edge_record(MAX_SEQ, MAX_TS_US, "a"),
        edge_record(MAX_SEQ - 1, 0, "b"),
    ]
    points = [decode(e, max_future_skew=None) for e in encoded]
    # a late minute on record: the bucketed read's search for late minutes then runs over
    # the whole window, from the start of PostgreSQL's range
    await cur.execute("INSERT INTO telemetry_late (minute) VALUES (now())")
    await ensure_streams(cur, sorted({p.stream for p in points}))
    await upsert_gpus(cur, [sighting(p) for p in points])
    assert await insert_datapoints(cur, encoded) == 2

    for p in points:
        gpu = await find_gpu(cur, p.gpu.uuid)
        assert gpu is not None and gpu.index == MAX_GPU_INDEX
        assert gpu.last_seen == p.timestamp
        [latest] = await latest_values(cur, gpu.id)
        assert (latest.ts, latest.value) == (p.timestamp, p.value)
        [point] = await read_window(cur, Window(gpu.id), limit=10)
        assert (point.seq, point.ts, point.pod) == (p.seq, p.timestamp, p.pod)
        page = await read_window_json(cur, p.gpu.uuid, limit=10)
        assert page is not None and page.count == 1
        [item] = orjson.loads(f"[{page.items}]")
        assert item["pod"] == p.pod and item["time"].startswith(p.timestamp.strftime("%Y-"))
        buckets = await read_buckets_json(
            cur,
            Window(gpu.id),
            step=timedelta(days=1),
            origin=EPOCH,
            aggregate="max",
            limit=10,
            max_rows=10,
        )
        [bucket] = orjson.loads(f"[{buckets.items}]")
        assert buckets.count == 1 and bucket["count"] == 1
    listing = await list_gpus_json(cur, limit=10)
    assert len(orjson.loads(f"[{listing.items}]")) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"seq": MAX_SEQ + 1},
        {"ts": MAX_TS_US + 1},
        {"gpu": MAX_GPU_INDEX + 1},
        {"pod": longest(MAX_TEXT_BYTES) + "x"},
        {"stream": "s" * (MAX_STREAM_BYTES + 1)},
    ],
    ids=["seq", "ts", "gpu", "pod", "stream"],
)
def test_one_step_past_an_edge_is_refused(change):
    body = orjson.loads(edge_record(0, 0, "a"))
    body.update(change)
    with pytest.raises(DecodeError):
        decode(orjson.dumps(body), max_future_skew=None)

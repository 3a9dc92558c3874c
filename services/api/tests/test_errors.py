"""Errors: problem+json with stable codes; no input gives a 500."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from .conftest import Dataset, Stored

GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
T = f"/api/v1/gpus/{GPU}/telemetry"


def cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


CASES = [
    # (url, status, code)
    (f"{T}?start_time=yesterday", 400, "INVALID_TIME"),
    (f"{T}?start_time=2025-07-18", 400, "INVALID_TIME"),
    (f"{T}?start_time=2025-13-01T00:00:00Z", 400, "INVALID_TIME"),
    (f"{T}?start_time=2025-02-30T00:00:00Z", 400, "INVALID_TIME"),
    (f"{T}?end_time=2025-07-18T25:00:00Z", 400, "INVALID_TIME"),
    (f"{T}?end_time=2025-07-18T23:59:60Z", 400, "INVALID_TIME"),
    (f"{T}?end_time=2025-07-18T20:00:00%2B24:00", 400, "INVALID_TIME"),
    (f"{T}?end_time=2025-07-18T20:00:00%2B05:60", 400, "INVALID_TIME"),
    (f"{T}?end_time=1721335354", 400, "INVALID_TIME"),
    (
        f"{T}?end_time=9999-12-31T23:59:59.9999999Z&start_time=9999-12-31T23:59:59.9999991Z",
        400,
        "INVALID_TIME",
    ),
    (f"{T}?start_time=0001-01-01T00:00:00%2B00:01", 400, "INVALID_TIME"),
    (f"{T}?end_time=9999-12-31T23:59:59-00:01", 400, "INVALID_TIME"),
    (f"{T}?start_time=2025-07-18T20:42:34", 400, "NAIVE_TIME"),
    (f"{T}?end_time=2025-07-18T20:42:34.123456", 400, "NAIVE_TIME"),
    (
        f"{T}?start_time=2025-07-18T21:00:00Z&end_time=2025-07-18T20:00:00Z",
        400,
        "INVALID_TIME_RANGE",
    ),
    (
        f"{T}?start_time=2025-07-18T20:00:00.0000001Z&end_time=2025-07-18T20:00:00Z",
        400,
        "INVALID_TIME_RANGE",
    ),
    (
        f"{T}?start_time=2025-07-18T20:00:00-01:00&end_time=2025-07-18T20:00:00Z",
        400,
        "INVALID_TIME_RANGE",
    ),
    (f"{T}?limit=0", 400, "INVALID_LIMIT"),
    (f"{T}?limit=-5", 400, "INVALID_LIMIT"),
    (f"{T}?limit=10001", 400, "INVALID_LIMIT"),
    (f"{T}?limit=99999999999999999999999999", 400, "INVALID_LIMIT"),
    (f"{T}?limit=ten", 400, "INVALID_LIMIT"),
    (f"{T}?limit=1.5", 400, "INVALID_LIMIT"),
    (f"{T}?limit=", 400, "INVALID_LIMIT"),
    ("/api/v1/gpus?limit=0", 400, "INVALID_LIMIT"),
    (f"{T}?cursor=garbage!", 400, "INVALID_CURSOR"),
    (f"{T}?cursor=", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={cursor('g', 'host', 1, 'uuid')}", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={cursor('p', 1, 2)}", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={cursor('p', 'x', 1, 2)}", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={cursor('p', 10**19, 1, 2)}", 400, "INVALID_CURSOR"),  # past PostgreSQL's range
    (f"{T}?cursor={cursor('p', -(2**62), 1, 2)}", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={cursor('p', 0, 40000, 2)}", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={cursor('p', 0, True, 2)}", 400, "INVALID_CURSOR"),
    (f"{T}?cursor={'A' * 600}", 400, "INVALID_CURSOR"),
    (f"{T}?step=5m&cursor={cursor('p', 0, 1, 2)}", 400, "INVALID_CURSOR"),
    (f"/api/v1/gpus?cursor={cursor('g', 'a\x00', 1, 'b')}", 400, "INVALID_CURSOR"),
    ("/api/v1/gpus?cursor=%00", 400, "INVALID_CURSOR"),
    (f"{T}?metric=DCGM_FI_DEV_NOPE", 400, "UNKNOWN_METRIC"),
    (f"{T}?metric=DCGM_FI_DEV_GPU_UTIL&metric=gpu_util", 400, "UNKNOWN_METRIC"),
    (f"{T}?metric=", 400, "UNKNOWN_METRIC"),
    (f"{T}?step=5", 400, "INVALID_STEP"),
    (f"{T}?step=0s", 400, "INVALID_STEP"),
    (f"{T}?step=1w", 400, "INVALID_STEP"),
    (f"{T}?step=367d", 400, "INVALID_STEP"),
    (f"{T}?agg=avg", 400, "INVALID_AGGREGATE"),
    (f"{T}?step=1m&agg=median", 400, "INVALID_AGGREGATE"),
    ("/api/v1/gpus/GPU-unknown", 404, "GPU_NOT_FOUND"),
    ("/api/v1/gpus/GPU-unknown/telemetry", 404, "GPU_NOT_FOUND"),
    ("/api/v1/gpus/%00", 404, "GPU_NOT_FOUND"),
    ("/api/v1/gpus/%00/telemetry?start_time=2025-07-18T20:00:00Z", 404, "GPU_NOT_FOUND"),
    ("/api/v1/nothing", 404, "NOT_FOUND"),
]


@pytest.mark.parametrize(("url", "status", "code"), CASES)
async def test_error_cases(client, url, status, code):
    response = await client.get(url)
    body = await response.get_json()
    assert (response.status_code, body["code"]) == (status, code), body
    assert response.content_type == "application/problem+json"
    assert body["status"] == status and body["title"]


async def test_400_comes_before_404(client):
    response = await client.get("/api/v1/gpus/GPU-unknown/telemetry?start_time=now")
    body = await response.get_json()
    assert (response.status_code, body["code"]) == (400, "INVALID_TIME"), body
    unknown = await client.get("/api/v1/gpus/GPU-unknown/telemetry?start_time=2025-07-18T00:00:00Z")
    assert (unknown.status_code, (await unknown.get_json())["code"]) == (404, "GPU_NOT_FOUND")


async def test_wrong_method_is_405_with_allow(client):
    response = await client.post("/api/v1/gpus")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert (await response.get_json())["code"] == "METHOD_NOT_ALLOWED"


def buckets(origin: datetime, width: timedelta) -> Callable[[list[Stored]], int]:
    """How many (bucket, metric) items the GPU's datapoints make with buckets from ``origin``."""
    return lambda points: len({((p.ts - origin) // width, p.metric) for p in points})


def nothing(points: list[Stored]) -> int:
    return 0


EVERY_POINT: Callable[[list[Stored]], int] = len
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
YEAR_1 = datetime(1, 1, 1, tzinfo=UTC)
SECOND, DAYS_366 = timedelta(seconds=1), timedelta(days=366)


@pytest.mark.parametrize(
    ("url", "items"),
    [
        ("/api/v1/gpus?hostname=%00", nothing),
        ("/api/v1/gpus?hostname=%ff%fe", nothing),
        ("/api/v1/gpus?hostname=" + "x" * 5000, nothing),
        (
            f"{T}?start_time=0001-01-01T23:59:00%2B23:59&end_time=9999-12-31T00:00:00-23:59",
            EVERY_POINT,  # the widest window there is
        ),
        (
            f"{T}?start_time=0001-01-02T00:00:00%2B23:59&step=1s",
            buckets(YEAR_1 + timedelta(minutes=1), SECOND),
        ),
        (f"{T}?end_time=9999-12-31T00:00:00.999999-23:59&step=366d", buckets(UNIX_EPOCH, DAYS_366)),
        (f"{T}?start_time=9999-12-31T23:59:59.999999Z&step=1s", nothing),
        (f"{T}?step=31622400s&start_time=0001-01-01T00:00:00Z", buckets(YEAR_1, DAYS_366)),
        (
            f"{T}?metric=DCGM_FI_DEV_GPU_UTIL&metric=DCGM_FI_DEV_GPU_UTIL",
            lambda points: sum(p.metric == "DCGM_FI_DEV_GPU_UTIL" for p in points),
        ),
        (f"{T}?cursor={cursor('p', -62135596800000000, 1, 2)}", EVERY_POINT),  # before all
        (f"{T}?cursor={cursor('p', 253402300799999999, 32767, 2**63 - 1)}", nothing),
        (f"{T}?cursor={cursor('p', 10**18, 1, 2)}", nothing),  # year 33658: PostgreSQL holds it
        (f"{T}?cursor={cursor('p', 9_224_318_016_000_000_000, 1, 2)}", nothing),  # past +infinity
        (
            f"{T}?step=1h&cursor={cursor('b', -210_866_803_200_000_001, 1)}",  # before -infinity
            buckets(UNIX_EPOCH, timedelta(hours=1)),
        ),
        (f"{T}?step=1h&cursor={cursor('b', 253402300799999999, 32767)}", nothing),
        (f"/api/v1/gpus?cursor={cursor('g', '\U0010ffff', -32768, '')}", nothing),
        (f"{T}?unknown=1&limit=1", lambda points: 1),  # the unknown parameter is ignored
    ],
)
async def test_odd_but_valid_inputs_are_not_errors(
    client, dataset: Dataset, url: str, items: Callable[[list[Stored]], int]
):
    response = await client.get(url)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    if url.startswith(T):
        assert body["gpu_id"] == GPU
    assert len(body["items"]) == items(dataset.of_gpu(GPU)), body
    assert (body["next"] is None) == ("limit=1" not in url)  # the rest fits the first page


async def test_database_down_is_503_not_500(dataset: Dataset):
    from telemetry_api import create_app

    from .conftest import settings_for

    app = create_app(settings_for("host=/nonexistent dbname=x connect_timeout=1", query_timeout=2))
    async with app.test_app():
        client = app.test_client()
        response = await client.get(f"/api/v1/gpus/{GPU}")
        assert response.status_code == 503
        assert (await response.get_json())["code"] == "DATABASE_UNAVAILABLE"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert (await client.get("/api/v1/metrics")).status_code == 200

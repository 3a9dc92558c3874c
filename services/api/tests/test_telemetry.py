"""Contract: a GPU's datapoints over time match what was stored, bounds inclusive, pages exact."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from .conftest import Dataset, Stored
from .test_gpus import all_pages


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def url(uuid: str, **params: str | int) -> str:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
    return f"/api/v1/gpus/{uuid}/telemetry" + (f"?{query}" if query else "")


def ordered(points: list[Stored]) -> list[tuple[str, str, float]]:
    """What the API returns, in its order (time, then stream, then seq)."""
    keyed = sorted(points, key=lambda p: (p.ts, p.stream, p.seq))
    return [(iso(p.ts), p.metric, p.value) for p in keyed]


def seen(items: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    return [(i["time"], i["metric"], i["value"]) for i in items]


async def test_values_per_gpu_and_metric_equal_the_csv(client, dataset: Dataset):
    expected = {(s.gpu.uuid, s.metric): s.value for s in dataset.samples}
    for uuid in sorted({s.gpu.uuid for s in dataset.samples}):
        body = await (await client.get(url(uuid))).get_json()
        assert body["gpu_id"] == uuid and body["next"] is None
        assert len(body["items"]) == 40  # 10 metrics x 2 loops x 2 streams
        for item in body["items"]:
            assert item["value"] == expected[(uuid, item["metric"])]
        assert seen(body["items"]) == ordered(dataset.of_gpu(uuid))


async def test_items_are_ordered_by_time_with_units(client, dataset: Dataset):
    uuid = dataset.samples[5].gpu.uuid
    items = (await (await client.get(url(uuid))).get_json())["items"]
    times = [i["time"] for i in items]
    assert times == sorted(times)
    units = {i["metric"]: i["unit"] for i in items}
    assert units["DCGM_FI_DEV_POWER_USAGE"] == "W" and units["DCGM_FI_DEV_FB_USED"] == "MiB"
    assert {i["container"] for i in items} == {None}


async def test_bounds_are_inclusive(client, dataset: Dataset):
    uuid = dataset.samples[0].gpu.uuid
    points = dataset.of_gpu(uuid)
    times = sorted({p.ts for p in points})
    assert len(times) >= 3 and times[1].microsecond == 123456
    exact = times[1]
    starting = (await (await client.get(url(uuid, start_time=iso(exact)))).get_json())["items"]
    assert seen(starting) == ordered([p for p in points if p.ts >= exact])
    assert starting[0]["time"] == iso(exact)
    ending = (await (await client.get(url(uuid, end_time=iso(exact)))).get_json())["items"]
    assert seen(ending) == ordered([p for p in points if p.ts <= exact])
    assert ending[-1]["time"] == iso(exact)
    both = (
        await (await client.get(url(uuid, start_time=iso(exact), end_time=iso(exact)))).get_json()
    )["items"]
    assert seen(both) == ordered([p for p in points if p.ts == exact]) and both


async def test_one_microsecond_past_a_datapoint_excludes_it(client, dataset: Dataset):
    uuid = dataset.samples[0].gpu.uuid
    exact = sorted({p.ts for p in dataset.of_gpu(uuid)})[1]
    after = iso(exact + timedelta(microseconds=1))
    before = iso(exact - timedelta(microseconds=1))
    body = await (await client.get(url(uuid, start_time=after, end_time=after))).get_json()
    assert body["items"] == []
    body = await (await client.get(url(uuid, start_time=before, end_time=after))).get_json()
    assert {i["time"] for i in body["items"]} == {iso(exact)}


async def test_offsets_and_nanoseconds_name_the_same_instant(client, dataset: Dataset):
    uuid = dataset.samples[0].gpu.uuid
    exact = sorted({p.ts for p in dataset.of_gpu(uuid)})[1]
    local = exact.astimezone(UTC).astimezone(datetime.now().astimezone().tzinfo)
    plus2 = exact.astimezone(UTC) + timedelta(hours=2)
    shifted = plus2.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000+02:00"  # nanosecond digits
    for start in (iso(exact), local.isoformat(), shifted):
        body = await (await client.get(url(uuid, start_time=start, end_time=start))).get_json()
        assert {i["time"] for i in body["items"]} == {iso(exact)}, start
    # 1 ns after the stored time: a start bound rounds up and excludes it.
    later = plus2.strftime("%Y-%m-%dT%H:%M:%S.%f") + "001+02:00"
    body = await (await client.get(url(uuid, start_time=later, end_time=later))).get_json()
    assert body["items"] == []


@pytest.mark.parametrize("limit", [1, 3, 7, 39])
async def test_paging_returns_exactly_the_unpaged_set(client, dataset: Dataset, limit):
    uuid = dataset.samples[17].gpu.uuid
    times = sorted({p.ts for p in dataset.of_gpu(uuid)})
    window = {"start_time": iso(times[0]), "end_time": iso(times[-1])}
    whole = (await (await client.get(url(uuid, **window))).get_json())["items"]
    paged = await all_pages(client, url(uuid, limit=limit, **window))
    assert paged == whole
    assert len(whole) == 40
    # Ties on time across the two streams fall on page boundaries and are still split exactly.
    assert len({i["time"] for i in whole}) < len(whole)


async def test_paging_with_a_metric_filter(client, dataset: Dataset):
    uuid = dataset.samples[3].gpu.uuid
    metrics = ["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"]
    query = "&".join(f"metric={m}" for m in metrics)
    whole = (await (await client.get(url(uuid) + "?" + query)).get_json())["items"]
    assert {i["metric"] for i in whole} == set(metrics) and len(whole) == 8
    paged = await all_pages(client, url(uuid) + "?" + query + "&limit=3")
    assert paged == whole
    single = (await (await client.get(url(uuid, metric=metrics[0]))).get_json())["items"]
    assert [i for i in whole if i["metric"] == metrics[0]] == single


async def test_known_gpu_with_an_empty_window_is_an_empty_list(client, dataset: Dataset):
    uuid = dataset.samples[0].gpu.uuid
    response = await client.get(
        url(uuid, start_time="2000-01-01T00:00:00Z", end_time="2000-01-02T00:00:00Z")
    )
    assert response.status_code == 200
    body = await response.get_json()
    assert body["items"] == [] and body["next"] is None


async def test_unknown_gpu_is_404_even_with_a_valid_window(client):
    response = await client.get(url("GPU-nope", start_time="2000-01-01T00:00:00Z"))
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "GPU_NOT_FOUND"


@pytest.mark.parametrize("agg", ["avg", "min", "max"])
async def test_buckets_aggregate_per_metric(client, dataset: Dataset, agg):
    uuid = dataset.samples[0].gpu.uuid
    points = dataset.of_gpu(uuid)
    start = min(p.ts for p in points)
    body = await (await client.get(url(uuid, start_time=iso(start), step="1d", agg=agg))).get_json()
    assert body["step"] == "1d" and body["agg"] == agg
    fns: dict[str, Callable[[list[float]], float]] = {
        "avg": lambda v: sum(v) / len(v),
        "min": min,
        "max": max,
    }
    fn = fns[agg]
    by_metric: dict[str, list[float]] = {}
    for p in points:
        by_metric.setdefault(p.metric, []).append(p.value)
    assert len(body["items"]) == len(by_metric)
    for item in body["items"]:
        assert item["time"] == iso(start)
        assert item["count"] == len(by_metric[item["metric"]])
        assert item["value"] == pytest.approx(fn(by_metric[item["metric"]]))


async def test_bucket_pages_cover_every_bucket_once(client, dataset: Dataset):
    uuid = dataset.samples[0].gpu.uuid
    whole = (await (await client.get(url(uuid, step="1s"))).get_json())["items"]
    assert sum(i["count"] for i in whole) == 40
    assert await all_pages(client, url(uuid, step="1s", limit=3)) == whole
    times = [i["time"] for i in whole]
    assert times == sorted(times)
    assert len({(i["time"], i["metric"]) for i in whole}) == len(whole)

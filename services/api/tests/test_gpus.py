"""Contract: the GPU list and each GPU's latest state match the CSV."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from telemetry_api.blueprints.gpus import GpuPage, GpuState
from telemetry_api.blueprints.telemetry import TelemetryPage

from .conftest import LOOPS, Dataset


async def all_pages(client, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while url:
        response = await client.get(url)
        assert response.status_code == 200, await response.get_data(as_text=True)
        body = await response.get_json()
        # The list routes build JSON directly: hold every page to its documented schema.
        model = TelemetryPage if "/telemetry" in url else GpuPage
        model.model_validate(body, strict=False)
        items += body["items"]
        url = body["next"]
    return items


async def test_every_gpu_is_listed_with_its_host_and_index(client, dataset: Dataset):
    response = await client.get("/api/v1/gpus")
    body = await response.get_json()
    expected = {(s.gpu.uuid, s.gpu.hostname, s.gpu.index) for s in dataset.samples}
    assert len(expected) == 247
    assert {(g["id"], g["hostname"], g["index"]) for g in body["items"]} == expected
    assert len(body["items"]) == 247
    assert body["next"] is None and body["next_cursor"] is None
    assert len({g["hostname"] for g in body["items"]}) == 31
    order = [(g["hostname"], g["index"], g["id"]) for g in body["items"]]
    assert order == sorted(order)


async def test_gpu_objects_carry_the_csv_metadata(client, dataset: Dataset):
    body = await (await client.get("/api/v1/gpus")).get_json()
    by_id = {g["id"]: g for g in body["items"]}
    for s in dataset.samples:
        g = by_id[s.gpu.uuid]
        assert (g["device"], g["model"], g["driver_version"]) == (
            s.gpu.device,
            s.gpu.model,
            s.gpu.driver_version,
        )
        assert g["first_seen"].endswith("Z") and g["first_seen"] <= g["last_seen"]


async def test_hostname_filter(client, dataset: Dataset):
    body = await (await client.get("/api/v1/gpus?hostname=mtv5-dgx1-hgpu-012")).get_json()
    on_host = {s.gpu.index for s in dataset.samples if s.gpu.hostname == "mtv5-dgx1-hgpu-012"}
    assert len(on_host) == 7
    assert [g["index"] for g in body["items"]] == sorted(on_host)
    assert {g["hostname"] for g in body["items"]} == {"mtv5-dgx1-hgpu-012"}
    body = await (await client.get("/api/v1/gpus?hostname=mtv5-dgx1-hgpu-002")).get_json()
    assert body["items"] == []


@pytest.mark.parametrize("limit", [1, 10, 246])
async def test_paging_the_list_gives_every_gpu_once(client, limit):
    everything = await all_pages(client, "/api/v1/gpus")
    paged = await all_pages(client, f"/api/v1/gpus?limit={limit}")
    assert paged == everything


async def test_latest_state_has_every_metric_with_the_csv_value(client, dataset: Dataset):
    expected: dict[str, dict[str, float]] = {}
    for s in dataset.samples:
        expected.setdefault(s.gpu.uuid, {})[s.metric] = s.value
    last = max(p.ts for p in dataset.points)
    for uuid in list(expected)[:40]:
        response = await client.get(f"/api/v1/gpus/{uuid}")
        assert response.status_code == 200
        body = await response.get_json()
        GpuState.model_validate(body)
        assert body["id"] == uuid
        got = {m["metric"]: m["value"] for m in body["metrics"]}
        assert got == expected[uuid]
        for m in body["metrics"]:
            assert m["unit"] in {"%", "W", "C", "MiB", "MHz"}
            assert m["time"] <= last.isoformat().replace("+00:00", "Z")


async def test_latest_state_time_is_the_latest_datapoint(client, dataset: Dataset):
    uuid = dataset.samples[0].gpu.uuid
    body = await (await client.get(f"/api/v1/gpus/{uuid}")).get_json()
    newest: dict[str, datetime] = {}
    for p in dataset.of_gpu(uuid):
        newest[p.metric] = max(newest.get(p.metric, p.ts), p.ts)
    assert len(dataset.of_gpu(uuid)) == 10 * LOOPS * 2
    for m in body["metrics"]:
        assert m["time"] == newest[m["metric"]].isoformat().replace("+00:00", "Z")


async def test_unknown_gpu_is_404(client):
    response = await client.get("/api/v1/gpus/GPU-does-not-exist")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert (await response.get_json())["code"] == "GPU_NOT_FOUND"

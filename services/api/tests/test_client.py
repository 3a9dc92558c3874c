"""A typed client generated from docs/openapi.json, used against a live API.

openapi-python-client generates it with no warning (every response, error responses included,
has a model), and every operation answers through it: the whole GPU list page by page, a GPU,
its raw and bucketed telemetry, the metric catalog; and one error of each kind the document
declares (400, 401, 404, 503), each parsed into the one Problem model.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from telemetry_api import create_app

from conftest import ROOT, generate_client

from .conftest import Dataset, LiveServer, settings_for

SPEC = ROOT / "docs" / "openapi.json"
GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
TOKEN = "client-token"


@pytest.fixture(scope="module")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return generate_client(SPEC, "telemetry_api_client", tmp_path_factory.mktemp("client"))


def module(client: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{client.__name__}.{name}")


@pytest.fixture
def live(live_server: LiveServer, api_client: ModuleType) -> Iterator[Any]:
    with api_client.Client(base_url=live_server.url, raise_on_unexpected_status=True) as client:
        yield client


def test_the_generated_modules_are_named_after_tags_and_operations(api_client: ModuleType):
    names = {p.stem for p in Path(api_client.__file__).parent.glob("api/*/*.py")}
    assert names >= {"list_gpus", "get_gpu", "get_gpu_telemetry", "list_metrics"}
    models = module(api_client, "models")
    for name in ("Gpu", "GpuPage", "GpuState", "TelemetryPage", "Datapoint", "Bucket"):
        assert hasattr(models, name), name
    assert hasattr(models, "Problem") and hasattr(models, "MetricList")


def test_every_operation_through_the_generated_client(
    api_client: ModuleType, live: Any, dataset: Dataset
):
    list_gpus = module(api_client, "api.gpus.list_gpus")
    get_gpu = module(api_client, "api.gpus.get_gpu")
    get_telemetry = module(api_client, "api.telemetry.get_gpu_telemetry")
    list_metrics = module(api_client, "api.metrics.list_metrics")
    models = module(api_client, "models")

    ids: list[str] = []
    cursor: Any = api_client.types.UNSET
    while True:
        page = list_gpus.sync(client=live, limit=50, cursor=cursor)
        assert isinstance(page, models.GpuPage)
        ids += [gpu.id for gpu in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(ids) == sorted({s.gpu.uuid for s in dataset.samples})
    assert len(ids) == 247

    state = get_gpu.sync(GPU, client=live)
    assert isinstance(state, models.GpuState)
    assert state.hostname == "mtv5-dgx1-hgpu-031" and isinstance(state.last_seen, datetime)
    assert {m.metric for m in state.metrics} >= {"DCGM_FI_DEV_GPU_TEMP"}

    temp = models.GetGpuTelemetryMetricItem.DCGM_FI_DEV_GPU_TEMP
    raw = get_telemetry.sync(GPU, client=live, metric=[temp], limit=10_000)
    assert isinstance(raw, models.TelemetryPage) and raw.step is None
    assert all(isinstance(item, models.Datapoint) for item in raw.items)
    stored = [p for p in dataset.of_gpu(GPU) if p.metric == "DCGM_FI_DEV_GPU_TEMP"]
    assert [item.value for item in raw.items] == [p.value for p in sorted(stored, key=order)]

    buckets = get_telemetry.sync(
        GPU, client=live, metric=[temp], step="1m", agg=models.GetGpuTelemetryAgg.MAX
    )
    assert isinstance(buckets, models.TelemetryPage) and buckets.agg == "max"
    assert buckets.items and all(isinstance(item, models.Bucket) for item in buckets.items)
    assert sum(item.count for item in buckets.items) == len(stored)

    catalog = list_metrics.sync(client=live)
    assert isinstance(catalog, models.MetricList) and len(catalog.items) == 10


def order(point: Any) -> tuple[Any, ...]:
    return (point.ts, point.stream, point.seq)


def test_errors_are_problems_through_the_generated_client(
    api_client: ModuleType, live: Any, dataset: Dataset
):
    get_gpu = module(api_client, "api.gpus.get_gpu")
    get_telemetry = module(api_client, "api.telemetry.get_gpu_telemetry")
    list_gpus = module(api_client, "api.gpus.list_gpus")
    models = module(api_client, "models")

    naive = get_telemetry.sync_detailed(GPU, client=live, start_time=datetime(2025, 7, 18, 20))
    assert naive.status_code == 400 and isinstance(naive.parsed, models.Problem)
    assert naive.parsed.code == "NAIVE_TIME"

    missing = get_gpu.sync_detailed("GPU-nope", client=live)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.Problem)
    assert missing.parsed.code == "GPU_NOT_FOUND" and "GPU-nope" in missing.parsed.detail

    guarded = create_app(settings_for(dataset.dsn, pool_max_size=2, token=TOKEN))
    with LiveServer(guarded) as server:
        with api_client.Client(base_url=server.url) as anonymous:
            refused = list_gpus.sync_detailed(client=anonymous)
        assert refused.status_code == 401 and refused.parsed.code == "UNAUTHORIZED"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        with api_client.AuthenticatedClient(base_url=server.url, token=TOKEN) as authorized:
            assert isinstance(list_gpus.sync(client=authorized, limit=1), models.GpuPage)

    # A database nobody listens on: every data route is a 503 with Retry-After.
    down = create_app(settings_for("postgresql://127.0.0.1:1/none?connect_timeout=2"))
    with LiveServer(down) as server, api_client.Client(base_url=server.url) as client:
        unavailable = list_gpus.sync_detailed(client=client)
    assert unavailable.status_code == 503 and isinstance(unavailable.parsed, models.Problem)
    assert unavailable.parsed.code == "DATABASE_UNAVAILABLE"
    assert unavailable.headers["Retry-After"] == "5"
    counts = Counter(type(r.parsed).__name__ for r in (naive, missing, refused, unavailable))
    assert counts == {"Problem": 4}

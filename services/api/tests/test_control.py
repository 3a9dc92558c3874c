"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from .conftest import Dataset

GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).status_code == 200
    response = await client.get("/readyz")
    assert response.status_code == 200 and (await response.get_json())["status"] == "ready"


async def test_metrics_per_route_template_and_db_latency(app, client):
    await client.get(f"/api/v1/gpus/{GPU}/telemetry?limit=5")
    await client.get("/api/v1/gpus/GPU-missing")
    sample = app.extensions["telemetry_api"].metrics.registry.get_sample_value
    route = "/api/v1/gpus/<gpu_id>/telemetry"
    labels = {"method": "GET", "route": route, "status": "200"}
    assert sample("telemetry_api_http_requests_total", labels) == 1
    missing = {"method": "GET", "route": "/api/v1/gpus/<gpu_id>", "status": "404"}
    assert sample("telemetry_api_http_requests_total", missing) == 1
    assert sample("telemetry_api_db_query_duration_seconds_count", {"query": "read_window"}) == 1
    # The window query looks its GPU up itself: only the missing GPU's lookup is a find_gpu.
    assert sample("telemetry_api_db_query_duration_seconds_count", {"query": "find_gpu"}) == 1
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert "telemetry_api_db_query_duration_seconds_bucket" in text


async def test_metrics_catalog(client):
    body = await (await client.get("/api/v1/metrics")).get_json()
    units = {m["name"]: m["unit"] for m in body["items"]}
    from telemetry_model import CSV_METRICS, METRICS

    # the CSV's ten and the rest of dcgm-exporter's default fields, each once
    assert len(units) == len(METRICS) > len(CSV_METRICS)
    assert {m.name for m in CSV_METRICS} <= units.keys()
    assert units["DCGM_FI_DEV_GPU_TEMP"] == "C" and units["DCGM_FI_DEV_SM_CLOCK"] == "MHz"


def test_settings_from_environment(monkeypatch, dataset: Dataset):
    from telemetry_api import Settings

    monkeypatch.setenv("API_DATABASE_URL", dataset.dsn)
    monkeypatch.setenv("API_MAX_LIMIT", "50")
    monkeypatch.setenv("API_DEFAULT_LIMIT", "20")
    settings = Settings()
    assert settings.database_url.get_secret_value() == dataset.dsn
    assert (settings.max_limit, settings.default_limit) == (50, 20)
    assert dataset.dsn not in repr(settings)


def test_settings_reject_inconsistent_limits(dataset: Dataset):
    import pytest
    from pydantic import ValidationError
    from telemetry_api import Settings

    with pytest.raises(ValidationError, match="default_limit"):
        Settings(database_url=dataset.dsn, default_limit=500, max_limit=100)
    with pytest.raises(ValidationError, match="pool_min_size"):
        Settings(database_url=dataset.dsn, pool_min_size=5, pool_max_size=2)
    with pytest.raises(ValidationError):
        Settings(database_url=dataset.dsn, max_limit=20_000)

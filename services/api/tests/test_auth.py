"""The optional bearer token (API_TOKEN): /api routes need it; control routes and the spec not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from quart import Quart
from telemetry_api import Settings, create_app

from .conftest import Dataset, settings_for

TOKEN = "s3cret-token"
GPU = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"
DATA_ROUTES = (
    "/api/v1/gpus",
    f"/api/v1/gpus/{GPU}",
    f"/api/v1/gpus/{GPU}/telemetry",
    "/api/v1/metrics",
)
OPEN_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


@pytest.fixture
async def guarded(dataset: Dataset) -> AsyncIterator[Quart]:
    application = create_app(settings_for(dataset.dsn, pool_max_size=2, token=TOKEN))
    async with application.test_app():
        yield application


@pytest.mark.parametrize("path", DATA_ROUTES)
@pytest.mark.parametrize(
    "authorization", [None, "", f"Bearer {TOKEN}x", TOKEN, f"bearer {TOKEN}", f"Basic {TOKEN}"]
)
async def test_data_routes_refuse_a_missing_or_wrong_token(guarded: Quart, path, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await guarded.test_client().get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    body: dict[str, Any] = await response.get_json()
    assert body["code"] == "UNAUTHORIZED" and body["status"] == 401
    assert TOKEN not in await response.get_data(as_text=True)


@pytest.mark.parametrize("path", DATA_ROUTES)
async def test_data_routes_answer_with_the_token(guarded: Quart, path):
    response = await guarded.test_client().get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", OPEN_ROUTES)
async def test_control_routes_and_the_spec_stay_open(guarded: Quart, path):
    assert (await guarded.test_client().get(path)).status_code == 200


async def test_unknown_api_paths_do_not_reveal_themselves_without_the_token(guarded: Quart):
    assert (await guarded.test_client().get("/api/v1/nope")).status_code == 401


async def test_refused_requests_are_counted(guarded: Quart):
    await guarded.test_client().get("/api/v1/gpus")
    sample = guarded.extensions["telemetry_api"].metrics.registry.get_sample_value
    labels = {"method": "GET", "route": "/api/v1/gpus", "status": "401"}
    assert sample("telemetry_api_http_requests_total", labels) == 1


async def test_without_a_token_the_api_is_open(client):
    assert (await client.get("/api/v1/gpus")).status_code == 200


def test_an_empty_token_is_refused_at_start(monkeypatch, dataset: Dataset):
    monkeypatch.setenv("API_DATABASE_URL", dataset.dsn)
    monkeypatch.setenv("API_TOKEN", "")
    with pytest.raises(ValidationError, match="token"):
        Settings()
    monkeypatch.setenv("API_TOKEN", TOKEN)
    settings = Settings()
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)

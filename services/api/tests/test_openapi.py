"""The OpenAPI document: served, complete, and identical to the committed docs/openapi.json."""

from __future__ import annotations

import json
from pathlib import Path

from telemetry_api.openapi import main, render

from conftest import ROOT

COMMITTED = ROOT / "docs" / "openapi.json"


def test_committed_openapi_json_is_up_to_date():
    assert COMMITTED.read_text("utf-8") == render(), "docs/openapi.json drifted: run `task openapi`"


def test_check_command_detects_drift(tmp_path: Path, capsys):
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n")
    assert main(["--check", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    assert "up to date" in capsys.readouterr().out


async def test_served_document_is_the_rendered_one(client):
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert await response.get_json() == json.loads(render())


def test_document_describes_every_operation():
    doc = json.loads(render())
    assert doc["openapi"].startswith("3.1")
    operations = {
        (path, method): op for path, item in doc["paths"].items() for method, op in item.items()
    }
    assert set(operations) == {
        ("/api/v1/gpus", "get"),
        ("/api/v1/gpus/{gpu_id}", "get"),
        ("/api/v1/gpus/{gpu_id}/telemetry", "get"),
        ("/api/v1/metrics", "get"),
    }
    for op in operations.values():
        assert op["summary"] and op["tags"]
        for status, response in op["responses"].items():
            expected = "application/problem+json" if int(status) >= 400 else "application/json"
            assert list(response["content"]) == [expected]
    params = {
        p["name"]: p for p in operations[("/api/v1/gpus/{gpu_id}/telemetry", "get")]["parameters"]
    }
    assert params["start_time"]["schema"]["format"] == "date-time"
    assert params["limit"]["schema"]["maximum"] == 10000
    assert "Default 1000" in params["limit"]["description"]
    assert params["metric"]["schema"]["type"] == "array"
    assert set(params["agg"]["schema"]["enum"]) == {"avg", "min", "max"}


async def test_docs_page_uses_local_assets(client):
    page = await (await client.get("/docs")).get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in page and "/docs/assets/swagger-ui.css" in page
    assert "https://" not in page
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status_code == 200 and kind in response.content_type
        assert len(await response.get_data()) > 100_000
    assert (await client.get("/docs/assets/..%2Fcore.py")).status_code == 404
    assert (await client.get("/docs/assets/swagger-editor.js")).status_code == 404


def test_the_contract_is_made_for_client_generators():
    doc = json.loads(render())
    operations = {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}
    assert set(operations) == {"listGpus", "getGpu", "getGpuTelemetry", "listMetrics"}
    assert {t["name"] for t in doc["tags"]} == {"gpus", "telemetry", "metrics"}
    schemas = doc["components"]["schemas"]
    for op_id, op in operations.items():
        assert all(tag.isidentifier() for tag in op["tags"]), op_id
        assert "401" in op["responses"], op_id  # the optional API_TOKEN
        for status, response in op["responses"].items():
            (media,) = response["content"].values()
            ref = media["schema"]["$ref"]  # every body is a named component
            assert ref.removeprefix("#/components/schemas/") in schemas
            if int(status) >= 400:
                assert ref == "#/components/schemas/Problem", (op_id, status)
                assert media["examples"], (op_id, status)  # one per problem code
            else:
                assert media["example"], op_id
        for parameter in op["parameters"]:
            assert parameter.get("description"), (op_id, parameter["name"])
    gpu_id = operations["getGpu"]["parameters"][0]
    assert gpu_id["name"] == "gpu_id" and gpu_id["example"].startswith("GPU-")
    assert operations["getGpuTelemetry"]["responses"]["503"]["headers"]["Retry-After"]
    assert list(
        operations["getGpuTelemetry"]["responses"]["400"]["content"]["application/problem+json"][
            "examples"
        ]
    ) == [
        "INVALID_TIME",
        "NAIVE_TIME",
        "INVALID_TIME_RANGE",
        "INVALID_LIMIT",
        "INVALID_CURSOR",
        "UNKNOWN_METRIC",
        "INVALID_STEP",
        "INVALID_AGGREGATE",
        "TOO_MANY_BUCKETS",
        "TOO_MANY_ROWS",
    ]
    assert doc["security"] == [{}, {"bearer": []}]

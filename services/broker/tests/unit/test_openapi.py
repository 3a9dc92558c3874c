"""The broker's OpenAPI document: committed, complete, and shaped for client generators."""

from __future__ import annotations

import json
from pathlib import Path

from telemetry_broker import create_app
from telemetry_broker.openapi import main, render
from telemetry_broker.settings import BrokerSettings

from conftest import ROOT

COMMITTED = ROOT / "docs" / "broker-openapi.json"
OPERATIONS = {
    "listTopics",
    "createTopic",
    "getTopic",
    "publishRecords",
    "fetchRecords",
    "ackLease",
    "nackLease",
    "releaseLease",
    "rejectLease",
    "extendLease",
    "getGroup",
    "deleteGroup",
    "listDeadLetters",
    "replayDeadLetters",
}


def test_committed_broker_openapi_json_is_up_to_date():
    assert COMMITTED.read_text("utf-8") == render(), "docs/broker-openapi.json: run `task openapi`"


def test_check_command_detects_drift(tmp_path: Path, capsys):
    stale = tmp_path / "broker-openapi.json"
    stale.write_text("{}\n")
    assert main(["--check", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_contract_is_made_for_client_generators():
    doc = json.loads(render())
    operations = {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}
    assert set(operations) == OPERATIONS
    schemas = doc["components"]["schemas"]
    for op_id, op in operations.items():
        assert op["summary"] and all(tag.isidentifier() for tag in op["tags"]), op_id
        assert "401" in op["responses"] and "503" in op["responses"], op_id
        body = op.get("requestBody")
        if body is not None:
            ref = body["content"]["application/json"]["schema"]["$ref"]
            assert ref.removeprefix("#/components/schemas/") in schemas, op_id
        for status, response in op["responses"].items():
            if status == "204":
                assert "content" not in response, op_id
                continue
            (media,) = response["content"].values()
            assert media["schema"]["$ref"].removeprefix("#/components/schemas/") in schemas
            if int(status) >= 400:
                assert media["schema"]["$ref"] == "#/components/schemas/Problem", (op_id, status)
                assert media["examples"], (op_id, status)
        for parameter in op["parameters"]:
            assert parameter["description"] and "example" in parameter, (op_id, parameter)
    fetch = operations["fetchRecords"]
    assert set(fetch["responses"]) == {
        "200",
        "204",
        "400",
        "401",
        "403",
        "404",
        "409",
        "413",
        "429",
        "503",
    }
    assert set(fetch["responses"]["200"]["links"]) >= {"ackLease", "extendLease", "getGroup"}
    # [partition, offset] pairs: arrays of two integers, which every tool reads.
    position = schemas["PublishResponse"]["properties"]["positions"]["items"]
    assert position == {
        "description": "[partition, offset].",
        "items": {"minimum": 0, "type": "integer"},
        "maxItems": 2,
        "minItems": 2,
        "type": "array",
    }
    records = schemas["PublishRequest"]["properties"]["records"]
    assert (records["minItems"], records["maxItems"]) == (1, 100_000)
    # Deployment limits, stated: the defaults here (30 s, 3600 s).
    assert schemas["FetchRequest"]["properties"]["max_wait"]["maximum"] == 30
    assert schemas["NackRequest"]["properties"]["delay"]["maximum"] == 3600
    assert doc["security"] == [{}, {"bearer": []}]


def test_a_broker_serves_its_own_limits_and_its_token_requirement(tmp_path: Path):
    settings = BrokerSettings(
        data_dir=tmp_path,
        token="t",
        max_fetch_wait=2.5,
        max_nack_delay=60,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    doc = app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    schemas = doc["components"]["schemas"]
    assert schemas["FetchRequest"]["properties"]["max_wait"]["maximum"] == 2.5
    assert schemas["ReleaseRequest"]["properties"]["delay"]["maximum"] == 60
    assert doc["security"] == [{"bearer": []}]

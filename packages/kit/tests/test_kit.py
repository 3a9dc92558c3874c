from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
import pytest
import telemetry_kit
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from quart_schema import validate_request
from telemetry_kit import (
    PROBLEM_JSON,
    APIError,
    JsonFormatter,
    ServiceSettings,
    TextFormatter,
    base_app,
    hypercorn_config,
    logging_config,
)


@dataclass
class Thing:
    name: str
    size: int


def make_app(ready: str | None = None):
    registry = CollectorRegistry()

    async def readiness() -> str | None:
        return ready

    app = base_app("demo", title="Demo", version="1", registry=registry, readiness=readiness)

    @app.get("/teapot")
    async def teapot() -> dict[str, str]:
        raise APIError(418, "I_AM_A_TEAPOT", "short and stout", headers={"X-Pot": "1"}, pot=2)

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("secret internals")

    @app.post("/things/")
    @validate_request(Thing)
    async def create(data: Thing) -> dict[str, str]:
        return {"name": data.name}

    return app, registry


async def test_control_routes():
    app, _ = make_app()
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/healthz")).status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 200 and (await r.get_json()) == {"status": "ready"}
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert b"telemetry_demo_http_requests_total" in await r.get_data()


async def test_each_scrape_exports_readiness_and_process_metrics():
    state: dict[str, str | None] = {"reason": None}
    registry = CollectorRegistry()

    async def readiness() -> str | None:
        return state["reason"]

    app = base_app("demo", title="Demo", version="1", registry=registry, readiness=readiness)
    client = app.test_client()
    assert (await client.get("/metrics")).status_code == 200
    assert registry.get_sample_value("telemetry_demo_ready") == 1
    # The gauge follows the check at the next scrape, without any /readyz call in between.
    state["reason"] = "database unreachable"
    await client.get("/metrics")
    assert registry.get_sample_value("telemetry_demo_ready") == 0
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert "telemetry_demo_ready 0.0" in text
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text


async def test_a_readiness_check_that_hangs_counts_as_not_ready(monkeypatch):
    monkeypatch.setattr("telemetry_kit.control.READY_CHECK_TIMEOUT", 0.05)
    registry = CollectorRegistry()
    never = asyncio.Event()

    async def readiness() -> str | None:
        await never.wait()
        return None

    app = base_app("demo", title="Demo", version="1", registry=registry, readiness=readiness)
    r = await app.test_client().get("/metrics")
    assert r.status_code == 200
    assert registry.get_sample_value("telemetry_demo_ready") == 0


async def test_not_ready_is_a_503_problem():
    app, _ = make_app(ready="database unreachable")
    client = app.test_client()
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.content_type == PROBLEM_JSON
    body = await r.get_json()
    assert body["code"] == "NOT_READY" and body["detail"] == "database unreachable"


async def test_api_error_becomes_problem_body():
    app, registry = make_app()
    client = app.test_client()
    r = await client.get("/teapot")
    assert r.status_code == 418
    assert r.headers["X-Pot"] == "1"
    body = await r.get_json()
    assert body == {
        "type": "about:blank",
        "title": "I'm a Teapot",
        "status": 418,
        "code": "I_AM_A_TEAPOT",
        "detail": "short and stout",
        "pot": 2,
    }
    assert (
        registry.get_sample_value(
            "telemetry_demo_http_requests_total",
            {"method": "GET", "route": "/teapot", "status": "418"},
        )
        == 1
    )


async def test_unexpected_error_is_500_without_internals(caplog):
    app, _ = make_app()
    client = app.test_client()
    with caplog.at_level(logging.ERROR):
        r = await client.get("/boom")
    assert r.status_code == 500
    body = await r.get_json()
    assert body["code"] == "INTERNAL_SERVER_ERROR"
    assert "secret" not in orjson.dumps(body).decode()
    assert "unhandled error" in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/nowhere", None, 404, "NOT_FOUND"),
        ("DELETE", "/healthz", None, 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/things/", {"name": "x"}, 400, "INVALID_REQUEST"),
        ("POST", "/things/", {"name": "x", "size": "big"}, 400, "INVALID_REQUEST"),
    ],
)
async def test_http_errors_are_problem_bodies(method, path, body, status, code):
    app, _ = make_app()
    client = app.test_client()
    r = await client.open(path, method=method, json=body)
    assert r.status_code == status
    assert r.content_type == PROBLEM_JSON
    assert (await r.get_json())["code"] == code
    if status == 405:  # RFC 9110: the answer lists the methods the route takes
        assert r.headers["Allow"] == "GET, HEAD, OPTIONS"


async def test_unmatched_routes_share_one_metric_label():
    app, registry = make_app()
    client = app.test_client()
    await client.get("/a")
    await client.get("/b")
    assert (
        registry.get_sample_value(
            "telemetry_demo_http_requests_total",
            {"method": "GET", "route": "<unmatched>", "status": "404"},
        )
        == 2
    )


def test_json_formatter_keeps_extra_fields():
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "INFO", "msg": "hello %s", "args": ("you",), "topic": "t"}
    )
    body = orjson.loads(JsonFormatter().format(record))
    assert body["message"] == "hello you" and body["topic"] == "t" and body["level"] == "INFO"
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError" in orjson.loads(JsonFormatter().format(record))["exception"]


def test_text_formatter_appends_extra_fields():
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "INFO", "msg": "batch %s", "args": ("stored",), "offset": 7}
    )
    assert TextFormatter().format(record).endswith("x: batch stored offset=7")
    plain = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "hi"})
    assert TextFormatter().format(plain).endswith("x: hi")


@pytest.mark.parametrize(("fmt", "cls"), [("json", "JsonFormatter"), ("text", "TextFormatter")])
def test_logging_config(fmt, cls):
    config = logging_config("DEBUG", fmt)
    assert config["formatters"]["default"]["()"].endswith(cls)
    assert config["root"]["level"] == "DEBUG"


def test_settings_and_hypercorn_config(monkeypatch):
    class Demo(ServiceSettings):
        model_config = ServiceSettings.model_config | {"env_prefix": "DEMO_"}

    monkeypatch.setenv("DEMO_PORT", "9999")
    monkeypatch.setenv("DEMO_GRACEFUL_TIMEOUT", "3")
    settings = Demo()
    config = hypercorn_config(settings)
    assert config.bind == ["127.0.0.1:9999"]
    assert config.graceful_timeout == 3
    assert config.keep_alive_max_requests >= 1_000_000  # clients keep their connections
    with pytest.raises(ValidationError):  # frozen: settings are read once
        settings.port = 1  # type: ignore[misc]


def test_public_surface():
    modules = {"app", "contract", "control", "errors", "httpmetrics", "logs", "serve", "settings"}
    assert sorted(telemetry_kit.__all__) == sorted(
        n for n in dir(telemetry_kit) if not n.startswith("_") and n not in modules
    )


async def test_wait_or_stop():
    import asyncio

    from telemetry_kit import wait_or_stop

    stop = asyncio.Event()
    assert await wait_or_stop(stop, 0.01) is False
    stop.set()
    assert await wait_or_stop(stop, 60) is True  # returns at once when stopped


def test_stop_ends_serving_with_its_exit_code_after_a_short_grace(tmp_path):
    """A fatal error stops the service like SIGTERM does, but exits non-zero, and a request
    still open gets the short grace, not the whole graceful timeout.

    On the event loop services run on (uvloop, ``loop_factory``): the stdlib loop's
    ``Server.wait_closed`` also waits for open connections, before any graceful timeout.
    """
    import asyncio
    import contextlib

    import aiohttp
    from telemetry_kit import exit_code, serve_until_stopped, stop
    from telemetry_kit.serve import loop_factory

    factory = loop_factory()
    if factory is None:
        pytest.skip("uvloop is not installed")
    app, _ = make_app()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        app.extensions["slow_started"].set()
        await asyncio.sleep(3600)
        return {}

    @app.post("/fail")
    async def fail() -> dict[str, str]:
        stop(app, exit_code=3, grace=0.2)
        stop(app, exit_code=0)  # a later clean stop does not hide the failure
        return {"stopping": "yes"}

    async def scenario() -> int:
        app.extensions["slow_started"] = slow_started = asyncio.Event()
        port_file = tmp_path / "port"
        settings = ServiceSettings(port=0, port_file=port_file, graceful_timeout=600)
        serving = asyncio.create_task(serve_until_stopped(app, settings))
        async with asyncio.timeout(30):
            while not port_file.exists():
                await asyncio.sleep(0.02)  # polling a condition with a deadline
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with session.get(f"{url}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)

            async def hang() -> None:
                async with session.get(f"{url}/slow") as r:
                    await r.read()

            hanging = asyncio.create_task(hang())
            await asyncio.wait_for(slow_started.wait(), 30)
            async with session.post(f"{url}/fail") as r:
                assert r.status == 200
            async with asyncio.timeout(60):  # far below the graceful timeout of 600 s
                code = await serving
            with contextlib.suppress(aiohttp.ClientError):
                await asyncio.wait_for(hanging, 30)  # cut off by the shutdown, not answered
        return code

    assert asyncio.run(scenario(), loop_factory=factory) == 3
    assert exit_code(app) == 3


def test_listen_on_port_0_and_report_it(tmp_path):
    import socket

    from telemetry_kit.serve import listen, write_port_file

    sock = listen("127.0.0.1", 0, backlog=4)
    with sock:
        port = sock.getsockname()[1]
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening from the bind on: the connection waits in the backlog
        with pytest.raises(OSError, match="in use"):  # the port is ours, not merely free
            listen("127.0.0.1", port, backlog=4)
        write_port_file(tmp_path / "port", port)
    assert (tmp_path / "port").read_text() == f"{port}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["port"]  # no temporary file left


def test_the_contract_provider_shapes_the_document():
    from pydantic import BaseModel
    from quart_schema import document_request, document_response, operation_id
    from telemetry_kit import ContractProvider, empty_response, links, path_parameter, problems

    class Item(BaseModel):
        """An item."""

        name: str

    class Patch(BaseModel):
        """Optional fields only: an empty body is a valid one."""

        size: int = 0

    class Provider(ContractProvider):
        path_parameters = {"item": {"description": "An item name.", "example": "a"}}

    registry = CollectorRegistry()

    async def ready() -> str | None:
        return None

    app = base_app(
        "demo",
        title="Demo",
        version="1",
        registry=registry,
        readiness=ready,
        openapi_provider_class=Provider,
    )

    @app.post("/items/<item>")
    @operation_id("putItem")
    @document_request(Item)
    @document_response(Item, 201)
    @empty_response(204, "Nothing changed.")
    @links(201, {"getItem": {"item": "$response.body#/name"}})
    @problems({404: ["ITEM_NOT_FOUND"], 503: ["BUSY"]})
    async def put_item(item: str) -> dict[str, str]:
        """Put an item."""
        return {}

    @app.patch("/items/<item>")
    @operation_id("patchItem")
    @path_parameter("item", description="Another description.")
    @document_request(Patch)
    async def patch_item(item: str) -> dict[str, str]:
        """Patch an item."""
        return {}

    doc = app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    put = doc["paths"]["/items/{item}"]["post"]
    assert put["operationId"] == "putItem"
    assert put["requestBody"] == {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}},
        "required": True,
    }
    assert list(put["responses"]) == ["201", "204", "404", "503"]
    assert put["responses"]["204"] == {"description": "Nothing changed."}
    assert put["responses"]["201"]["links"]["getItem"]["parameters"] == {
        "item": "$response.body#/name"
    }
    missing = put["responses"]["404"]
    assert missing["description"] == "Not Found: ITEM_NOT_FOUND."
    media = missing["content"][PROBLEM_JSON]
    assert media["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert media["examples"]["ITEM_NOT_FOUND"]["value"]["status"] == 404
    assert put["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert put["parameters"][0]["description"] == "An item name."
    patch = doc["paths"]["/items/{item}"]["patch"]
    assert patch["parameters"][0]["description"] == "Another description."
    assert "required" not in patch["requestBody"]
    assert {"Item", "Patch", "Problem"} <= set(doc["components"]["schemas"])

    @app.get("/anonymous")
    async def anonymous() -> dict[str, str]:
        return {}

    with pytest.raises(LookupError, match="operation_id"):
        app.extensions["QUART_SCHEMA"].openapi_provider.schema()

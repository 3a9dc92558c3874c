"""A storage error over HTTP: 503 with a stable code, /readyz says why, the service stops
to exit non-zero (docs/broker.md, "Storage errors"). The process exit itself is checked by
``tests/integration/test_disk_full.py`` on a real full filesystem."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import orjson
from telemetry_broker import create_app
from telemetry_broker.app import EXIT_STORAGE_FAILED
from telemetry_kit import exit_code
from telemetry_mq.faults import Faults

from .test_routes import FETCH, TOPIC, assert_problem, opened, publish, records, settings


async def test_a_failed_log_write_answers_503_and_stops_the_service(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with app.test_app() as test_app:
        await opened(app)
        client = test_app.test_client()
        await publish(client, 10)
        with Faults() as faults:
            faults.fail("write", "*.wal", errno.EIO)
            resp = await client.post(f"{TOPIC}/records/", data=records(10, 10))
            doc = await assert_problem(resp, 503, "STORAGE_ERROR")
            assert resp.headers["Retry-After"] == "1"
            assert "Input/output error" in doc["detail"]
            # Every later request on the topic is refused the same way: nothing is answered
            # over the failed write.
            resp = await client.post(f"{TOPIC}/records/", data=records(1, 20))
            await assert_problem(resp, 503, "STORAGE_ERROR")
            resp = await client.post(FETCH, json={"max_records": 10})
            await assert_problem(resp, 503, "STORAGE_ERROR")
            ready = await client.get("/readyz")
            doc = await assert_problem(ready, 503, "NOT_READY")
            assert "telemetry" in doc["detail"] and "storage error" in doc["detail"]
            async with asyncio.timeout(10):
                while exit_code(app) != EXIT_STORAGE_FAILED:
                    await asyncio.sleep(0.01)
    # The records acknowledged before the failure are there after the restart.
    app = create_app(settings(tmp_path))
    async with app.test_app() as test_app:
        await opened(app)
        client = test_app.test_client()
        resp = await client.post(FETCH, json={"max_records": 100, "multi": True})
        assert resp.status_code == 200
        values = [
            orjson.loads(r["value"])["i"] if isinstance(r["value"], str) else r["value"]["i"]
            for batch in (await resp.get_json())["batches"]
            for r in batch["records"]
        ]
        assert sorted(values) == list(range(10))

"""Real broker processes on loopback for the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from telemetry_devstack import ServiceProcess

StartBroker = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def start_broker(tmp_path: Path) -> AsyncIterator[StartBroker]:
    """Start ``python -m telemetry_broker`` processes on ``tmp_path/data``; stop them after."""
    procs: list[ServiceProcess] = []

    async def _start(**env: str) -> ServiceProcess:
        proc = ServiceProcess(
            "broker",
            "telemetry_broker",
            prefix="BROKER",  # it binds a free port itself and reports it
            env={
                "BROKER_HOST": "127.0.0.1",
                "BROKER_DATA_DIR": str(tmp_path / "data"),
                "BROKER_LOG_FORMAT": "json",
                "BROKER_TOPICS": "telemetry:4",
                **env,
            },
            sink=None,
        )
        procs.append(proc)
        await proc.start()
        await proc.wait_ready(30)
        return proc

    yield _start
    for proc in procs:
        await proc.stop()

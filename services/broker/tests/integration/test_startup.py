"""Start-up: /healthz answers while the broker recovers its data, /readyz only once it is open;
a broker that cannot open its data exits non-zero."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import orjson
from telemetry_devstack import ServiceProcess
from telemetry_mq import BrokerClient

from .conftest import StartBroker


def broker_process(data: Path) -> ServiceProcess:
    return ServiceProcess(
        "broker",
        "telemetry_broker",
        prefix="BROKER",  # it binds a free port itself and reports it
        env={
            "BROKER_HOST": "127.0.0.1",
            "BROKER_DATA_DIR": str(data),
            "BROKER_LOG_FORMAT": "json",
            "BROKER_TOPICS": "telemetry:4",
        },
        sink=None,
    )


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.json(content_type=None)


async def test_healthz_answers_during_recovery_and_readyz_after(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    proc = await start_broker()
    async with BrokerClient(proc.url) as mq:
        await mq.publish("telemetry", [(f"gpu-{i}", b'{"i": %d}' % i) for i in range(100)])
    assert await proc.stop() == 0
    # Hold the recovery for as long as the test wants: the topic's checkpoint becomes a named
    # pipe, and recovery's read of it blocks until the test writes the original content.
    checkpoint = tmp_path / "data" / "topics" / "telemetry" / "checkpoint.json"
    content = checkpoint.read_bytes()
    checkpoint.unlink()
    os.mkfifo(checkpoint)

    proc = broker_process(tmp_path / "data")
    await proc.start()
    try:
        await proc.wait_port(30)  # bound before the recovery starts
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):
                while True:  # until the process serves HTTP
                    try:
                        status, _ = await get(session, f"{proc.url}/healthz")
                        break
                    except aiohttp.ClientConnectionError:
                        assert proc.returncode is None, "\n".join(proc.lines)
                        await asyncio.sleep(0.05)
            assert status == 200
            status, body = await get(session, f"{proc.url}/readyz")
            assert status == 503
            assert "recovering" in body["detail"]
            status, body = await get(session, f"{proc.url}/v1/topics/")
            assert (status, body["code"]) == (503, "NOT_READY")

            def release() -> None:
                with open(checkpoint, "wb") as f:  # blocks until recovery opened it to read
                    f.write(content)

            await asyncio.to_thread(release)
            await proc.wait_ready(30)
            async with BrokerClient(proc.url) as mq:
                batch = await mq.fetch("telemetry", "g", max_records=1000)
                assert batch is not None and batch.records
    finally:
        assert await proc.stop() == 0


async def test_a_broker_that_cannot_open_its_data_exits_non_zero(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    proc = await start_broker()
    assert await proc.stop() == 0
    checkpoint = tmp_path / "data" / "topics" / "telemetry" / "checkpoint.json"
    checkpoint.write_bytes(orjson.dumps({"format": 1, "wal": 0, "offsets": [0]}))  # 1 of 4

    proc = broker_process(tmp_path / "data")
    await proc.start()
    async with asyncio.timeout(30):
        code = await proc.wait()
    assert code == 1
    assert any("checkpoint has 1 partitions" in line for line in proc.lines)

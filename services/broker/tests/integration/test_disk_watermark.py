"""The client against a broker past its disk high watermark: 429 DISK_FULL as DiskFullError."""

from __future__ import annotations

from pathlib import Path

import pytest
from telemetry_mq import BacklogFullError, BrokerClient, DiskFullError
from telemetry_mq.disk import disk_usage

from .conftest import StartBroker


async def test_publish_past_the_watermark_raises_disk_full(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    usage = disk_usage(tmp_path)
    watermark = usage.used / usage.capacity / 2  # the test filesystem is already past it
    proc = await start_broker(BROKER_DISK_HIGH_WATERMARK=str(watermark))
    async with BrokerClient(proc.url, max_retries=0) as mq:
        with pytest.raises(DiskFullError) as info:
            await mq.publish("telemetry", [("k", b"1")])
        assert not isinstance(info.value, BacklogFullError)  # a code of its own
        assert info.value.retry_after == 1.0
        assert info.value.used_bytes >= info.value.watermark_bytes > 0
        assert await mq.fetch("telemetry", "g", max_wait=0) is None  # fetches still answer

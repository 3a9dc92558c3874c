"""Dead letters and groups through the client and the CLI, against a real broker process.

A replay cut short by ``kill -9`` loses nothing: every dead letter's record is afterwards
either still pending or back in its topic (or both: a duplicate), and a second replay
finishes the job.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest
from telemetry_mq import BrokerClient, GroupNotFoundError, MQError, Selection

from .conftest import StartBroker

N = 3000


async def cli(url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telemetry_broker.cli",
        "--url",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def pending_values(mq: BrokerClient) -> list[int]:
    values: list[int] = []
    after = None
    while True:
        report = await mq.dead_letters("telemetry", limit=1000, after=after)
        values += [letter["value"]["i"] for letter in report["letters"]]
        after = report["next"]
        if after is None:
            return values


async def ends(mq: BrokerClient) -> list[int]:
    stats = await mq.topic_stats("telemetry")
    return [p["end_offset"] for p in stats["partition_stats"]]


async def replayed_values(mq: BrokerClient, originals: list[int]) -> list[int]:
    """Values of the records published again (past the ``originals`` end offsets)."""
    values: list[int] = []
    while batches := await mq.fetch_many("telemetry", "check", max_records=1000, max_wait=0):
        for batch in batches:
            first = originals[batch.partition]
            values += [orjson.loads(d.value)["i"] for d in batch.records if d.offset >= first]
            await mq.ack(batch)
    return values


async def test_dead_letters_survive_a_kill_during_replay(start_broker: StartBroker) -> None:
    env = {"BROKER_MAX_DELIVERIES": "1"}
    proc = await start_broker(**env)
    async with BrokerClient(proc.url, timeout=30) as mq:
        records = [(f"gpu-{i % 31}", orjson.dumps({"i": i})) for i in range(N)]
        await mq.publish("telemetry", records)
        originals = await ends(mq)
        while batches := await mq.fetch_many("telemetry", "g", max_records=1000, max_wait=0):
            for batch in batches:
                assert await mq.reject(batch, error=f"bad {batch.partition}") == len(batch.records)
        report = await mq.dead_letters("telemetry", limit=2)
        assert report["records"] == N
        assert report["by_reason"] == {"rejected": N}
        used = [p for p, end in enumerate(originals) if end]
        assert sorted(e["error"] for e in report["by_error"]) == [f"bad {p}" for p in used]
        code, out = await cli(proc.url, "dlq", "list", "telemetry", "--limit", "1")
        assert code == 0 and f"{N} dead letters pending in telemetry.dlq" in out, out

        await mq.delete_group("telemetry", "g")
        with pytest.raises(GroupNotFoundError):
            await mq.delete_group("telemetry", "g")
        assert await mq.replay_dead_letters("telemetry", Selection(all=True), max_records=500) == (
            500,
            N - 500,
        )

        replay = asyncio.create_task(
            mq.replay_dead_letters("telemetry", Selection(all=True), max_records=N)
        )
        async with asyncio.timeout(30):  # until the broker has published some of it again
            while sum(await ends(mq)) <= N + 500 and not replay.done():
                await asyncio.sleep(0.001)
        proc.kill()
        await proc.wait()
        try:
            await replay  # cut off, most likely
        except MQError:
            pass

    proc = await start_broker(**env)
    async with BrokerClient(proc.url, timeout=30) as mq:
        pending = await pending_values(mq)
        replayed = await replayed_values(mq, originals)
        assert set(pending) | set(replayed) == set(range(N)), "a dead letter was lost"
        code, out = await cli(proc.url, "dlq", "replay", "telemetry", "--all")
        assert code == 0, out
        assert await pending_values(mq) == []
        assert set(await replayed_values(mq, originals)) | set(replayed) == set(range(N))

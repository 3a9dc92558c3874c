"""A full disk, for real: the broker process on a size-limited tmpfs runs out of space.

Publishes get an error, the broker exits non-zero (74), nothing acknowledged is lost, the
restart opens on the full volume, and once space is freed the broker works again; a volume
something else filled heals at the restart: the consumed segments go before the first request
(docs/broker.md, "Storage errors"). Needs root and permission to mount a tmpfs; skipped with
the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from telemetry_devstack import ServiceProcess
from telemetry_mq import BrokerClient, MQError

from .conftest import StartBroker

EXIT_STORAGE_FAILED = 74
FS_BYTES = 8 * 1024 * 1024
ROOM = 1536 * 1024
"""Bytes left free for the broker when the filler file is written."""

Position = tuple[int, int]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted on a fresh directory (unmounted after the test)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free."""
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    filler = mount / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


def record(n: int) -> bytes:
    return orjson.dumps({"n": n, "pad": "x" * 200})


async def read_everything(url: str, group: str) -> dict[Position, bytes]:
    """Every record of the topic, delivered to a new group and acked."""
    out: dict[Position, bytes] = {}
    async with BrokerClient(url, max_retries=3) as mq:
        empty = 0
        while empty < 2:  # two empty long-polls in a row: nothing is left
            batches = await mq.fetch_many("telemetry", group, max_records=2000, max_wait=0.3)
            empty = 0 if batches else empty + 1
            for batch in batches:
                for d in batch.records:
                    pos = (batch.partition, d.offset)
                    assert pos not in out, f"{pos} delivered twice to a fresh group"
                    out[pos] = d.value
                await mq.ack(batch)
    return out


async def test_a_full_disk_loses_no_acknowledged_record(
    small_fs: Path, start_broker: StartBroker
) -> None:
    env = {
        "BROKER_DATA_DIR": str(small_fs / "data"),
        # Small segments: checkpoints, rolls and partition writes happen within the 8 MiB.
        "BROKER_WAL_SEGMENT_BYTES": str(256 * 1024),
        "BROKER_SEGMENT_BYTES": str(256 * 1024),
        # No high watermark: this is what a real ENOSPC does (with one, publishes get 429
        # DISK_FULL first: tests/system/test_broker_disk.py).
        "BROKER_DISK_HIGH_WATERMARK": "1",
    }
    proc = await start_broker(**env)
    filler = fill(small_fs, ROOM)
    acked: dict[Position, bytes] = {}  # acknowledged by the broker
    in_doubt: set[bytes] = set()  # publishes that failed: stored or not, either is fine
    n = 0
    async with BrokerClient(proc.url, max_retries=0, timeout=10) as mq:
        async with asyncio.timeout(120):
            while True:  # until the disk is full
                batch = [(f"gpu-{(n + i) % 7}", record(n + i)) for i in range(50)]
                n += 50
                try:
                    positions = await mq.publish("telemetry", batch)
                except MQError:
                    in_doubt.update(value for _, value in batch)
                    break
                for (_, value), pos in zip(batch, positions, strict=True):
                    acked[pos] = value
    assert len(acked) > 1000, "the broker took a good part of the space first"
    async with asyncio.timeout(60):
        code = await proc.wait()
    assert code == EXIT_STORAGE_FAILED, "\n".join(proc.lines[-20:])
    assert any("storage error" in line for line in proc.lines)

    # While the disk stays full the restart opens all the same: the replay keeps in memory
    # what the partition files cannot take (the write-ahead log still holds it).
    again = ServiceProcess("broker", "telemetry_broker", prefix="BROKER", env=proc.env, sink=None)
    await again.start()
    try:
        await again.wait_ready(30)
    finally:
        assert await again.stop() == 0

    filler.unlink()  # space is freed: the broker works again
    proc = await start_broker(**env)
    first = await read_everything(proc.url, "after-restart")
    missing = [pos for pos in acked if pos not in first]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    for pos, value in first.items():
        if pos in acked:
            assert value == acked[pos], f"{pos} changed"
        else:
            assert value in in_doubt, f"{pos} holds a record nobody published"

    async with BrokerClient(proc.url, max_retries=3) as mq:
        for start in range(0, 1000, 100):
            batch = [(f"gpu-{i % 7}", record(10_000_000 + i)) for i in range(start, start + 100)]
            for (_, value), pos in zip(batch, await mq.publish("telemetry", batch), strict=True):
                acked[pos] = value
    assert await proc.stop() == 0

    proc = await start_broker(**env)  # and once more from the files
    second = await read_everything(proc.url, "after-second-restart")
    assert {pos: second[pos] for pos in acked} == acked
    assert set(second) - set(acked) <= set(first) - set(acked)  # only the in-doubt ones


def segment_files(data: Path) -> set[Path]:
    return set((data / "topics" / "telemetry" / "partitions").glob("*/*.log"))


async def test_a_restart_on_a_volume_something_else_filled_makes_room_itself(
    small_fs: Path, start_broker: StartBroker
) -> None:
    data = small_fs / "data"
    env = {
        "BROKER_DATA_DIR": str(data),
        "BROKER_WAL_SEGMENT_BYTES": str(256 * 1024),
        "BROKER_SEGMENT_BYTES": str(128 * 1024),
        # Rounds an hour apart: only the round at open can make room before the first request.
        "BROKER_MAINTENANCE_INTERVAL": "3600",
    }
    proc = await start_broker(**env)
    unconsumed: dict[Position, bytes] = {}
    async with BrokerClient(proc.url, max_retries=0, timeout=10) as mq:
        for start in range(0, 6000, 100):
            await mq.publish(
                "telemetry", [(f"gpu-{i % 7}", record(i)) for i in range(start, start + 100)]
            )
        assert len(await read_everything(proc.url, "g")) == 6000
        for start in range(6000, 6300, 100):  # not consumed yet; its frames not written out yet
            batch = [(f"gpu-{i % 7}", record(i)) for i in range(start, start + 100)]
            for (_, value), pos in zip(batch, await mq.publish("telemetry", batch), strict=True):
                unconsumed[pos] = value
    consumed_segments = segment_files(data)
    proc.kill()
    await proc.wait()
    fill(small_fs, 0)  # something else takes every byte left
    st = os.statvfs(small_fs)
    assert st.f_bavail == 0

    # It opens on the full volume: the replay keeps in memory what the files cannot take, and
    # the consumed segments go before the first request. The filler stays.
    proc = await start_broker(**env)
    assert len(segment_files(data) & consumed_segments) < len(consumed_segments) // 2
    assert os.statvfs(small_fs).f_bavail > 0
    assert await read_everything(proc.url, "g") == unconsumed
    async with BrokerClient(proc.url, max_retries=0, timeout=10) as mq:
        batch = [(f"gpu-{i % 7}", record(i)) for i in range(7000, 7100)]
        for (_, value), pos in zip(batch, await mq.publish("telemetry", batch), strict=True):
            unconsumed[pos] = value
    assert await proc.stop() == 0
    proc = await start_broker(**env)  # and once more from the files (a new group also gets
    again = await read_everything(proc.url, "again")  # the consumed records retention kept)
    assert unconsumed.items() <= again.items()

"""Segment files on disk, and recovery: torn tails are truncated, corrupt middles reported."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from telemetry_mq import Broker, CorruptLogError
from telemetry_mq.log import TAIL_RECORDS
from telemetry_mq.protocol import FRAME_OVERHEAD
from telemetry_mq.segment import segment_name

from ..conftest import OpenBroker


def value(i: int) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * 40})


def partition_dir(tmp_path: Path, topic: str = "t", p: int = 0) -> Path:
    return tmp_path / "data" / "topics" / topic / "partitions" / f"{p:04d}"


async def publish_n(b: Broker, n: int, start: int = 0) -> None:
    await b.publish("t", [("k", value(i)) for i in range(start, start + n)])


async def read_all(b: Broker, group: str = "g") -> list[bytes]:
    out: list[bytes] = []
    while (batch := await b.fetch("t", group, max_records=1000)) is not None:
        out.extend(d.value for d in batch.records)
        await b.ack("t", group, batch.lease)
    return out


async def test_records_are_framed_in_segment_files(open_broker: OpenBroker, tmp_path: Path) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    positions = await b.publish("t", [("k", value(0)), ("k", value(1))])
    assert positions == [(0, 0), (0, 1)]
    await b.close()  # the frames reach the partition files in large writes, at the latest now
    data = (partition_dir(tmp_path) / segment_name(0)).read_bytes()
    assert len(data) == 2 * (FRAME_OVERHEAD + 1 + len(value(0)))
    assert value(1) in data


async def test_segments_roll_and_reads_span_them(open_broker: OpenBroker, tmp_path: Path) -> None:
    b = await open_broker(segment_bytes=4096)
    await b.create_topic("t", 1)
    for i in range(10):
        await publish_n(b, 20, start=i * 20)
    b.topic("t").logs[0].write_out()
    files = sorted(p.name for p in partition_dir(tmp_path).iterdir())
    assert len(files) > 3
    assert files[0] == segment_name(0)
    assert [orjson.loads(v)["i"] for v in await read_all(b)] == list(range(200))
    await b.close()
    b = await open_broker(segment_bytes=4096)  # from the files this time
    assert [orjson.loads(v)["i"] for v in await read_all(b, "g2")] == list(range(200))


async def test_torn_tail_is_truncated_and_nothing_acked_is_lost(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish_n(b, 10)
    await b.close()
    seg = partition_dir(tmp_path) / segment_name(0)
    intact = seg.stat().st_size
    with open(seg, "ab") as f:  # a write cut short by a crash: half a frame
        f.write(os.urandom(FRAME_OVERHEAD + 5))
    b = await open_broker()
    assert seg.stat().st_size == intact
    assert [orjson.loads(v)["i"] for v in await read_all(b)] == list(range(10))
    # Appends continue at the right offset after the truncation.
    assert await b.publish("t", [("k", value(10))]) == [(0, 10)]


async def test_zero_filled_tail_is_truncated(open_broker: OpenBroker, tmp_path: Path) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish_n(b, 3)
    await b.close()
    seg = partition_dir(tmp_path) / segment_name(0)
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    b = await open_broker()
    assert len(await read_all(b)) == 3


async def test_flipped_byte_in_the_middle_is_reported(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish_n(b, 10)
    await b.close()
    seg = partition_dir(tmp_path) / segment_name(0)
    data = bytearray(seg.read_bytes())
    frame = len(data) // 10
    data[3 * frame + FRAME_OVERHEAD + 4] ^= 0x20  # inside record 3's value
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as info:
        await open_broker()
    err = info.value
    assert (err.topic, err.partition, err.offset, err.position) == ("t", 0, 3, 3 * frame)
    assert "checksum" in str(err) and segment_name(0) in str(err)


async def test_corrupt_sealed_segment_is_reported_even_at_its_end(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker(segment_bytes=1024)
    await b.create_topic("t", 1)
    for i in range(5):
        await publish_n(b, 10, start=i * 10)
    await b.close()
    first = partition_dir(tmp_path) / segment_name(0)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # last byte of a sealed segment: not a torn tail, a corruption
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as info:
        await open_broker()
    assert info.value.partition == 0


async def test_torn_group_journal_tail_is_dropped(open_broker: OpenBroker, tmp_path: Path) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish_n(b, 5)
    batch = await b.fetch("t", "g")
    assert batch is not None
    await b.ack("t", "g", batch.lease)
    await b.close()
    journal = tmp_path / "data" / "topics" / "t" / "groups" / "g.journal"
    with open(journal, "ab") as f:
        f.write(b'0badc0de["A", 0, [[0')
    b = await open_broker()
    assert b.group_stats("t", "g").partitions[0].committed == 5
    assert await read_all(b) == []


async def test_corrupt_group_journal_line_is_reported(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish_n(b, 5)
    batch = await b.fetch("t", "g")
    assert batch is not None
    await b.ack("t", "g", batch.lease)
    await b.close()
    journal = tmp_path / "data" / "topics" / "t" / "groups" / "g.journal"
    lines = journal.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"S"', b'"T"')
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptLogError, match="g.journal"):
        await open_broker()


async def test_reads_from_memory_and_from_disk_agree(open_broker: OpenBroker) -> None:
    """The newest records are read from memory, older ones from the files: same records."""
    b = await open_broker(segment_bytes=64 * 1024)
    await b.create_topic("t", 1)
    n = TAIL_RECORDS * 2 + 100
    for start in range(0, n, 500):
        await publish_n(b, min(500, n - start), start=start)
    plog = b.topic("t").logs[0]
    from_memory = plog.read(n - 10, 10, 1 << 30)
    assert from_memory == plog.read_offsets(list(range(n - 10, n)))
    older = plog.read(0, 10, 1 << 30)
    assert [r[0] for r in older] == list(range(10))
    assert [orjson.loads(v)["i"] for v in await read_all(b)] == list(range(n))
    await b.close()
    b = await open_broker()
    assert b.topic("t").logs[0].read(n - 10, 10, 1 << 30) == from_memory


async def test_a_partition_shorter_than_its_checkpoint_is_reported(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish_n(b, 10)
    await b.close()  # the checkpoint makes offsets below 10 durable
    seg = partition_dir(tmp_path) / segment_name(0)
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])  # five whole frames: the rest is gone
    with pytest.raises(CorruptLogError, match="checkpoint") as info:
        await open_broker()
    assert (info.value.partition, info.value.offset) == (0, 5)


async def test_a_gap_between_segments_below_the_checkpoint_is_reported(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker(segment_bytes=1024)
    await b.create_topic("t", 1)
    for i in range(5):
        await publish_n(b, 10, start=i * 10)
    await b.close()
    files = sorted(partition_dir(tmp_path).iterdir())
    assert len(files) >= 3
    files[1].unlink()  # a sealed segment in the middle, below the checkpoint
    with pytest.raises(CorruptLogError, match="segment starts at offset") as info:
        await open_broker()
    assert info.value.path == str(files[2])

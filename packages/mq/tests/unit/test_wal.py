"""The topic write-ahead log: acknowledged records survive partition files that lost data.

A crash is simulated by copying the data directory while the broker runs (what a ``kill -9``
leaves: every write done, nothing more); a power failure by also damaging what was written to
the partition files after the last checkpoint (those writes were never fsynced).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
from telemetry_mq import Broker, CorruptLogError
from telemetry_mq.faults import Faults
from telemetry_mq.protocol import PREFIX
from telemetry_mq.wal import CHECKPOINT, ENTRY_HEAD, SUFFIX, wal_name

from ..conftest import OpenBroker


def value(i: int) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * 40})


def topic_dir(data: Path, topic: str = "t") -> Path:
    return data / "topics" / topic


def wal_files(data: Path) -> list[Path]:
    return sorted((topic_dir(data) / "wal").glob(f"*{SUFFIX}"))


def segments(data: Path, p: int) -> list[Path]:
    return sorted((topic_dir(data) / "partitions" / f"{p:04d}").glob("*.log"))


def checkpoint(data: Path) -> dict[str, object]:
    doc: dict[str, object] = orjson.loads((topic_dir(data) / CHECKPOINT).read_bytes())
    return doc


def frames_end(raw: bytes, n: int) -> int:
    """The byte position just past the first ``n`` frames of a segment file."""
    pos = 0
    for _ in range(n):
        size, *_ = PREFIX.unpack_from(raw, pos)
        pos += PREFIX.size + size
    return pos


async def publish(b: Broker, start: int, n: int, keys: int = 5) -> None:
    await b.publish("t", [(f"k{i % keys}", value(i)) for i in range(start, start + n)])


async def read_all(b: Broker, group: str = "g") -> dict[int, list[int]]:
    """Every record ``group`` has not acked, per partition in offset order: ``{p: [i, ...]}``."""
    out: dict[int, list[int]] = {}
    while batches := await b.fetch_many("t", group, max_records=1000):
        for batch in batches:
            out.setdefault(batch.partition, []).extend(
                orjson.loads(d.value)["i"] for d in batch.records
            )
            await b.ack("t", group, batch.lease)
    return out


async def crash(b: Broker, data: Path) -> None:
    """Leave ``data`` as a crash of ``b`` now would: copy it, close ``b``, put the copy back."""
    for t in b.topics.values():  # a stable copy: no checkpoint half-way
        if t.checkpointer is not None:
            await t.checkpointer
    snapshot = data.with_name("snapshot")
    shutil.copytree(data, snapshot)
    await b.close()
    shutil.rmtree(data)
    snapshot.rename(data)


async def test_acked_records_come_back_when_partition_files_lost_unsynced_writes(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    b = await open_broker()
    await b.create_topic("t", 3)
    for start in range(0, 60, 10):
        await publish(b, start, 10)
    before = await read_all(b)
    assert sum(map(len, before.values())) == 60
    for plog in b.topic("t").logs:
        plog.write_out()  # written, never fsynced
    await crash(b, data)
    assert wal_files(data), "the records are in the write-ahead log"
    assert checkpoint(data)["offsets"] == [0, 0, 0]
    # Power failure: nothing written to the partition files since the checkpoint survived,
    # except a stale page in the middle of one (a hole of zeros before it).
    for p in (0, 1):
        for seg in segments(data, p):
            seg.unlink()
    seg = segments(data, 2)[0]
    size = seg.stat().st_size
    raw = bytearray(seg.read_bytes())
    raw[10 : size // 2] = bytes(size // 2 - 10)
    seg.write_bytes(bytes(raw))

    b = await open_broker()
    assert await read_all(b, "after") == before
    # Recovery checkpointed: the partition files are durable and the log is empty.
    assert checkpoint(data)["offsets"] == [len(before[p]) for p in range(3)]
    assert all(f.stat().st_size == 0 for f in wal_files(data))
    # Appends go on at the right offsets.
    assert await b.publish("t", [("k0", value(60))]) == [(0, len(before[0]))]


async def test_log_rolls_checkpoint_and_drop_old_log_segments(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=4096)
    await b.create_topic("t", 2)
    for start in range(0, 400, 20):
        await publish(b, start, 20)
        t = b.topic("t")
        if t.checkpointer is not None:
            await t.checkpointer
    written = sum(f.stat().st_size for f in wal_files(data))
    assert written < 2 * 4096 + 20 * 100, "older log segments were deleted"
    offsets = checkpoint(data)["offsets"]
    assert isinstance(offsets, list) and sum(offsets) > 200
    expected = await read_all(b)
    await crash(b, data)
    # Power failure: the partition files keep only what the checkpoint made durable.
    for p, durable in enumerate(offsets):
        (seg,) = segments(data, p)
        raw = seg.read_bytes()
        seg.write_bytes(raw[: frames_end(raw, durable)] + b"\0" * 100)
    b = await open_broker()
    assert await read_all(b, "after") == expected


async def test_torn_log_tail_is_truncated(open_broker: OpenBroker, tmp_path: Path) -> None:
    data = tmp_path / "data"
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish(b, 0, 10, keys=1)
    await crash(b, data)
    with open(wal_files(data)[-1], "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # an entry whose write was cut short
    b = await open_broker()
    assert await read_all(b) == {0: list(range(10))}


async def test_flipped_byte_in_the_log_is_reported(open_broker: OpenBroker, tmp_path: Path) -> None:
    data = tmp_path / "data"
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish(b, 0, 5, keys=1)
    await publish(b, 5, 5, keys=1)
    await crash(b, data)
    wal = wal_files(data)[-1]
    raw = bytearray(wal.read_bytes())
    raw[40] ^= 0x01  # inside the first entry; an intact entry follows
    wal.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError, match="checksum") as info:
        await open_broker()
    assert info.value.path == str(wal) and info.value.position == 0


async def test_clean_close_leaves_an_empty_log(open_broker: OpenBroker, tmp_path: Path) -> None:
    data = tmp_path / "data"
    b = await open_broker()
    await b.create_topic("t", 2)
    await publish(b, 0, 30)
    counts = [plog.next_offset for plog in b.topic("t").logs]
    await b.close()
    assert all(f.stat().st_size == 0 for f in wal_files(data)) or not wal_files(data)
    assert checkpoint(data)["offsets"] == counts


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_a_crash_loses_nothing_acked_under_any_fsync_policy(
    open_broker: OpenBroker, tmp_path: Path, fsync: str
) -> None:
    data = tmp_path / "data"
    b = await open_broker(fsync=fsync, fsync_interval=0.01)
    await b.create_topic("t", 2)
    await publish(b, 0, 25)
    await publish(b, 25, 25)
    expected = await read_all(b)
    assert sum(map(len, expected.values())) == 50
    await crash(b, data)
    b = await open_broker(fsync=fsync)
    assert await read_all(b, "after") == expected
    assert await b.publish("t", [("k1", value(50))]) == [(1, len(expected[1]))]


async def test_a_bad_entry_in_an_earlier_log_segment_is_reported(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    """Only the last log segment can end in a torn write: a segment is durable before the log
    moves to the next one, so damage at the end of an earlier one is corruption."""
    data = tmp_path / "data"
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish(b, 0, 5, keys=1)
    await publish(b, 5, 5, keys=1)
    await crash(b, data)
    (wal,) = wal_files(data)
    raw = wal.read_bytes()
    size, _, _ = ENTRY_HEAD.unpack_from(raw, 0)
    first = ENTRY_HEAD.size + size
    wal.write_bytes(raw[:first] + b"\x40\x00\x00\x00garbage")  # the first entry, then damage
    wal.with_name(wal_name(1)).write_bytes(raw[first:])  # the second entry, in the next segment
    with pytest.raises(CorruptLogError) as info:
        await open_broker()
    assert info.value.path == str(wal) and info.value.position == first


async def test_the_thread_path_makes_each_publish_durable_before_answering(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    """Without the fsync helper every log write runs in a worker thread: each one must be an
    O_DSYNC write, or be followed by an fdatasync, before its publish is answered."""
    data = tmp_path / "data"
    b = await open_broker(fsync_helper=False)
    await b.create_topic("t", 2)
    with Faults() as faults:
        for start in range(0, 50, 10):
            before = len(faults.calls)
            await publish(b, start, 10)
            calls = faults.calls[before:]
            writes = [i for i, c in enumerate(calls) if c.op == "write" and c.path.endswith(SUFFIX)]
            assert writes, "the publish wrote to the log"
            for i in writes:
                write = calls[i]
                durable = write.flags & os.O_DSYNC or any(
                    c.op == "fdatasync" and c.path == write.path and not c.errno
                    for c in calls[i + 1 :]
                )
                assert durable, f"publish answered before {write} was durable"
    assert b._committer._syncer is None  # really the threads
    expected = await read_all(b)
    assert sum(map(len, expected.values())) == 50
    await crash(b, data)
    b = await open_broker(fsync_helper=False)
    assert await read_all(b, "after") == expected


async def test_the_thread_path_fdatasyncs_what_it_wrote_without_fsync(
    open_broker: OpenBroker,
) -> None:
    """The ``interval`` policy answers after the write; the next fsync must fdatasync it."""
    b = await open_broker(fsync_helper=False, fsync="interval", fsync_interval=3600)
    await b.create_topic("t", 1)
    with Faults() as faults:
        await publish(b, 0, 10, keys=1)
        (write,) = faults.calls_to("write", f"*{SUFFIX}")
        assert not write.flags & os.O_DSYNC
        assert not faults.calls_to("fdatasync", f"*{SUFFIX}")
        await b._committer.sync([b.topic("t").wal])  # what the interval's tick does
        assert [c.path for c in faults.calls_to("fdatasync", f"*{SUFFIX}")] == [write.path]

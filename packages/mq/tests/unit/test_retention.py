"""Retention by bytes across topics, and the disk high watermark: 429, early deletion, rolls."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import orjson
import pytest
from telemetry_mq import Broker, DiskFullError
from telemetry_mq.disk import DiskWatch, disk_usage
from telemetry_mq.faults import Faults

from ..conftest import Clock, OpenBroker


def value(i: int) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * 100})


async def fill(b: Broker, topic: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await b.publish(topic, [("k", value(i))])
    b.topic(topic).logs[0].write_out()  # the frames reach the files in large writes: now


async def consume(b: Broker, topic: str, group: str = "g", most: int = 1 << 30) -> list[int]:
    got: list[int] = []
    while len(got) < most and (
        batch := await b.fetch(topic, group, max_records=min(100, most - len(got)))
    ):
        got.extend(orjson.loads(d.value)["i"] for d in batch.records)
        await b.ack(topic, group, batch.lease)
    return got


def files(tmp_path: Path, topic: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "data/topics" / topic / "partitions/0000").iterdir())


async def test_byte_budget_holds_for_all_topics_together_oldest_first(
    open_broker: OpenBroker, tmp_path: Path, wall: Clock
) -> None:
    budget = 3000
    b = await open_broker(segment_bytes=512, retention_age=None, retention_bytes=budget)
    for name in ("old", "new"):
        await b.create_topic(name, 1)
    await fill(b, "old", 40)
    wall.advance(60)
    await fill(b, "new", 40)
    assert await consume(b, "old") == list(range(40))
    assert await consume(b, "new") == list(range(40))
    assert b.topic_stats("old").retained_bytes > budget
    await b.maintain()
    old, new = b.topic_stats("old"), b.topic_stats("new")
    assert old.retained_bytes + new.retained_bytes <= budget  # not per partition: all together
    # Oldest first: the newer topic keeps more, and its newest records are all there.
    assert old.partition_stats[0].start_offset > new.partition_stats[0].start_offset
    assert new.partition_stats[0].start_offset < 30
    assert files(tmp_path, "old")[0] != "00000000000000000000.log"


async def test_byte_budget_never_deletes_unconsumed_records(
    open_broker: OpenBroker, wall: Clock
) -> None:
    b = await open_broker(segment_bytes=512, retention_age=None, retention_bytes=1)
    await b.create_topic("t", 1)
    await fill(b, "t", 40)
    assert await consume(b, "t", "fast") == list(range(40))
    assert await consume(b, "t", "slow", most=10) == list(range(10))
    await b.maintain()
    stats = b.topic_stats("t")
    assert 0 < stats.partition_stats[0].start_offset <= 10  # consumed by both groups: gone
    assert await consume(b, "t", "slow") == list(range(10, 40))  # the rest is all there
    await b.maintain()
    assert b.topic_stats("t").partition_stats[0].start_offset > 30


def over_the_watermark(path: Path) -> float:
    """A watermark the filesystem under ``path`` is already past (whatever else is on it)."""
    usage = disk_usage(path)
    if usage.used == 0:  # pragma: no cover - an empty filesystem
        pytest.skip("the test filesystem reports no used blocks")
    return usage.used / usage.capacity / 2


async def test_past_the_watermark_publishes_get_disk_full_and_consumed_segments_go(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker(segment_bytes=512, retention_age=3600.0)
    await b.create_topic("t", 1)
    await fill(b, "t", 40)
    assert await consume(b, "t", most=25) == list(range(25))
    segments = len(files(tmp_path, "t"))
    await b.close()

    (tmp_path / "data").mkdir(exist_ok=True)
    watermark = over_the_watermark(tmp_path / "data")
    b = await open_broker(segment_bytes=512, retention_age=3600.0, disk_high_watermark=watermark)
    with pytest.raises(DiskFullError) as info:
        await b.publish("t", [("k", value(99))])
    assert info.value.retry_after == 1.0
    assert info.value.used_bytes >= info.value.watermark_bytes > 0
    assert b.topic_stats("t").records == 40  # nothing of the refused batch was appended
    # Fetches and acks go on past the watermark.
    assert await consume(b, "t", most=5) == list(range(25, 30))
    # Consumed segments go early, whatever their age (an hour's retention by age here).
    await b.maintain()
    start = b.topic_stats("t").partition_stats[0].start_offset
    assert 0 < start <= 30
    assert len(files(tmp_path, "t")) < segments
    # Dead letters are not refused: a rejected record reaches the dead-letter topic.
    batch = await b.fetch("t", "g", max_records=1)
    assert batch is not None
    assert await b.reject("t", "g", batch.lease) == 1
    assert b.topic_stats("t.dlq").records == 1
    assert await consume(b, "t") == list(range(31, 40))


async def test_under_pressure_a_partly_consumed_active_segment_rolls_at_the_next_append(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    watermark = over_the_watermark(tmp_path / "data")
    # One large segment: the active one holds every record, consumed or not.
    b = await open_broker(retention_age=None, disk_high_watermark=watermark)
    await b.create_topic("t", 1)
    assert b.disk is not None
    b.disk.high_watermark = 1.0  # room to publish first
    await fill(b, "t", 20)
    assert await consume(b, "t", most=15) == list(range(15))
    b.disk.high_watermark = watermark
    await b.maintain()  # nothing closed to delete: the active segment rolls at the next append
    assert files(tmp_path, "t") == ["00000000000000000000.log"]
    b.disk.high_watermark = 1.0
    await b.publish("t", [("k", value(20))])
    b.disk.high_watermark = watermark
    assert await consume(b, "t", most=5) == list(range(15, 20))
    await b.maintain()
    assert files(tmp_path, "t") == ["00000000000000000020.log"]
    assert await consume(b, "t") == [20]


async def consumed_past_the_watermark(open_broker: OpenBroker, tmp_path: Path) -> Broker:
    """A broker whose one partition holds 20 records, all consumed, in its active segment, on
    a volume past its watermark (publishes are refused)."""
    (tmp_path / "data").mkdir()
    watermark = over_the_watermark(tmp_path / "data")
    b = await open_broker(retention_age=None, disk_high_watermark=watermark)
    await b.create_topic("t", 1)
    assert b.disk is not None
    b.disk.high_watermark = 1.0
    await fill(b, "t", 20)
    assert await consume(b, "t") == list(range(20))
    b.disk.high_watermark = watermark
    return b


async def crash(b: Broker, data: Path) -> None:
    """Leave ``data`` as a crash of ``b`` now would: copy it, close ``b``, put the copy back."""
    snapshot = shutil.copytree(data, data.with_name("snapshot"))
    await b.close()
    shutil.rmtree(data)
    snapshot.rename(data)


async def test_under_pressure_a_wholly_consumed_partition_rolls_and_goes_at_once(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await consumed_past_the_watermark(open_broker, tmp_path)
    # Publishes are refused: no append will come to roll the active segment, so it rolls now
    # (an empty file holds the partition's end) and goes in the same round.
    with pytest.raises(DiskFullError):
        await b.publish("t", [("k", value(20))])
    await b.maintain()
    assert files(tmp_path, "t") == ["00000000000000000020.log"]
    assert (tmp_path / "data/topics/t/partitions/0000/00000000000000000020.log").stat().st_size == 0
    assert open_deleted_logs() == []  # its blocks went back to the volume
    # A crash now (the files as they are; the log still holds the 20 records): the empty
    # file keeps the partition's end offset.
    await crash(b, tmp_path / "data")
    b = await open_broker(retention_age=None)
    stats = b.topic_stats("t").partition_stats[0]
    assert stats.start_offset == 20 and b.topic("t").logs[0].next_offset == 20
    assert await b.publish("t", [("k", value(20))]) == [(0, 20)]
    assert await consume(b, "t") == [20]


async def test_after_an_immediate_roll_a_failed_write_keeps_the_empty_file(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await consumed_past_the_watermark(open_broker, tmp_path)
    await b.maintain()
    assert files(tmp_path, "t") == ["00000000000000000020.log"]
    assert b.disk is not None
    b.disk.high_watermark = 1.0
    await b.publish("t", [("k", value(20))])
    with Faults() as faults:  # the first write to the empty file fails
        faults.fail("write", "*/00000000000000000020.log", errno.ENOSPC)
        b.topic("t").logs[0].write_out()
    # The file, the only one left, stays: it tells a restart where the partition ends.
    assert files(tmp_path, "t") == ["00000000000000000020.log"]
    await crash(b, tmp_path / "data")
    b = await open_broker(retention_age=None)
    assert await consume(b, "t") == [20]


async def test_retention_keeps_the_file_before_a_segment_a_failed_write_left_without_one(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker(segment_bytes=512, retention_age=None, retention_bytes=0)
    await b.create_topic("t", 1)
    await fill(b, "t", 20)  # several segments, all in their files
    for i in range(20, 30):  # rolls to segments whose frames are still buffered
        await b.publish("t", [("k", value(i))])
    plog = b.topic("t").logs[0]
    assert plog.pending_bytes > 0
    assert await consume(b, "t") == list(range(30))
    with Faults() as faults:  # no segment file can be written: the disk is full
        faults.fail("open", "*/partitions/0000/*.log", errno.ENOSPC, times=None)
        faults.fail("write", "*/partitions/0000/*.log", errno.ENOSPC, times=None)
        await b.maintain()
    assert plog.write_error is not None
    # Consumed segments went, but not the one before the first segment with no file: the
    # files must always tell a restart where the partition ends.
    on_disk = set(files(tmp_path, "t"))
    first_missing = next(k for k, seg in enumerate(plog.segments) if seg.path.name not in on_disk)
    assert first_missing > 0 and plog.segments[first_missing - 1].path.name in on_disk
    await b.maintain()  # room again: the frames are written and the rest may go
    assert plog.write_error is None and all(seg.path.exists() for seg in plog.segments)


def open_deleted_logs() -> list[str]:
    """Deleted segment files this process still holds open (their blocks stay allocated)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith(".log (deleted)"):
                out.append(target)
    return out


async def test_a_roll_whose_directory_fsync_fails_fails_the_topic_and_deletes_nothing(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    watermark = over_the_watermark(tmp_path / "data")
    b = await open_broker(retention_age=None, disk_high_watermark=watermark)
    await b.create_topic("t", 2)
    assert b.disk is not None
    b.disk.high_watermark = 1.0
    await b.publish("t", [(f"k{i}", value(i)) for i in range(40)])
    for plog in b.topic("t").logs:
        plog.write_out()
    assert len(await consume(b, "t")) == 40
    before = sorted(p.name for p in (tmp_path / "data/topics/t/partitions").glob("*/*.log"))
    assert len(before) == 2
    b.disk.high_watermark = watermark
    with Faults() as faults:
        faults.fail("fsync", "*/partitions/0001", errno.EIO)
        await b.maintain()
    assert b.failure is not None
    after = sorted(p.name for p in (tmp_path / "data/topics/t/partitions").glob("*/*.log"))
    assert set(before) <= set(after)  # nothing of the failed topic was deleted
    assert [len(plog.segments) for plog in b.topic("t").logs][1] == 1  # its roll undone


async def test_the_disk_is_checked_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock(0.0)
    watch = DiskWatch(tmp_path, 0.9, interval=0.1, clock=clock)
    first = watch.usage()
    assert watch.usage() is first  # cached: no statvfs per call
    clock.advance(0.1)
    assert watch.usage() is not first
    assert watch.usage().capacity > 0


async def test_bytes_published_since_the_last_check_count_toward_the_watermark(
    open_broker: OpenBroker,
) -> None:
    # The volume is read once: no statvfs sees what follows, yet the watermark holds, as it
    # must when publishes outrun the interval between two checks.
    b = await open_broker(disk_high_watermark=0.99, disk_check_interval=3600.0)
    await b.create_topic("t", 1)
    assert b.disk is not None
    room = 256 * 1024
    usage = b.disk.refresh()
    b.disk.high_watermark = (usage.used + room) / usage.capacity
    batch = [("k", value(i)) for i in range(100)]
    accepted = 0
    with pytest.raises(DiskFullError) as info:
        for _ in range(1000):  # far more than the room holds
            await b.publish("t", batch)
            accepted += 1
    frame_bytes = b.topic("t").logs[0].segments[-1].size
    assert accepted > 0
    # Refused at the watermark: twice the frames (the log's copy and the partition file's)
    # fit the room, and one more batch would not have.
    assert 2 * frame_bytes <= room + 2 * frame_bytes // accepted
    assert 2 * frame_bytes * (accepted + 1) // accepted >= room
    assert info.value.used_bytes >= info.value.watermark_bytes
    assert b.disk.usage() is usage  # still the one reading


async def test_a_broker_opening_past_its_watermark_makes_room_before_it_serves(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker(segment_bytes=512, retention_age=None)
    await b.create_topic("t", 1)
    await fill(b, "t", 40)
    assert await consume(b, "t", most=30) == list(range(30))
    segments = len(files(tmp_path, "t"))
    await b.close()
    # The background rounds wait an hour: only the round at open can delete anything.
    watermark = over_the_watermark(tmp_path / "data")
    b = await open_broker(
        segment_bytes=512,
        retention_age=None,
        maintenance_interval=3600.0,
        disk_high_watermark=watermark,
    )
    assert len(files(tmp_path, "t")) < segments
    assert b.topic_stats("t").partition_stats[0].start_offset > 0
    assert await consume(b, "t") == list(range(30, 40))


async def test_frames_the_partitions_still_buffer_count_as_used(open_broker: OpenBroker) -> None:
    b = await open_broker(disk_high_watermark=0.99, disk_check_interval=3600.0)
    await b.create_topic("t", 2)
    assert b.disk is not None
    await b.publish("t", [(f"k{i}", value(i)) for i in range(200)])  # buffered, not written
    pending = sum(plog.pending_bytes for plog in b.topic("t").logs)
    assert pending > 0
    usage = b.disk.refresh()  # a statvfs does not see them
    assert b.disk.used() == usage.used + pending
    # Full only because of them: retention's measure counts them too, and the round writes
    # them out first, so the files hold what the watermark counted.
    b.disk.high_watermark = (usage.used + pending // 2) / usage.capacity
    assert b.disk.full and b.disk.excess() > 0
    await b.maintain()
    assert sum(plog.pending_bytes for plog in b.topic("t").logs) == 0

"""Disk faults injected through the core's file seam: nothing acknowledged is ever lost.

The rule under test (docs/broker.md, "Storage errors"): a write or fsync error is never retried
on the same file and never followed by deleting log segments. A failed partition-file write
keeps its frames and goes on in a new segment file; any other failure (the write-ahead log, a
group journal, a checkpoint) fails the topic, and the restart replays the durable log.

A crash is simulated as in ``test_wal``: the data directory is copied while the broker runs.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from telemetry_mq import Broker, StorageError
from telemetry_mq.faults import Faults
from telemetry_mq.protocol import PREFIX
from telemetry_mq.wal import CHECKPOINT, SUFFIX

from ..conftest import OpenBroker


@pytest.fixture
def faults() -> Iterator[Faults]:
    with Faults() as f:
        yield f


def value(i: int) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * 40})


def topic_dir(data: Path, topic: str = "t") -> Path:
    return data / "topics" / topic


def wal_files(data: Path) -> list[Path]:
    return sorted((topic_dir(data) / "wal").glob(f"*{SUFFIX}"))


def checkpointed(data: Path) -> list[int]:
    offsets: list[int] = orjson.loads((topic_dir(data) / CHECKPOINT).read_bytes())["offsets"]
    return offsets


def partition_files(data: Path, p: int) -> list[Path]:
    return sorted((topic_dir(data) / "partitions" / f"{p:04d}").glob("*.log"))


def frames_in(data: Path, p: int) -> int:
    """How many whole frames the partition's segment files hold, in all."""
    n = 0
    for seg in partition_files(data, p):
        raw = seg.read_bytes()
        pos = 0
        while pos + PREFIX.size <= len(raw):
            size, _ = PREFIX.unpack_from(raw, pos)
            if pos + PREFIX.size + size > len(raw):
                break
            pos += PREFIX.size + size
            n += 1
    return n


async def publish(b: Broker, start: int, n: int, keys: int = 6) -> list[tuple[int, int]]:
    return await b.publish("t", [(f"k{i % keys}", value(i)) for i in range(start, start + n)])


async def read_all(b: Broker, group: str = "g") -> set[bytes]:
    """Every value ``group`` has not acked yet (and acks them)."""
    out: set[bytes] = set()
    while batches := await b.fetch_many("t", group, max_records=1000):
        for batch in batches:
            out.update(d.value for d in batch.records)
            await b.ack("t", group, batch.lease)
    return out


async def settle(b: Broker) -> None:
    """Wait for the running checkpoint, if any."""
    for t in b.topics.values():
        if t.checkpointer is not None:
            await t.checkpointer


async def crash(b: Broker, data: Path) -> None:
    """Leave ``data`` as a crash of ``b`` now would: copy it, close ``b``, put the copy back."""
    await settle(b)
    snapshot = data.with_name("snapshot")
    shutil.copytree(data, snapshot)
    await b.close()
    shutil.rmtree(data)
    snapshot.rename(data)


def lose_unsynced_writes(data: Path, offsets: list[int]) -> None:
    """A power cut: each partition keeps only the frames below its checkpointed offset."""
    for p, keep in enumerate(offsets):
        n = 0
        for seg in partition_files(data, p):
            raw = seg.read_bytes()
            pos = 0
            while pos < len(raw) and n < keep:
                size, _ = PREFIX.unpack_from(raw, pos)
                pos += PREFIX.size + size
                n += 1
            seg.write_bytes(raw[:pos])


async def publish_on_a_full_disk(b: Broker, faults: Faults, start: int, end: int) -> None:
    """Fill the disk for the partition files, then publish ``start`` to ``end`` in batches of
    100, each one's checkpoint awaited."""
    faults.fail("write", "*/partitions/*.log", errno.ENOSPC, times=None)
    for first in range(start, end, 100):
        await publish(b, first, 100)
        await settle(b)


# -- topic names and topic creation --------------------------------------------------------


async def test_a_topic_named_like_a_creation_survives_a_restart(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("x.creating", 1)
    assert await b.publish("x.creating", [("k", b'{"n":1}')]) == [(0, 0)]
    await b.close()
    b = await open_broker()
    batch = await b.fetch("x.creating", "g")
    assert batch is not None and [d.value for d in batch.records] == [b'{"n":1}']


async def test_unfinished_topic_creations_are_removed_at_start(
    open_broker: OpenBroker, tmp_path: Path
) -> None:
    b = await open_broker()
    await b.create_topic("kept.creating", 1)
    await b.close()
    topics = tmp_path / "data" / "topics"
    (topics / ".creating-new").mkdir()  # this version's unfinished creation
    legacy = topics / "old.creating"  # an earlier version's: topic.json names "old"
    legacy.mkdir()
    (legacy / "topic.json").write_bytes(b'{"name": "old", "partitions": 1, "format": 1}')
    b = await open_broker()
    assert sorted(b.topics) == ["kept.creating"]
    assert sorted(p.name for p in topics.iterdir()) == ["kept.creating"]


async def test_a_new_topic_is_durable_before_its_directory_is_renamed(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults
) -> None:
    b = await open_broker()
    await b.create_topic("t", 2)
    calls = faults.calls
    topics = tmp_path / "data" / "topics"
    (rename,) = [
        i for i, c in enumerate(calls) if c.op == "replace" and Path(c.path).parent == topics
    ]
    tmp = calls[rename].path  # the directory built, then renamed to topics/t
    meta = max(i for i, c in enumerate(calls) if c.op == "fsync" and c.path == f"{tmp}/topic.json")
    dir_syncs = [i for i, c in enumerate(calls) if c.op == "fsync" and c.path == tmp]
    assert any(meta < i < rename for i in dir_syncs), "topic.json's entry is durable first"
    parts = [i for i, c in enumerate(calls) if c.op == "fsync" and c.path == f"{tmp}/partitions"]
    assert parts and parts[-1] < rename, "the partition directories' entries too"
    topics_sync = [i for i, c in enumerate(calls) if c.op == "fsync" and c.path == str(topics)]
    assert topics_sync and topics_sync[-1] > rename


async def test_a_failed_topic_creation_answers_a_storage_error_and_leaves_nothing(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults
) -> None:
    b = await open_broker()
    faults.fail("open", "*/.creating-t/topic.json", errno.ENOSPC)
    with pytest.raises(StorageError, match="No space left"):
        await b.create_topic("t", 2)
    assert "t" not in b.topics
    await b.create_topic("t", 2)  # works once there is room
    assert len(await b.publish("t", [("k", b"1")])) == 1
    await b.close()
    b = await open_broker()
    assert sorted(p.name for p in (tmp_path / "data" / "topics").iterdir()) == ["t"]


# -- a failed partition-file write (defect 2) ------------------------------------------------


@pytest.mark.parametrize(
    ("nth", "code", "partial"),
    [
        (1, errno.ENOSPC, None),  # the segment's very first write: its file is replaced
        (3, errno.EIO, None),  # after frames were written: the segment is split
        (3, errno.ENOSPC, 100),  # a short write, then ENOSPC: the partial frames go
    ],
    ids=["enospc-first-write", "eio-later-write", "short-write"],
)
async def test_a_failed_partition_write_loses_nothing(
    open_broker: OpenBroker,
    tmp_path: Path,
    faults: Faults,
    nth: int,
    code: int,
    partial: int | None,
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=8192, segment_bytes=64 * 1024)
    await b.create_topic("t", 2)
    fault = faults.fail("write", "*/partitions/0000/*.log", code, nth=nth, partial=partial)
    published: set[bytes] = set()
    for start in range(0, 3000, 100):  # rolls and checkpoints on the way
        await publish(b, start, 100)
        published.update(value(i) for i in range(start, start + 100))
        await settle(b)
        # No checkpoint ever claims frames the partition files do not hold.
        for p, offset in enumerate(checkpointed(data)):
            assert frames_in(data, p) >= offset
    assert fault.fired == 1, "the fault was hit"
    assert b.failure is None, "a partition-file write error does not fail the topic"
    assert b.healthy is None
    assert await read_all(b) == published
    await b.close()
    b = await open_broker()
    assert await read_all(b, "after") == published


async def test_partition_writes_failing_for_a_while_keep_the_log_until_they_work(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=4096, segment_bytes=16 * 1024)
    await b.create_topic("t", 1)
    await publish(b, 0, 200)
    await settle(b)
    before = checkpointed(data)
    await publish_on_a_full_disk(b, faults, 200, 3200)
    plog = b.topic("t").logs[0]
    assert plog.write_error is not None and plog.written_offset < plog.next_offset
    assert checkpointed(data) == before, "no checkpoint passes the written frames"
    segments = {f.name for f in wal_files(data)}
    assert len(segments) > 5, "every log segment since stays"
    published = {value(i) for i in range(3200)}
    assert await read_all(b) == published  # from memory, the files and memory agree
    faults.clear()  # space was freed
    await publish(b, 3200, 100)
    await settle(b)
    assert plog.write_error is None and plog.written_offset == plog.next_offset
    await publish(b, 3300, 2000)  # a roll: the checkpoint goes through
    await settle(b)
    assert checkpointed(data)[0] > before[0]
    assert len(wal_files(data)) < len(segments)
    await b.close()
    b = await open_broker()
    assert await read_all(b, "after") == {value(i) for i in range(5300)}


async def test_a_restart_on_a_full_disk_opens_and_writes_the_frames_once_there_is_room(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=4096, segment_bytes=16 * 1024)
    await b.create_topic("t", 2)
    await publish(b, 0, 200)
    await settle(b)
    before = checkpointed(data)
    await publish_on_a_full_disk(b, faults, 200, 4200)
    await crash(b, data)
    kept = len(wal_files(data))
    assert checkpointed(data) == before and kept > 5
    # Still full: the replayed frames cannot reach the partition files. The broker opens all
    # the same (a restart must be able to heal a full disk), the frames in memory, however
    # many: the bound on them is for publishes, not for the replay.
    monkeypatch.setattr("telemetry_mq.log.UNWRITTEN_LIMIT", 1024)
    b = await open_broker(maintenance_interval=3600.0)
    plogs = b.topic("t").logs
    assert all(plog.write_error is not None for plog in plogs)
    assert b.healthy is None
    assert checkpointed(data) == before and len(wal_files(data)) == kept  # nothing deleted
    published = {value(i) for i in range(4200)}
    assert await read_all(b) == published
    # A retry that fails again holds no more memory: past the bound on what a partition
    # may hold unwritten, it still does not fail the topic.
    await b.maintain()
    assert b.failure is None and all(plog.write_error is not None for plog in plogs)
    faults.clear()  # room again: the next maintenance round writes them, then checkpoints
    await b.maintain()
    await settle(b)
    assert all(plog.write_error is None for plog in plogs)
    assert checkpointed(data) == [plog.next_offset for plog in plogs]
    assert len(wal_files(data)) < kept
    await crash(b, data)
    b = await open_broker()
    assert await read_all(b, "after") == published


async def test_frames_written_out_by_retention_still_get_their_checkpoint(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=4096, segment_bytes=4096)
    await b.create_topic("t", 1)
    await publish(b, 0, 100)
    await settle(b)
    await publish_on_a_full_disk(b, faults, 100, 1100)
    await crash(b, data)
    kept = len(wal_files(data))
    b = await open_broker(segment_bytes=4096, retention_bytes=0)  # consumed segments may go
    published = {value(i) for i in range(1100)}
    assert await read_all(b) == published
    faults.clear()
    # Retention writes the frames out itself on its way (deleting a segment writes out
    # first): the checkpoint the topic owes is taken all the same.
    await b.maintain()
    await settle(b)
    plog = b.topic("t").logs[0]
    assert plog.write_error is None
    assert checkpointed(data) == [plog.next_offset]
    assert len(wal_files(data)) < kept


async def test_a_file_that_cannot_be_cut_back_during_the_replay_keeps_the_broker_closed(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=1 << 20)
    await b.create_topic("t", 1)
    await publish(b, 0, 50)
    await crash(b, data)  # nothing checkpointed past the start: the restart replays all 50
    # The replay's write is cut short (bytes of a partial frame stay) and cutting them off
    # fails: writing after them would hide garbage behind a checkpoint.
    faults.fail("write", "*/partitions/*.log", errno.ENOSPC, partial=10)
    faults.fail("ftruncate", "*/partitions/*.log", errno.EIO, times=None)
    with pytest.raises(OSError):
        await open_broker()
    assert "back failed" in caplog.text
    faults.clear()
    b = await open_broker()
    assert await read_all(b) == {value(i) for i in range(50)}


async def test_a_file_that_cannot_be_cut_back_after_the_replay_keeps_the_broker_closed(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=1 << 20)
    await b.create_topic("t", 1)
    await publish(b, 0, 50)
    await crash(b, data)
    # The replay's write fails and is cut back; the checkpoint after it writes out again,
    # part of a frame gets in, and that cannot be cut back.
    faults.fail("write", "*/partitions/*.log", errno.ENOSPC)
    faults.fail("write", "*/partitions/*.log", errno.ENOSPC, partial=10)  # the next one
    faults.fail("ftruncate", "*/partitions/*.log", errno.EIO, nth=2)
    with pytest.raises(OSError):
        await open_broker()
    assert "back failed" in caplog.text
    faults.clear()
    b = await open_broker()
    assert await read_all(b) == {value(i) for i in range(50)}


async def test_no_room_for_checkpoint_json_changes_nothing_and_the_checkpoint_comes_later(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults
) -> None:
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=1 << 20)
    await b.create_topic("t", 1)
    await publish(b, 0, 50)
    await crash(b, data)  # the restart replays all 50, then checkpoints
    before, kept = checkpointed(data), wal_files(data)
    faults.fail("write", "*/checkpoint.tmp", errno.ENOSPC, times=None)
    # It opens; the round at open retries the checkpoint, which finds no room either: still
    # no failure, the old checkpoint and every log segment stay.
    b = await open_broker(maintenance_interval=3600.0)
    await settle(b)
    t = b.topic("t")
    assert b.failure is None and t.checkpoint_owed
    assert checkpointed(data) == before and wal_files(data) == kept
    assert await read_all(b) == {value(i) for i in range(50)}
    faults.clear()
    await b.maintain()
    await settle(b)
    assert checkpointed(data) == [50] and not t.checkpoint_owed
    assert wal_files(data) == []


async def test_frames_held_in_memory_are_bounded(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("telemetry_mq.log.UNWRITTEN_LIMIT", 16 * 1024)
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=1 << 20)
    await b.create_topic("t", 1)
    faults.fail("write", "*/partitions/*.log", errno.ENOSPC, times=None)
    acked: set[bytes] = set()
    with pytest.raises(StorageError):
        for start in range(0, 100_000, 100):
            await publish(b, start, 100)
            acked.update(value(i) for i in range(start, start + 100))
    assert b.failure is not None
    assert 16 * 1024 < len(acked) * len(value(0)) < 1 << 20  # failed soon past the bound
    await crash(b, data)
    faults.clear()
    b = await open_broker()
    assert acked <= await read_all(b)


# -- fsync errors and short writes on the write-ahead log (defect 3) -------------------------


async def test_a_failed_checkpoint_fsync_fails_the_topic_and_keeps_the_log(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults
) -> None:
    """After an EIO the kernel may have dropped the pages and reports success next time:
    the checkpoint must never be retried, nor the log segments it would delete."""
    data = tmp_path / "data"
    b = await open_broker(wal_segment_bytes=4096)
    await b.create_topic("t", 2)
    await publish(b, 0, 100)
    await settle(b)
    fault = faults.fail("fdatasync", "*/partitions/*.log", errno.EIO)
    acked: set[bytes] = set()
    start = 0
    async with asyncio.timeout(30):
        while not fault.fired:  # until a checkpoint hit the fault
            await publish(b, start, 50)
            acked.update(value(i) for i in range(start, start + 50))
            start += 50
            await settle(b)
    last_good = checkpointed(data)
    with pytest.raises(StorageError):
        await publish(b, start, 50)  # never acknowledged over a hole
    with pytest.raises(StorageError):
        await b.fetch("t", "g")
    assert b.failure is not None and "'t'" in str(b.failure)
    assert b.healthy == str(b.failure)
    await crash(b, data)
    assert checkpointed(data) == last_good
    # The pages the failed fsync could not write are gone after a power cut.
    lose_unsynced_writes(data, last_good)
    b = await open_broker()
    assert await read_all(b) == acked | {value(i) for i in range(100)}


@pytest.mark.parametrize("helper", [True, False], ids=["helper", "threads"])
async def test_an_fsync_error_on_the_log_is_never_retried(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, helper: bool
) -> None:
    b = await open_broker(fsync_helper=helper, fsync="interval", fsync_interval=3600)
    await b.create_topic("t", 1)
    await publish(b, 0, 10)  # acknowledged after the write (the interval policy)
    faults.fail("fdatasync", "*.wal", errno.EIO)
    await b._committer.sync([b.topic("t").wal])  # the interval's fsync fails
    # The next cycle must not fsync again and trust it (the kernel reports an error once).
    with pytest.raises(StorageError):
        await publish(b, 10, 10)
    assert len(faults.calls_to("fdatasync", "*.wal")) == 1
    assert b.failure is not None


@pytest.mark.parametrize("helper", [True, False], ids=["helper", "threads"])
async def test_a_short_log_write_is_never_appended_after(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, helper: bool
) -> None:
    data = tmp_path / "data"
    b = await open_broker(fsync_helper=helper)
    await b.create_topic("t", 2)  # keys k0-k3 go to partition 1, k4 and k5 to partition 0
    first = [(f"k{i}", value(i)) for i in range(6)]
    await b.publish("t", first)
    faults.fail("write", "*.wal", errno.ENOSPC, partial=10)
    with pytest.raises(StorageError):
        await b.publish("t", [("k4", value(100))])
    with pytest.raises(StorageError):  # the other partition: nothing goes after the bytes
        await b.publish("t", [("k0", value(101))])
    assert not faults.calls_to("fdatasync", "*.wal"), "nothing fsynced after the error"
    await crash(b, data)
    b = await open_broker()
    assert await read_all(b) == {v for _, v in first}
    assert await b.publish("t", [("k0", value(102))]) == [(1, 4)]


async def test_records_of_a_failed_commit_never_become_readable(
    open_broker: OpenBroker, faults: Faults
) -> None:
    """A publish appended while a failing commit is in flight must not make it visible."""
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish(b, 0, 3)  # opens the log segment (the thread path)
    await publish(b, 3, 3)
    syncer = b._committer._syncer
    assert syncer is not None and syncer.alive
    faults.fail("fdatasync", "*.wal", errno.EIO)
    os.kill(syncer.pid, signal.SIGSTOP)  # hold the helper's answer
    try:
        first = asyncio.create_task(publish(b, 100, 3))
        async with asyncio.timeout(10):
            while not syncer._waiting:
                await asyncio.sleep(0.001)
        second = asyncio.create_task(publish(b, 200, 3))  # appended during the cycle
        log = b.topic("t").logs[0]
        async with asyncio.timeout(10):
            while log.next_offset < 12:
                await asyncio.sleep(0.001)
    finally:
        os.kill(syncer.pid, signal.SIGCONT)
    for task in (first, second):
        with pytest.raises(StorageError):
            await task
    assert log.durable_offset == 6, "neither commit's records became readable"


# -- group journals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "partial"), [("write", 5), ("fdatasync", None)], ids=["short-write", "fsync"]
)
async def test_a_failed_journal_commit_fails_the_topic(
    open_broker: OpenBroker, tmp_path: Path, faults: Faults, op: str, partial: int | None
) -> None:
    data = tmp_path / "data"
    b = await open_broker()
    await b.create_topic("t", 1)
    await publish(b, 0, 20)
    batch = await b.fetch("t", "g", max_records=5)
    assert batch is not None
    await b.ack("t", "g", batch.lease)  # offsets 0-4: acked durably
    batch = await b.fetch("t", "g", max_records=5)
    assert batch is not None
    faults.fail(op, "*/groups/g.journal", errno.EIO, partial=partial)
    with pytest.raises(StorageError):
        await b.ack("t", "g", batch.lease)
    with pytest.raises(StorageError):  # no later ack is answered over the failed one
        await b.fetch("t", "g", max_records=5)
    assert b.failure is not None
    await crash(b, data)
    b = await open_broker()
    # The durable ack stays; the failed one may or may not have reached the disk (as a
    # publish answered with an error may be stored): its records come again, or not.
    committed = b.group_stats("t", "g").partitions[0].committed
    assert committed in (5, 10)
    assert await read_all(b) == {value(i) for i in range(committed, 20)}

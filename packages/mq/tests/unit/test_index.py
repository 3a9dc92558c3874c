"""The sparse position index: reads and byte positions below the in-memory tail, its memory."""

from __future__ import annotations

import errno
import itertools
import random

import orjson
import pytest
from telemetry_mq import Broker
from telemetry_mq.faults import Faults
from telemetry_mq.log import TAIL_RECORDS, PartitionLog
from telemetry_mq.protocol import FRAME_OVERHEAD
from telemetry_mq.segment import INDEX_BYTES

from ..conftest import OpenBroker


def values(n: int, seed: int) -> list[bytes]:
    """Records of very different sizes: a few bytes, a few hundred, and some past INDEX_BYTES."""
    rng = random.Random(seed)
    sizes = [1, 30, 300, 900, INDEX_BYTES + 500]
    return [orjson.dumps({"i": i, "pad": "x" * rng.choice(sizes)}) for i in range(n)]


async def publish_all(b: Broker, vals: list[bytes]) -> list[int]:
    """Publish ``vals`` to the one partition of "t"; the cumulative position of each record."""
    for i in range(0, len(vals), 250):
        await b.publish("t", [("k", v) for v in vals[i : i + 250]])
    pos, out = 0, []
    for v in vals:
        out.append(pos)
        pos += FRAME_OVERHEAD + 1 + len(v)  # key "k"
    return [*out, pos]


def check_reads(plog: PartitionLog, vals: list[bytes], expected_pos: list[int]) -> None:
    """Every position, and reads from many starts with record and byte limits, are exact."""
    n = len(vals)
    assert plog.end_pos == expected_pos[n]
    for offset in [*range(0, n, 7), n - 1, n]:
        assert plog.pos(offset) == expected_pos[offset], offset
    rng = random.Random(7)
    for _ in range(300):
        start = rng.randrange(n)
        max_records = rng.choice([1, 3, 50, 1000])
        max_bytes = rng.choice([1, 500, 5000, 100_000, 1 << 40])
        got = plog.read(start, max_records, max_bytes)
        assert got, (start, max_records, max_bytes)
        assert [r[0] for r in got] == list(range(start, start + len(got)))
        assert [r[3] for r in got] == vals[start : start + len(got)]
        assert len(got) <= max_records
        end = start + len(got)
        # Within the byte budget, or a single record that alone is larger.
        assert expected_pos[end] - expected_pos[start] <= max_bytes or len(got) == 1
        # The budget is used: one more record would not have fitted (a read stops at the end
        # of a segment, and a read from the files at the in-memory tail).
        seg_end = next(s.end_offset for s in plog.segments if s.base_offset <= start < s.end_offset)
        limit = min(seg_end, n if start >= plog._tail_start else plog._tail_start)
        if len(got) < max_records and end < limit:
            assert expected_pos[end + 1] - expected_pos[start] > max_bytes
    offsets = sorted(rng.sample(range(n), 200))
    assert [r[3] for r in plog.read_offsets(offsets)] == [vals[o] for o in offsets]


async def test_positions_and_reads_are_exact_below_the_tail(open_broker: OpenBroker) -> None:
    b = await open_broker(segment_bytes=256 * 1024)
    await b.create_topic("t", 1)
    vals = values(TAIL_RECORDS * 3, seed=1)
    expected = await publish_all(b, vals)
    plog = b.topic("t").logs[0]
    assert len(plog.segments) > 3
    assert plog.start_offset == 0 and plog.next_offset == len(vals)
    check_reads(plog, vals, expected)
    await b.close()
    b = await open_broker(segment_bytes=256 * 1024)  # the index rebuilt by recovery
    check_reads(b.topic("t").logs[0], vals, expected)


async def test_index_memory_is_per_kib_of_log_not_per_record(open_broker: OpenBroker) -> None:
    """Small records: the index holds one 8-byte entry per 4 KiB, not 8 bytes per record."""
    b = await open_broker(segment_bytes=1024 * 1024)
    await b.create_topic("t", 1)
    n = 100_000
    for i in range(0, n, 1000):
        await b.publish("t", [("k", b"%d" % j) for j in range(i, i + 1000)])
    plog = b.topic("t").logs[0]
    log_bytes = plog.end_pos
    per_entry = 8
    bound = per_entry * (log_bytes // INDEX_BYTES + 2 * len(plog.segments)) + 8 * TAIL_RECORDS
    assert plog.index_bytes <= bound
    assert plog.index_bytes < n  # under a byte per record (a dense index: 8 per record)
    assert plog.read(10, 1, 1 << 20)[0][3] == b"10"
    await b.close()
    b = await open_broker(segment_bytes=1024 * 1024)
    plog = b.topic("t").logs[0]
    assert plog.index_bytes <= per_entry * (log_bytes // INDEX_BYTES + 2 * len(plog.segments))
    assert plog.read(n - 5, 5, 1 << 20)[4][3] == b"%d" % (n - 1)


async def test_a_segment_split_by_a_failed_write_keeps_exact_positions(
    open_broker: OpenBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A write error in the middle of a segment ends it there (``PartitionLog._split``): the
    index entries past the cut move to the new segment, rebased, and every position below the
    tail stays exact, before and after a restart."""
    b = await open_broker(segment_bytes=1024 * 1024, wal_segment_bytes=64 * 1024)
    await b.create_topic("t", 1)
    vals = values(TAIL_RECORDS * 3, seed=2)
    with Faults() as faults:
        fault = faults.fail("write", "*/partitions/0000/*.log", errno.EIO, nth=3)
        for i in range(0, len(vals), 50):
            await b.publish("t", [("k", v) for v in vals[i : i + 50]])
            for t in b.topics.values():  # let each checkpoint write its chunks
                if t.checkpointer is not None:
                    await t.checkpointer
    assert fault.fired == 1
    assert "continues in" in caplog.text, "the failed write split a segment"
    expected = list(itertools.accumulate((FRAME_OVERHEAD + 1 + len(v) for v in vals), initial=0))
    plog = b.topic("t").logs[0]
    first = plog.segments[0]
    assert 0 < first.size < 1024 * 1024 // 2, "the first segment ended at the failed write"
    assert plog.segments[1].base_pos == first.size
    check_reads(plog, vals, expected)
    await b.close()
    b = await open_broker(segment_bytes=1024 * 1024)
    check_reads(b.topic("t").logs[0], vals, expected)

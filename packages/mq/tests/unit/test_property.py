"""Property: random publish / fetch / ack / nack / expiry / restart / power-failure sequences
lose nothing.

Checked after every step and at the end: every acknowledged publish is eventually delivered
with the value it was published with, offsets are contiguous and increasing per partition, an
acked record is never delivered again, and committed offsets never go back (even across a
restart). Time is a manual clock: no sleeps.

In the suite the test is deterministic and short (``derandomize``: the same examples on every
run). ``task test:property`` runs the long, randomized version: set ``MQ_PROPERTY_EXAMPLES``
(and optionally ``pytest --hypothesis-seed=N`` to replay the seed a failure printed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)
from telemetry_mq import Batch, Broker, BrokerConfig, LeaseExpiredError
from telemetry_mq.protocol import PREFIX
from telemetry_mq.wal import CHECKPOINT

from ..conftest import Clock

PARTITIONS = 3
ACK_WAIT = 10.0


class BrokerMachine(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="mq-prop-"))
        self.clock = Clock()
        self.config = BrokerConfig(
            maintenance_interval=None, max_deliveries=4, segment_bytes=300, wal_segment_bytes=600
        )
        self.broker = self.run(self._open())
        self.run(self.broker.create_topic("t", PARTITIONS))
        self.published: dict[tuple[int, int], bytes] = {}  # acknowledged publishes
        self.acked: set[tuple[int, int]] = set()
        self.committed = [0] * PARTITIONS
        self.seq = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> Broker:
        return await Broker.open(self.dir, self.config, clock=self.clock)

    def teardown(self) -> None:
        try:
            self.drain()
        finally:
            self.run(self.broker.close())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def check_batch(self, batch: Batch) -> None:
        offsets = [d.offset for d in batch.records]
        assert offsets == sorted(set(offsets)), "offsets within a batch increase"
        for d in batch.records:
            pos = (batch.partition, d.offset)
            assert pos in self.published, f"{pos} was never published"
            assert d.value == self.published[pos], f"{pos} changed"
            assert pos not in self.acked, f"{pos} delivered again after its ack"
            assert pos not in self.dead_letters(), f"{pos} delivered after its dead-lettering"
            assert d.delivery_count >= 1

    def drain(self) -> None:
        """Consume everything left; with the acks and dead letters it must be everything."""
        self.clock.advance(ACK_WAIT + 1)
        while (batch := self.run(self.broker.fetch("t", "g", max_records=50))) is not None:
            self.check_batch(batch)
            self.run(self.broker.ack("t", "g", batch.lease))
            self.acked.update((batch.partition, d.offset) for d in batch.records)
        dead = self.dead_letters()
        assert len(dead) == len(set(dead)), "dead-lettered twice without a crash"
        assert not self.acked & set(dead), "a record was both acked and dead-lettered"
        assert self.acked | set(dead) == set(self.published), "an acknowledged publish was lost"

    def dead_letters(self) -> list[tuple[int, int]]:
        """Origins of the records in ``t.dlq``, read straight from its log."""
        if "t.dlq" not in self.broker.topics:
            return []
        plog = self.broker.topic("t.dlq").logs[0]
        origins: list[tuple[int, int]] = []
        offset = 0
        while records := plog.read(offset, 1000, 1 << 30):
            for _, _, _, value in records:
                envelope = orjson.loads(value)
                origin = (envelope["origin"]["partition"], envelope["origin"]["offset"])
                assert orjson.dumps(envelope["value"]) == self.published[origin]
                origins.append(origin)
            offset = records[-1][0] + 1
        return origins

    @rule(keys=st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=12))
    def publish(self, keys: list[str]) -> None:
        records = []
        for k in keys:
            records.append((k, orjson.dumps({"seq": self.seq})))
            self.seq += 1
        positions = self.run(self.broker.publish("t", records))
        for (_, v), (p, o) in zip(records, positions, strict=True):
            expected = sum(1 for q, _ in self.published if q == p)
            assert o == expected, f"partition {p}: offset {o}, expected {expected} (no skip)"
            self.published[(p, o)] = v

    @rule(target=leases, max_records=st.integers(1, 20))
    def fetch(self, max_records: int) -> Batch | None:
        batch: Batch | None = self.run(
            self.broker.fetch("t", "g", max_records=max_records, ack_wait=ACK_WAIT)
        )
        if batch is not None:
            self.check_batch(batch)
        return batch

    def _settle(self, batch: Batch | None, action: str, subset: bool) -> None:
        if batch is None:
            return
        offsets = [d.offset for d in batch.records][::2] if subset else None
        try:
            if action == "ack":
                self.run(self.broker.ack("t", "g", batch.lease, offsets))
                done = offsets if offsets is not None else [d.offset for d in batch.records]
                self.acked.update((batch.partition, o) for o in done)
            elif action == "reject":
                self.run(self.broker.reject("t", "g", batch.lease, offsets, error="bad"))
            else:
                self.run(self.broker.nack("t", "g", batch.lease, offsets))
        except LeaseExpiredError:
            pass  # expired or lost in a restart: those records come again

    @rule(batch=consumes(leases), subset=st.booleans())
    def ack(self, batch: Batch | None, subset: bool) -> None:
        self._settle(batch, "ack", subset)

    @rule(batch=consumes(leases), subset=st.booleans())
    def nack(self, batch: Batch | None, subset: bool) -> None:
        self._settle(batch, "nack", subset)

    @rule(batch=consumes(leases), subset=st.booleans())
    def reject(self, batch: Batch | None, subset: bool) -> None:
        self._settle(batch, "reject", subset)

    @rule(seconds=st.sampled_from([1.0, ACK_WAIT, ACK_WAIT + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.seq > 0)
    @rule()
    def restart(self) -> None:
        self.run(self.broker.close())
        self.broker = self.run(self._open())

    @precondition(lambda self: self.seq > 0)
    @rule()
    def power_failure(self) -> None:
        """What a power cut leaves: every fsynced byte, and no partition write since the
        last checkpoint (those are not fsynced; the write-ahead log must bring them back)."""
        for t in self.broker.topics.values():  # a stable copy: no checkpoint half-way
            if t.checkpointer is not None:
                self.run(t.checkpointer)
        snapshot = self.dir.with_name(self.dir.name + "-snapshot")
        shutil.copytree(self.dir, snapshot)
        self.run(self.broker.close())
        shutil.rmtree(self.dir)
        snapshot.rename(self.dir)
        for topic in (self.dir / "topics").iterdir():
            durable = orjson.loads((topic / CHECKPOINT).read_bytes())["offsets"]
            for p, keep in enumerate(durable):
                for seg in sorted((topic / "partitions" / f"{p:04d}").glob("*.log")):
                    base = int(seg.name.removesuffix(".log"))
                    raw = seg.read_bytes()
                    pos = 0
                    for _ in range(max(0, keep - base)):
                        if pos >= len(raw):
                            break
                        pos += PREFIX.size + PREFIX.unpack_from(raw, pos)[0]
                    seg.write_bytes(raw[:pos])
        self.broker = self.run(self._open())

    @invariant()
    def committed_offsets_never_go_back(self) -> None:
        if "g" not in self.broker.topic("t").groups:
            return
        now = [p.committed for p in self.broker.group_stats("t", "g").partitions]
        assert all(a <= b for a, b in zip(self.committed, now, strict=True)), (self.committed, now)
        done = self.acked | set(self.dead_letters())
        for p, c in enumerate(now):
            assert all((p, o) in done for o in range(c)), "committed past an unsettled record"
        self.committed = now


_LONG_EXAMPLES = os.environ.get("MQ_PROPERTY_EXAMPLES")

TestBrokerProperties = BrokerMachine.TestCase
TestBrokerProperties.settings = settings(
    # Short and fixed in the suite; long and random (seed printed on failure) when asked.
    max_examples=int(_LONG_EXAMPLES) if _LONG_EXAMPLES else 60,
    derandomize=not _LONG_EXAMPLES,
    database=None,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

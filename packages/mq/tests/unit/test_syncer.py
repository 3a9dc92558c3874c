"""The fsync helper process: answers, errors, its death (worker threads take over), its end."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from pathlib import Path

import pytest
from telemetry_mq import Broker
from telemetry_mq.commit import Committer
from telemetry_mq.syncer import SyncerGoneError, SyncProcess

from ..conftest import OpenBroker


async def _exited(syncer: SyncProcess, timeout: float = 10.0) -> None:
    """Wait (bounded) until the helper process has exited."""
    async with asyncio.timeout(timeout):
        await asyncio.to_thread(syncer._proc.wait)


async def test_fdatasync_of_each_descriptor_with_its_errno(tmp_path: Path) -> None:
    syncer = SyncProcess.start()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    r, w = os.pipe()  # fdatasync of a pipe fails with EINVAL
    try:
        os.write(fd, b"data")
        async with asyncio.timeout(10):
            results = await syncer.sync([fd, r])
        assert [e for e, _ in results] == [0, errno.EINVAL]
        assert all(seconds >= 0 for _, seconds in results)
    finally:
        for d in (fd, r, w):
            os.close(d)
        await syncer.close()
    assert syncer._proc.returncode == 0  # it left on its own when the socket closed
    with pytest.raises(SyncerGoneError):
        syncer.sync([0])


async def test_a_killed_helper_fails_its_waiters_with_syncer_gone(tmp_path: Path) -> None:
    syncer = SyncProcess.start()
    os.kill(syncer.pid, signal.SIGKILL)
    await _exited(syncer)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(SyncerGoneError):
            async with asyncio.timeout(10):
                await syncer.sync([fd])  # either the send or the answer tells
        assert not syncer.alive
    finally:
        os.close(fd)
        await syncer.close()


def _helper(broker: Broker) -> SyncProcess:
    syncer = broker._committer._syncer
    assert syncer is not None and syncer.alive
    return syncer


async def test_broker_publishes_and_acks_through_the_helper(open_broker: OpenBroker) -> None:
    seen: list[float] = []
    b = await open_broker()
    await b.create_topic("t", 1)
    b._committer._observe = seen.append
    for _ in range(3):  # the first write of each file opens it in a worker thread
        await b.publish("t", [("k", b'{"n":1}')])
        batch = await b.fetch("t", "g", max_records=10)
        assert batch is not None
        await b.ack("t", "g", batch.lease)
    syncer = _helper(b)
    before, requests = len(seen), syncer._ticket
    await b.publish("t", [("k", b'{"n":2}')])
    assert syncer._ticket == requests + 1  # this publish was made durable by the helper
    assert len(seen) == before + 1  # and its fsync time observed
    await b.close()
    assert syncer._proc.returncode == 0  # closing the broker stops its helper


async def test_losing_the_helper_loses_nothing(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 2)
    for i in range(5):
        await b.publish("t", [(f"k{i}", b'{"n":1}')])
    syncer = _helper(b)
    os.kill(syncer.pid, signal.SIGKILL)
    await _exited(syncer)
    # Publishes in flight when it died, and later ones, are fsynced by worker threads.
    positions = await asyncio.gather(*(b.publish("t", [(f"k{i}", b'{"n":2}')]) for i in range(20)))
    assert len(positions) == 20
    assert b._committer._syncer is None or not b._committer._syncer.alive
    await b.close()
    b2 = await open_broker()
    total = 0
    while (batch := await b2.fetch("t", "g", max_records=1000)) is not None:
        total += len(batch.records)
        await b2.ack("t", "g", batch.lease)
    assert total == 25


async def test_a_helper_dying_mid_cycle_hands_its_fsyncs_to_threads(
    open_broker: OpenBroker,
) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    for i in range(3):
        await b.publish("t", [("k", b'{"n":%d}' % i)])
    syncer = _helper(b)
    os.kill(syncer.pid, signal.SIGSTOP)  # the next fsync request stays unanswered
    publish = asyncio.create_task(b.publish("t", [("k", b'{"n":3}')]))
    async with asyncio.timeout(10):
        while not syncer._waiting:
            await asyncio.sleep(0.005)
    assert not publish.done()
    os.kill(syncer.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        assert await publish == [(0, 3)]
    assert b._committer._syncer is None  # later cycles use the worker threads
    assert await b.publish("t", [("k", b'{"n":4}')]) == [(0, 4)]


async def test_helper_fsync_error_fails_the_commit(tmp_path: Path) -> None:
    """A unit whose fdatasync fails (EINVAL on a pipe here; EIO on a bad disk) gets the error."""
    r, w = os.pipe()

    class PipeJob:
        inline = True
        synced_calls = 0

        def run(self, fsync: bool) -> float:
            raise AssertionError("an inline job runs on the loop")

        def write(self) -> int | None:
            os.write(w, b"x")
            return r

        def synced(self) -> None:
            PipeJob.synced_calls += 1

        def finish(self, error: BaseException | None) -> None:
            self.error = error

    class PipeUnit:
        def prepare(self) -> PipeJob:
            return PipeJob()

    committer = Committer(policy="always")
    committer.start()
    try:
        assert committer._syncer is not None
        fut = committer.request(PipeUnit())
        async with asyncio.timeout(10):
            with pytest.raises(OSError) as info:
                await fut
        assert info.value.errno == errno.EINVAL
        assert PipeJob.synced_calls == 0
    finally:
        await committer.close([])
        os.close(r)
        os.close(w)

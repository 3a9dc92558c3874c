"""The fsync helper process: answers, errors, its death (worker threads take over), its end."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
from telemetry_mq import Broker, _syncd
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


async def test_more_descriptors_than_one_request_carries(tmp_path: Path) -> None:
    syncer = SyncProcess.start()
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(150)]
    r, w = os.pipe()
    try:
        async with asyncio.timeout(10):
            results = await syncer.sync([*fds, r])  # three requests (at most 64 each)
        assert [e for e, _ in results] == [0] * 150 + [errno.EINVAL]  # in order
        assert syncer._ticket == 3
    finally:
        for fd in (*fds, r, w):
            os.close(fd)
        await syncer.close()


def test_the_helper_loop_answers_and_ends_at_end_of_file(tmp_path: Path) -> None:
    """``_syncd.serve``, run here in a thread (the helper process itself is not measured)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    helper = threading.Thread(target=_syncd.serve, args=(theirs,))
    helper.start()
    ours.settimeout(10)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    r, w = os.pipe()
    try:
        socket.send_fds(ours, [_syncd.TICKET.pack(7)], [fd, r])
        answer = ours.recv(1024)
        assert _syncd.TICKET.unpack_from(answer) == (7,)
        results = [
            _syncd.RESULT.unpack_from(answer, pos)
            for pos in range(_syncd.TICKET.size, len(answer), _syncd.RESULT.size)
        ]
        assert [e for e, _ in results] == [0, errno.EINVAL]
    finally:
        ours.close()  # end of file: the loop returns
        helper.join(10)
        theirs.close()
        for d in (fd, r, w):
            os.close(d)
    assert not helper.is_alive()


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
    answers = [await b.publish("t", [(f"k{i}", b'{"n":1}')]) for i in range(5)]
    syncer = _helper(b)
    os.kill(syncer.pid, signal.SIGKILL)
    await _exited(syncer)
    # Publishes in flight when it died, and later ones, are fsynced by worker threads.
    answers += await asyncio.gather(*(b.publish("t", [(f"k{i}", b'{"n":2}')]) for i in range(20)))
    assert all(len(answer) == 1 for answer in answers)  # each got its own position back
    positions = [pos for answer in answers for pos in answer]
    for p in (0, 1):  # distinct and gapless: every partition's offsets run 0, 1, 2, ...
        offsets = sorted(o for q, o in positions if q == p)
        assert offsets == list(range(len(offsets)))
    assert b._committer._syncer is not None and not b._committer._syncer.alive
    await b.close()
    b2 = await open_broker()
    total = 0
    while (batch := await b2.fetch("t", "g", max_records=1000)) is not None:
        total += len(batch.records)
        await b2.ack("t", "g", batch.lease)
    assert total == 25


async def test_a_commit_of_more_files_than_one_request_carries(open_broker: OpenBroker) -> None:
    b = await open_broker()
    await b.create_topic("t", 1)
    groups = [f"g{i}" for i in range(70)]
    await b.publish("t", [("k", b'{"n":1}')])
    for g in groups:  # each journal's first write opens its file (in a worker thread)
        batch = await b.fetch("t", g, max_records=10)
        assert batch is not None
    await b.publish("t", [("k", b'{"n":2}')])
    batches = await asyncio.gather(*(b.fetch("t", g, max_records=10) for g in groups))
    syncer = _helper(b)
    before = syncer._ticket
    async with asyncio.timeout(30):  # a commit the helper cannot take must not hang
        acked = await asyncio.gather(
            *(b.ack("t", g, batch.lease) for g, batch in zip(groups, batches, strict=True) if batch)
        )
    assert acked == [1] * 70
    assert syncer._ticket - before >= 2  # 70 journals: more than one request's worth
    await b.close()
    b2 = await open_broker()
    for g in groups:  # only the unacked first record of each group comes back
        batch = await b2.fetch("t", g, max_records=10)
        assert batch is not None and [d.offset for d in batch.records] == [0]


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
    assert not syncer.alive  # later cycles use the worker threads
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

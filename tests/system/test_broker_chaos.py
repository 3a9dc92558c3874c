"""The broker checker, seeded and short: a real broker killed and restarted under load, every
operation recorded and every property checked (``task chaos:broker`` runs it long)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from telemetry_devstack import ServiceProcess
from telemetry_devstack.brokercheck import CheckConfig, run_check
from telemetry_devstack.brokercheck.history import History, load
from telemetry_devstack.brokercheck.workload import Run
from telemetry_mq import Batch, BrokerClient

pytestmark = pytest.mark.system

SEED = 20261130


@pytest.mark.timeout(300)
async def test_a_seeded_chaos_run_keeps_every_promise(tmp_path: Path) -> None:
    config = CheckConfig(seed=SEED, seconds=30, kills=4, terms=1)
    outcome = await run_check(config, directory=tmp_path / "run")
    assert outcome.ok, outcome.report()
    s = outcome.summary
    # The run did what it is for: crashes under load, redeliveries, dead letters, cancelled
    # long-polls, and records through every path.
    assert s.kills >= config.kills and s.terms >= config.terms, outcome.report()
    assert s.published_ok > 500 and s.redeliveries > 0 and s.dead_letters > 0, outcome.report()
    for kind in ("publish", "fetch", "fetch_many", "ack", "nack", "release", "reject", "extend"):
        assert s.ops[kind].get("ok", 0) > 0, f"no {kind} succeeded:\n{outcome.report()}"
    assert s.ops["fetch"].get("info", 0) + s.ops["fetch_many"].get("info", 0) > 0


async def test_the_history_knows_which_piggybacked_acks_expired(
    broker: ServiceProcess, tmp_path: Path
) -> None:
    history = History(tmp_path / "history.jsonl", {"config": {}})
    config = CheckConfig(seed=1)
    run = Run(config, history, tmp_path / "unused", io.StringIO())
    run.url = broker.url
    async with BrokerClient(broker.url) as mq:
        await mq.create_topic(config.topic, partitions=2)
        await mq.publish(config.topic, [("k", b'{"id":"x"}')])
    worker = run._worker("consumer-g0-0")
    gone = Batch(config.topic, "g0", 0, "no-such-lease", 1.0, [])
    ok, batches = await run.fetch(
        worker, "g0", multi=False, max_records=1, max_wait=0.0, ack_wait=5.0, ack=[gone],
        cancel_after=None,
    )  # fmt: skip
    assert ok and len(batches) == 1
    ok, _ = await run.fetch(
        worker, "g0", multi=True, max_records=1, max_wait=0.0, ack_wait=5.0, ack=batches,
        cancel_after=None,
    )  # fmt: skip
    await worker.client.close()
    history.close()
    _, (first, second) = load(history.path)
    assert first.result["expired"] == ["no-such-lease"]
    assert "expired" not in second.result  # acked for real

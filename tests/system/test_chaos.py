"""``task chaos``, short: the whole stack as processes under every fault kind, then exact
accounting (``task chaos -- --minutes 30`` runs it long; see docs/reliability.md)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from telemetry_devstack.chaos import ChaosConfig, run_chaos

from conftest import CSV_PATH

pytestmark = pytest.mark.system

# Two and a half minutes of faults: one of each kind, and a full scaling cycle on each side
# (1 -> 10 -> 1, leaving by SIGTERM and by kill -9). The outage (25 s) outlasts what the old
# BROKER_MAX_DELIVERIES x nack delay survived (five deliveries about a second apart).
CONFIG = ChaosConfig(
    minutes=2.5,
    seed=20261130,
    outage_seconds=25,
    rate=100,
    chunk_size=50,
    ack_wait=10,
    csv_path=CSV_PATH,
)


# Setup (about 30 s on a busy machine), the faults, the last chunks, the drain and the
# accounting: about 3.5 minutes on this two-core machine under load.
@pytest.mark.timeout(600)
async def test_a_short_chaos_run_stores_every_datapoint_once() -> None:
    # Not under pytest's tmp_path: other pytest sessions reset that tree to mode 0700, and
    # the embedded server runs as another user when the tests run as root.
    directory = Path(tempfile.mkdtemp(prefix="telemetry-chaos-"))
    outcome = await run_chaos(CONFIG, directory=directory, out=sys.stdout)
    report = outcome.report()
    assert outcome.ok, report
    # The run did what it is for: every fault kind, both sides scaled to ten, a chunk of a
    # killed streamer taken over, the API through the outage.
    for kind in ("broker_kill", "collector_kill", "streamer_kill", "pg_crash", "pg_outage"):
        assert outcome.faults.get(kind, 0) >= 1, report
    for side in ("streamer", "collector"):
        assert outcome.faults.get(f"scale_down_{side}_sigterm", 0) >= 1, report
        assert outcome.faults.get(f"scale_down_{side}_kill", 0) >= 1, report
    assert (outcome.max_streamers, outcome.max_collectors) == (10, 10), report
    assert outcome.takeovers >= 1, report
    assert outcome.api_answers.get("503", 0) >= 1, report
    assert outcome.api_answers.get("200", 0) >= 1, report
    a = outcome.accounting
    assert a is not None and a.stored == a.next_seq > 0, report
    assert (outcome.dead_letters, outcome.lag, outcome.in_flight) == (0, 0, 0), report
    assert set(outcome.exits.values()) == {0}, report
    shutil.rmtree(directory, ignore_errors=True)  # kept when the run fails, for its logs

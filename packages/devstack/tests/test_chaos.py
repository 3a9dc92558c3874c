"""The chaos run's schedule (pure) and its accounting (against a real PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from telemetry_devstack.chaos import (
    ChaosConfig,
    Kind,
    account,
    build_schedule,
    describe,
    stable_port,
)
from telemetry_devstack.chaos.__main__ import parse_args
from telemetry_devstack.chaos.schedule import DB_GAP, SETTLE, WARMUP, limit_for
from telemetry_model import WireTemplate, read_samples
from telemetry_store import GpuSighting, ensure_streams, insert_datapoints, upsert_gpus

from conftest import CSV_PATH

SHORT = ChaosConfig(minutes=2.5, seed=7, outage_seconds=25)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    assert build_schedule(SHORT) == build_schedule(replace(SHORT))
    assert build_schedule(SHORT) != build_schedule(replace(SHORT, seed=8))


def test_a_short_run_has_every_fault_once_and_a_full_scaling_cycle():
    counts = describe(build_schedule(SHORT))
    for kind in ("broker_kill", "collector_kill", "streamer_kill", "pg_crash", "pg_outage"):
        assert counts[kind] == 1, counts
    assert counts["pg_back"] == 1
    for side in ("streamer", "collector"):
        assert counts[f"scale_up_{side}"] == 9
        # Both ways of leaving: SIGTERM (must exit 0) and kill -9.
        assert counts[f"scale_down_{side}_sigterm"] >= 1
        assert counts[f"scale_down_{side}_kill"] >= 1
        assert counts[f"scale_down_{side}_sigterm"] + counts[f"scale_down_{side}_kill"] == 9


def test_counts_scale_with_the_length_and_can_be_given():
    half_hour = ChaosConfig(minutes=30, seed=1)
    counts = describe(build_schedule(half_hour))
    assert (counts["broker_kill"], counts["pg_crash"], counts["pg_outage"]) == (12, 3, 3)
    assert counts["scale_up_streamer"] == 27  # three cycles of 1 -> 10 -> 1
    given = replace(SHORT, broker_kills=3, pg_crashes=0, scale_cycles=0, streamer_kills=0)
    counts = describe(build_schedule(given))
    assert counts["broker_kill"] == 3
    assert "pg_crash" not in counts and "scale_up_streamer" not in counts
    assert "streamer_kill" not in counts


@pytest.mark.parametrize("seed", range(20))
def test_the_schedule_keeps_its_promises(seed):
    config = ChaosConfig(minutes=12, seed=seed, outage_seconds=60, max_streamers=6)
    events = build_schedule(config)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert all(WARMUP <= e.at <= config.seconds - SETTLE for e in events)
    # Database faults one at a time, with a gap between them; an outage lasts its length.
    windows = []
    for e in events:
        if e.kind is Kind.PG_CRASH:
            windows.append((e.at, e.at))
        elif e.kind is Kind.PG_OUTAGE:
            back = next(b for b in events if b.kind is Kind.PG_BACK and b.at >= e.at)
            assert back.at - e.at == pytest.approx(60)
            windows.append((e.at, back.at))
    assert len(windows) == 2
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert start - end >= DB_GAP
    # Each side goes 1 -> max -> 1 in each cycle and never leaves 1..max.
    for side, top in (("streamer", 6), ("collector", 10)):
        replicas, peak = 1, 1
        for e in events:
            if e.side == side:
                replicas += 1 if e.kind is Kind.SCALE_UP else -1
                assert 1 <= replicas <= top
                peak = max(peak, replicas)
        assert (replicas, peak) == (1, top)


def test_a_run_too_short_for_its_outages_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        build_schedule(replace(SHORT, outage_seconds=120))
    with pytest.raises(ValueError, match="too short"):
        build_schedule(replace(SHORT, minutes=0.2))


def test_limit_for_covers_next_seq_in_whole_loops():
    assert [limit_for(n, 10) for n in (0, 1, 10, 11, 20)] == [1, 1, 1, 2, 2]


def test_the_command_line():
    config, args = parse_args(["--minutes", "3", "--seed", "5", "--broker-kills", "2"])
    assert (config.minutes, config.seed, config.broker_kills, config.outage_seconds) == (
        3,
        5,
        2,
        120,
    )
    assert args.dir is None and not args.keep
    assert parse_args([])[0].seed >= 0  # drawn, and printed by the run
    with pytest.raises(SystemExit):
        parse_args(["--max-streamers", "11"])


def test_stable_port_is_below_the_ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    assert 10_000 <= stable_port() < low


# -- accounting -------------------------------------------------------------------------

ROWS = 10
CHUNK = 10
TICK_NS = 3_000  # 3 us between the datapoints of a chunk
BASE_US = 1_800_000_000_000_000


async def stored_stream(db, seqs: list[int], *, next_seq: int) -> list:
    """Store ``seqs`` of stream ``s`` as a streamer would have (CSV row ``seq mod ROWS``)."""
    samples = read_samples(CSV_PATH)[:ROWS]
    templates = [WireTemplate(s) for s in samples]
    async with db.acquire() as conn, conn.cursor() as cur:
        await ensure_streams(cur, ["s"])
        await cur.execute("UPDATE streams SET next_seq = %s WHERE name = 's'", (next_seq,))
        await upsert_gpus(
            cur,
            {
                GpuSighting(g.uuid, g.hostname, g.index, g.device, g.model, g.driver_version, 0, 0)
                for g in (s.gpu for s in samples)
            },
        )
        encoded = []
        for seq in seqs:
            # Chunk k was claimed at BASE + k seconds; its datapoints are TICK_NS apart.
            ts = BASE_US + (seq // CHUNK) * 1_000_000 + (seq % CHUNK) * TICK_NS // 1000
            encoded.append(templates[seq % ROWS].encode(b'"s"', seq, ts))
        await insert_datapoints(cur, encoded)
    return samples


async def check(dsn: str, samples: list):
    return await asyncio.to_thread(
        account,
        dsn,
        stream="s",
        samples=samples,
        chunk_size=CHUNK,
        tick_ns=TICK_NS,
        since_us=BASE_US,
        until_us=BASE_US + 3600 * 10**6,
    )


async def test_an_exact_stream_accounts_clean(db, fresh_database_url):
    samples = await stored_stream(db, list(range(35)), next_seq=35)
    result = await check(fresh_database_url, samples)
    assert result.problems == []
    assert (result.next_seq, result.stored, result.missing) == (35, 35, 0)


async def test_accounting_names_every_departure(db, fresh_database_url):
    samples = await stored_stream(db, [s for s in range(40) if s not in (7, 8)], next_seq=39)
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE telemetry SET value = value + 1 WHERE seq = 12")
        await cur.execute("UPDATE telemetry SET ts = ts + interval '5 microseconds' WHERE seq = 25")
        await cur.execute("UPDATE telemetry SET ts = ts - interval '2 hours' WHERE seq = 31")
        await cur.execute(
            "INSERT INTO stream_chunks (stream_id, start, count, owner, lease_until, base_ts,"
            " tick_ns) SELECT id, 30, 10, 'dead', now(), now(), 0 FROM streams"
        )
    result = await check(fresh_database_url, samples)
    assert (result.missing, result.first_missing) == (2, [7, 8])
    assert (result.out_of_range, result.first_out_of_range) == (1, [39])  # past next_seq 39
    assert (result.wrong_values, result.first_wrong_values) == (1, [12])
    # seq 31 moved in time breaks its chunk's base + tick as well.
    assert (result.inconsistent_chunks, result.first_inconsistent_chunks) == (2, [20, 30])
    assert result.ts_outside_run == 1
    assert result.pending_chunks == 1
    assert len(result.problems) == 6, result.problems


async def test_a_stream_that_never_started_is_all_missing(db, fresh_database_url):
    result = await check(fresh_database_url, read_samples(CSV_PATH)[:ROWS])
    assert result.problems and result.missing == 1


CHAINED = """Traceback (most recent call last):
  File "/x/asyncio/tasks.py", line 507, in wait_for
    return await fut
asyncio.exceptions.CancelledError

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/x/replay.py", line 136, in run
    chunk = await self._claim()
TimeoutError"""
DEADLOCK = """Traceback (most recent call last):
  File "/x/aiopg/connection.py", line 788, in _ready
    state = self._conn.poll()
psycopg2.errors.DeadlockDetected: deadlock detected
DETAIL:  Process 3124 waits for ShareLock on transaction 35988; blocked by process 3125.
HINT:  See server log for query details.
CONTEXT:  while deleting tuple (14,238) in relation "stream_chunks"
"""
REFUSED = """Traceback (most recent call last):
  File "/x/aiopg/connection.py", line 788, in _ready
    state = self._conn.poll()
psycopg2.OperationalError: connection to server on socket "/x/.s.PGSQL.5432" failed: No such file
\tIs the server running locally and accepting connections on that socket?
"""


def test_a_failed_claim_is_known_by_its_exception_type():
    from telemetry_devstack.chaos.runner import _exception_type

    assert _exception_type(CHAINED) == "TimeoutError"
    assert _exception_type(DEADLOCK) == "psycopg2.errors.DeadlockDetected"
    assert _exception_type(REFUSED) == "psycopg2.OperationalError"
    assert _exception_type("") == ""

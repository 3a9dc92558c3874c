from __future__ import annotations

import asyncio
import os
import sys

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn
from telemetry_devstack import (
    ServiceProcess,
    create_database,
    drop_database,
    process_alive,
    refused_port,
    with_database,
)
from telemetry_devstack.__main__ import parse_args


def test_create_database_refuses_to_reuse_one(pg_server):
    dsn = create_database(pg_server, "devstack_reuse_check")
    try:
        with pytest.raises(RuntimeError, match="already exists"):
            create_database(pg_server, "devstack_reuse_check")
        assert create_database(pg_server, "devstack_reuse_check", exist_ok=True) == dsn
        conn = psycopg2.connect(dsn)
        conn.close()
    finally:
        drop_database(pg_server, "devstack_reuse_check")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn)


def test_with_database_swaps_only_the_name():
    dsn = "host=/tmp/sock user=postgres dbname=postgres"
    assert parse_dsn(with_database(dsn, "other")) == {
        "host": "/tmp/sock",
        "user": "postgres",
        "dbname": "other",
    }


async def test_a_process_that_exits_is_reported_with_its_output():
    with refused_port() as port:
        proc = ServiceProcess("zen", "this", port=port, env={}, sink=None)
        await proc.start()
        with pytest.raises(RuntimeError, match="zen exited with 0"):
            await proc.wait_ready(timeout=10)
    assert any("Beautiful is better than ugly" in line for line in proc.lines)
    assert await proc.stop() == 0


async def test_a_process_that_never_gets_ready_times_out_and_is_stopped():
    # It serves on a port of its own choosing, so nothing ever answers on ``port``.
    args = ["0", "--bind", "127.0.0.1"]
    with refused_port() as port:
        proc = ServiceProcess("idle", "http.server", port=port, env={}, args=args, sink=None)
        await proc.start()
        try:
            with pytest.raises(TimeoutError, match="not ready"):
                await proc.wait_ready(timeout=1.5)
        finally:
            code = await proc.stop(timeout=5)
    assert code == -15  # stopped by our SIGTERM


async def test_a_service_binds_a_free_port_itself_and_reports_it(tmp_path):
    # Two at once on port 0: each gets its own port, known before it is ready.
    procs = [
        ServiceProcess(
            f"broker-{i}",
            "telemetry_broker",
            prefix="BROKER",
            env={"BROKER_DATA_DIR": str(tmp_path / str(i)), "BROKER_LOG_FORMAT": "json"},
            sink=None,
        )
        for i in range(2)
    ]
    with pytest.raises(RuntimeError, match="not known yet"):
        _ = procs[0].url
    try:
        for p in procs:
            await p.start()
        ports = [await p.wait_port(30) for p in procs]
        assert all(ports) and ports[0] != ports[1]
        for p in procs:
            await p.wait_ready(30)  # answers on the reported port
        assert procs[0].url == f"http://127.0.0.1:{ports[0]}"
    finally:
        codes = [await p.stop() for p in procs]
    assert codes == [0, 0]


async def test_a_service_that_dies_before_it_binds_is_reported(tmp_path):
    # A port that is taken: the bind fails, and the parent hears of the exit, not a timeout.
    with refused_port() as taken:
        proc = ServiceProcess(
            "broker",
            "telemetry_broker",
            prefix="BROKER",
            port=taken,
            env={"BROKER_DATA_DIR": str(tmp_path), "BROKER_LOG_FORMAT": "json"},
            sink=None,
        )
        await proc.start()
        with pytest.raises(RuntimeError, match="broker exited with 1"):
            await proc.wait_port(30)
    assert any("Address already in use" in line for line in proc.lines)


def test_cli_bounds():
    args = parse_args(["--streamers", "3", "--collectors", "10"])
    assert (args.streamers, args.collectors) == (3, 10)
    with pytest.raises(SystemExit):
        parse_args(["--streamers", "11"])


async def test_a_service_has_its_own_process_group():
    """A terminal's Ctrl-C (SIGINT to the foreground group) reaches only the parent."""
    args = ["0", "--bind", "127.0.0.1"]
    proc = ServiceProcess("idle", "http.server", env={}, args=args, sink=None)
    await proc.start()
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        await proc.stop(timeout=5)


_PARENT = """
import asyncio, sys
from telemetry_devstack import ServiceProcess

async def main():
    # Silent for a minute: it must not die of writing to its dead parent's pipe instead.
    args = ["-n", "1", "-r", "1", "import time; time.sleep(60)"]
    proc = ServiceProcess("sleeper", "timeit", env={}, args=args, sink=None)
    await proc.start()
    print(proc.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_service_ends_when_its_parent_is_killed():
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PARENT, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    async with asyncio.timeout(30):
        child = int(await parent.stdout.readline())
    parent.kill()
    await parent.wait()
    async with asyncio.timeout(10):  # SIGTERM from PR_SET_PDEATHSIG, then its own exit
        while process_alive(child):
            await asyncio.sleep(0.02)

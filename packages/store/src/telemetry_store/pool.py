"""The aiopg pool and explicit transactions (aiopg autocommits otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiopg

Cursor = Any  # aiopg.Cursor is untyped


async def create_pool(
    dsn: str, *, minsize: int = 1, maxsize: int = 10, timeout: float = 30.0
) -> aiopg.Pool:
    """Open a connection pool to ``dsn`` (a libpq URI or key/value string)."""
    return await aiopg.create_pool(dsn, minsize=minsize, maxsize=maxsize, timeout=timeout)


@asynccontextmanager
async def transaction(pool: aiopg.Pool) -> AsyncIterator[Cursor]:
    """A cursor inside ``BEGIN``; ``COMMIT`` on success, ``ROLLBACK`` on any error."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("BEGIN")
        try:
            yield cur
        except BaseException:
            await cur.execute("ROLLBACK")
            raise
        else:
            await cur.execute("COMMIT")


@asynccontextmanager
async def cursor(pool: aiopg.Pool) -> AsyncIterator[Cursor]:
    """An autocommit cursor, for single read statements."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        yield cur


async def ping(pool: aiopg.Pool) -> None:
    """Round-trip one query; raise if the database is unreachable."""
    async with cursor(pool) as cur:
        await cur.execute("SELECT 1")
        await cur.fetchone()

"""The database as the routes see it: the pool on the app, bounded queries, translated errors.

Every request's database work is bounded three ways: waiting for a connection
(``API_POOL_TIMEOUT``, then 503 ``DATABASE_BUSY``), the server's ``statement_timeout`` on each
statement (``API_STATEMENT_TIMEOUT``), and a client deadline (``API_QUERY_TIMEOUT``) at which
the statement is cancelled on the server too, not just abandoned (503 ``QUERY_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Concatenate, Final

import aiopg
import psycopg2
from quart import Quart, current_app
from telemetry_kit import APIError
from telemetry_store import Cursor, Probe, QueryCancelledError, QueryTimeoutError, bounded

from .metrics import ApiMetrics
from .settings import Settings

log = logging.getLogger(__name__)

STATE_KEY: Final = "telemetry_api"
# Seconds a client should wait before retrying a 503: a busy pool frees up quickly, a
# database that is away takes longer.
RETRY_BUSY: Final = "1"
RETRY_UNAVAILABLE: Final = "5"


@dataclass(slots=True)
class ApiState:
    """What the app holds between requests; ``pool`` and ``probe`` are set while serving."""

    settings: Settings
    metrics: ApiMetrics
    pool: aiopg.Pool | None = field(default=None)
    probe: Probe | None = field(default=None)

    async def readiness(self) -> str | None:
        """``None`` when the database answers, else why it does not.

        On a connection of its own with a short timeout: a pool busy with slow requests
        delays neither the answer nor its truth.
        """
        if self.pool is None or self.probe is None:
            return "the database pool is not open"
        started = time.perf_counter()
        try:
            failure = await self.probe.check()
        finally:
            self.metrics.db_query_duration.labels("ping").observe(time.perf_counter() - started)
        return None if failure is None else f"the database does not answer: {failure}"


@dataclass(frozen=True, slots=True)
class Db:
    """One request's connection: run store functions on it with the request's bounds."""

    cur: Cursor
    api: ApiState

    async def run[**P, T](
        self,
        query: str,
        call: Callable[Concatenate[Cursor, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``call(cur, *args, **kwargs)``, timed under ``query``, cancelled at the deadline."""
        started = time.perf_counter()
        try:
            return await bounded(
                self.cur,
                lambda cur: call(cur, *args, **kwargs),
                timeout=self.api.settings.query_timeout,
            )
        finally:
            self.api.metrics.db_query_duration.labels(query).observe(time.perf_counter() - started)


def state(app: Quart | None = None) -> ApiState:
    """The API state of ``app`` (default: the current app)."""
    target = current_app if app is None else app
    found: ApiState = target.extensions[STATE_KEY]
    return found


def _unavailable(detail: str) -> APIError:
    return APIError(503, "DATABASE_UNAVAILABLE", detail, headers={"Retry-After": RETRY_UNAVAILABLE})


async def _acquire(api: ApiState, pool: aiopg.Pool) -> aiopg.Connection:
    """A connection within ``API_POOL_TIMEOUT``: 503 ``DATABASE_BUSY`` when every one is in
    use that long, 503 ``DATABASE_UNAVAILABLE`` when none can be opened."""
    try:
        async with asyncio.timeout(api.settings.pool_timeout):
            conn: aiopg.Connection = await pool.acquire()
            return conn
    except TimeoutError as e:
        if pool.freesize == 0 and pool.size >= (pool.maxsize or 0):
            api.metrics.pool_exhausted.inc()
            raise APIError(
                503,
                "DATABASE_BUSY",
                f"every database connection stayed busy for {api.settings.pool_timeout}s",
                headers={"Retry-After": RETRY_BUSY},
            ) from e
        raise _unavailable("the database did not accept a connection in time") from e
    except (psycopg2.Error, OSError) as e:
        log.warning("database unavailable: %s", e)
        raise _unavailable("the database is not reachable") from e


@asynccontextmanager
async def db() -> AsyncIterator[Db]:
    """A connection (autocommit) for the current request; database failures become 503."""
    api = state()
    pool = api.pool
    if pool is None:
        raise _unavailable("the database pool is not open")
    conn = await _acquire(api, pool)
    try:
        async with conn.cursor() as cur:
            yield Db(cur, api)
    except psycopg2.DataError as e:
        # A value the checks above let through but PostgreSQL refuses: still the input's fault.
        log.warning("database refused a value: %s", e)
        raise APIError(400, "INVALID_PARAMETER", "a parameter is out of range") from e
    except (QueryTimeoutError, QueryCancelledError) as e:
        api.metrics.query_timeouts.inc()
        raise APIError(
            503,
            "QUERY_TIMEOUT",
            "the query took too long and was cancelled",
            headers={"Retry-After": RETRY_BUSY},
        ) from e
    except (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError) as e:
        log.warning("database unavailable: %s", e)
        # The other idle connections most likely broke the same way (a restarted server).
        with suppress(Exception):
            await pool.clear()
        raise _unavailable("the database did not answer") from e
    finally:
        await pool.release(conn)

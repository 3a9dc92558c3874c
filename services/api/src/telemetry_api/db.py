"""The database as the routes see it: the pool on the app, timed queries, translated errors."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import aiopg
import psycopg2
from quart import Quart, current_app
from telemetry_kit import APIError
from telemetry_store import Cursor, cursor, ping

from .metrics import ApiMetrics
from .settings import Settings

log = logging.getLogger(__name__)

STATE_KEY: Final = "telemetry_api"


@dataclass(slots=True)
class ApiState:
    """What the app holds between requests; ``pool`` is set while serving."""

    settings: Settings
    metrics: ApiMetrics
    pool: aiopg.Pool | None = field(default=None)

    async def timed[T](self, query: str, call: Awaitable[T]) -> T:
        """Await one database call and record its latency under ``query``."""
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.db_query_duration.labels(query).observe(time.perf_counter() - started)

    async def readiness(self) -> str | None:
        """``None`` when the database answers, else why it does not."""
        if self.pool is None:
            return "the database pool is not open"
        try:
            await self.timed("ping", ping(self.pool))
        except (psycopg2.Error, OSError, TimeoutError) as e:
            return f"the database does not answer: {type(e).__name__}"
        return None


def state(app: Quart | None = None) -> ApiState:
    """The API state of ``app`` (default: the current app)."""
    target = current_app if app is None else app
    found: ApiState = target.extensions[STATE_KEY]
    return found


@asynccontextmanager
async def db() -> AsyncIterator[Cursor]:
    """An autocommit cursor for the current request; database failures become 503."""
    pool = state().pool
    if pool is None:
        raise APIError(503, "DATABASE_UNAVAILABLE", "the database pool is not open")
    try:
        async with cursor(pool) as cur:
            yield cur
    except psycopg2.DataError as e:
        # A value the checks above let through but PostgreSQL refuses: still the input's fault.
        log.warning("database refused a value: %s", e)
        raise APIError(400, "INVALID_PARAMETER", "a parameter is out of range") from e
    except (psycopg2.OperationalError, psycopg2.InterfaceError, OSError, TimeoutError) as e:
        log.warning("database unavailable: %s", e)
        raise APIError(503, "DATABASE_UNAVAILABLE", "the database did not answer in time") from e

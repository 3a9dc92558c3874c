"""The aiopg pool, explicit transactions, bounded queries and a readiness probe.

Two aiopg habits this module works around:

- On a client-side timeout or a task cancellation aiopg closes the connection without
  cancelling the query, and the backend runs on (``pg_stat_activity`` still shows it).
  ``bounded`` cancels the statement on the server first (libpq's cancel request).
- When the server cancels a statement (``statement_timeout``, ``pg_cancel_backend``) aiopg
  raises ``asyncio.CancelledError`` instead of psycopg2's ``QueryCanceled``, which would look
  like a cancellation of the calling task. ``transaction``, ``cursor`` and ``bounded`` turn it
  into ``QueryCancelledError`` unless the task really is being cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, Final

import aiopg
import psycopg2
from psycopg2.extensions import QueryCanceledError

from .errors import QueryCancelledError, QueryTimeoutError

log = logging.getLogger(__name__)

Cursor = Any  # aiopg.Cursor is untyped

# How long a cancelled statement gets to report back before its connection is dropped.
_CANCEL_GRACE: Final = 2.0


async def create_pool(
    dsn: str,
    *,
    minsize: int = 1,
    maxsize: int = 10,
    timeout: float = 30.0,
    statement_timeout: float | None = None,
) -> aiopg.Pool:
    """Open a connection pool to ``dsn`` (a libpq URI or key/value string).

    ``timeout`` bounds connecting, acquiring and each statement on the client (aiopg).
    ``statement_timeout`` (seconds) is set on every connection, so the server cancels a
    statement that runs longer; each connection also gets ``DateStyle`` ISO, on which the
    rendered reads rely whatever the database's default.
    """
    settings = ["SET DateStyle = 'ISO, YMD'"]
    if statement_timeout is not None:
        settings.append(f"SET statement_timeout = {max(1, round(statement_timeout * 1000))}")

    async def on_connect(conn: aiopg.Connection) -> None:
        try:
            async with conn.cursor() as cur:
                await cur.execute("; ".join(settings))
        except BaseException:
            conn.close()  # aiopg would keep a half-set-up connection open otherwise
            raise

    _quiet_server_cancels()
    return await aiopg.create_pool(
        dsn, minsize=minsize, maxsize=maxsize, timeout=timeout, on_connect=on_connect
    )


def _quiet_server_cancels() -> None:
    """Log a statement the server cancelled as one line, not as an unhandled-error traceback.

    aiopg reports such a statement to the loop's exception handler before raising
    ``CancelledError``; the caller gets ``QueryCancelledError`` and decides how bad it is.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    if getattr(previous, "_telemetry_quiet", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), QueryCanceledError):
            log.debug("statement cancelled by the server: %s", context.get("message"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._telemetry_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def _cancelled_by_server(error: asyncio.CancelledError) -> QueryCancelledError | None:
    """A server-side cancel dressed up by aiopg as a task cancellation, else ``None``."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None  # the task itself is being cancelled: let it be
    return QueryCancelledError("the server cancelled the statement")


@asynccontextmanager
async def transaction(pool: aiopg.Pool, *, begin: str = "BEGIN") -> AsyncIterator[Cursor]:
    """A cursor inside ``BEGIN``; ``COMMIT`` on success, ``ROLLBACK`` on any error.

    ``begin`` may add statements to the same round trip (``"BEGIN; SELECT ..."``: the cursor
    then holds the last one's rows). When the rollback itself fails (the connection is
    gone), the connection is closed and the original error raised.
    """
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(begin)
        try:
            try:
                yield cur
            except asyncio.CancelledError as e:
                if (server := _cancelled_by_server(e)) is not None:
                    raise server from e
                raise
        except BaseException:
            try:
                await cur.execute("ROLLBACK")
            except BaseException:
                conn.close()
                log.debug("rollback failed; connection closed", exc_info=True)
            raise
        try:
            await cur.execute("COMMIT")
        except asyncio.CancelledError as e:
            if (server := _cancelled_by_server(e)) is not None:
                raise server from e
            raise


@asynccontextmanager
async def cursor(pool: aiopg.Pool) -> AsyncIterator[Cursor]:
    """An autocommit cursor, for single read statements."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        try:
            yield cur
        except asyncio.CancelledError as e:
            if (server := _cancelled_by_server(e)) is not None:
                raise server from e
            raise


async def ping(pool: aiopg.Pool) -> None:
    """Round-trip one query; raise if the database is unreachable."""
    async with cursor(pool) as cur:
        await cur.execute("SELECT 1")
        await cur.fetchone()


async def bounded[T](
    cur: Cursor, call: Callable[[Cursor], Awaitable[T]], *, timeout: float | None
) -> T:
    """Run ``call(cur)`` for at most ``timeout`` seconds, then cancel it on the server.

    A statement still running at the deadline, or when the calling task is cancelled (a
    client that went away), is cancelled on the server before this returns, so no backend
    keeps working for nobody. Raises ``QueryTimeoutError`` at the deadline and
    ``QueryCancelledError`` when the server cancelled the statement by itself.
    """
    conn = cur.connection

    async def guarded() -> T:
        try:
            return await call(cur)
        except asyncio.CancelledError as e:
            if (server := _cancelled_by_server(e)) is not None:
                raise server from e
            raise

    task = asyncio.ensure_future(guarded())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        await _cancel_statement(conn, task)
        raise
    if not done:
        await _cancel_statement(conn, task)
        raise QueryTimeoutError(f"the statement ran past {timeout}s and was cancelled")
    return task.result()


async def _cancel_statement(conn: aiopg.Connection, task: asyncio.Future[Any]) -> None:
    """Ask the server to cancel what ``conn`` runs, then wait (briefly) for ``task`` to end."""
    if not task.done() and not conn.closed:
        try:
            # libpq's cancel request: a short blocking round trip on a new socket.
            await asyncio.to_thread(conn.raw.cancel)
        except (psycopg2.Error, OSError) as e:
            log.warning("could not cancel a statement on the server: %s", e)
    # The statement now ends with an error (or its result); past the grace period the task is
    # cancelled, which makes aiopg drop the connection.
    await asyncio.wait({task}, timeout=_CANCEL_GRACE)
    if not task.done():
        task.cancel()
    with suppress(BaseException):
        await asyncio.shield(task)
    if not task.cancelled():
        task.exception()  # retrieved: the caller reports the timeout, not this error


class Probe:
    """A connection of its own for readiness checks, so a busy pool never delays them."""

    def __init__(self, dsn: str, *, timeout: float = 2.0) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._conn: aiopg.Connection | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> str | None:
        """``None`` when the database answers ``SELECT 1`` within the timeout, else why not."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    if self._conn is None or self._conn.closed:
                        self._conn = await aiopg.connect(self._dsn, timeout=self._timeout)
                    async with self._conn.cursor() as cur:
                        await cur.execute("SELECT 1")
                        await cur.fetchone()
            except (psycopg2.Error, OSError, TimeoutError) as e:
                self.close()
                return describe(e)
            except asyncio.CancelledError as e:
                self.close()
                if _cancelled_by_server(e) is None:
                    raise
                return "the database cancelled the check"
            return None

    def close(self) -> None:
        """Close the probe's connection (a later check opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def describe(error: BaseException) -> str:
    """A short, safe description of a database error: class, SQLSTATE, first line."""
    code = getattr(error, "pgcode", None)
    text = str(error).strip().splitlines()
    head = f"{type(error).__name__}" + (f" {code}" if code else "")
    return f"{head}: {text[0][:200]}" if text else head

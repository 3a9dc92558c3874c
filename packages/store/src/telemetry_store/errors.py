"""Errors raised by telemetry-store.

StoreError
 ├── MigrationError       a migration file is invalid or failed to apply
 ├── UnknownStreamError   a datapoint names a stream the work index does not know
 ├── QueryCancelledError  the server cancelled a statement (statement_timeout, pg_cancel_backend)
 └── QueryTimeoutError    a statement ran past the client's deadline and was cancelled
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of every telemetry-store error."""


class MigrationError(StoreError):
    """A migration could not be applied."""

    def __init__(self, message: str, *, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


class UnknownStreamError(StoreError):
    """A stream is not registered in the work index."""


class QueryCancelledError(StoreError):
    """The server cancelled a statement: its ``statement_timeout``, or an administrator."""


class QueryTimeoutError(StoreError):
    """A statement ran past the caller's deadline; it was cancelled on the server."""

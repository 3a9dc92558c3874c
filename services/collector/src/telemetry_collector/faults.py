"""Whose fault a failed store is: the database's (wait and retry) or the data's (dead-letter).

By SQLSTATE (PostgreSQL appendix A) first, then by the driver's exception class:

- ``TRANSIENT``: the environment; the same records will store once it recovers. Connection
  exceptions (08), insufficient resources (53: disk full, out of memory, too many
  connections), operator intervention (57: admin shutdown, crash shutdown, cannot connect
  now, statement timeout or cancel), transaction rollback (40: serialization failure,
  deadlock), system errors (58: I/O), a read-only transaction (25006, a standby or
  ``default_transaction_read_only``), lock not available (55P03), object in use (55006); and
  errors without a SQLSTATE from the driver or the network (connection refused or lost,
  client timeouts).
- ``RECORD``: the database refuses values: data exceptions (22: out of range, bad encoding,
  NUL characters), integrity violations (23; the idempotent duplicate is ``ON CONFLICT DO
  NOTHING`` and never raises), program limits (54: an index row larger than a btree page
  allows).
- ``OTHER``: anything else (a missing table, a trigger's own exception, a bug). The collector
  isolates the records it fails on; it dead-letters them only when the rest of the round
  stores, and treats it as an environment fault when nothing does.
"""

from __future__ import annotations

import enum
from typing import Final

import psycopg2
from telemetry_store import QueryCancelledError, QueryTimeoutError

_TRANSIENT_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_CODES: Final = frozenset({"25006", "55P03", "55006"})
_RECORD_CLASSES: Final = frozenset({"22", "23", "54"})


class Fault(enum.Enum):
    """Whose fault a failed store is."""

    TRANSIENT = "transient"
    RECORD = "record"
    OTHER = "other"


def classify(error: BaseException) -> Fault:
    """The kind of fault ``error`` (raised by a store) is."""
    code = getattr(error, "pgcode", None)
    if isinstance(code, str) and len(code) == 5:
        if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
            return Fault.TRANSIENT
        if code[:2] in _RECORD_CLASSES:
            return Fault.RECORD
        return Fault.OTHER
    if isinstance(
        error,
        psycopg2.OperationalError
        | psycopg2.InterfaceError
        | OSError
        | TimeoutError
        | QueryCancelledError
        | QueryTimeoutError,
    ):
        return Fault.TRANSIENT
    if isinstance(error, psycopg2.DataError | psycopg2.IntegrityError):
        return Fault.RECORD
    return Fault.OTHER


def reason(error: BaseException) -> str:
    """The database's message for a dead letter: SQLSTATE, message, detail (bounded)."""
    code = getattr(error, "pgcode", None)
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(error).strip().split("\n")[0]
    detail = getattr(diag, "message_detail", None)
    text = f"{code}: {primary}" if code else f"{type(error).__name__}: {primary}"
    if detail:
        text += f" ({detail})"
    return text[:1000]

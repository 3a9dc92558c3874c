"""The data's domain: what a datapoint may hold so that PostgreSQL stores it and the API reads it.

Checked at the edges, by the wire decoder (``decode``) and the CSV reader, so a record outside
it is refused alone with a clear reason instead of failing a whole database transaction later.

- ``seq``: 0 .. 2^63 - 1 (``bigint``); ``gpu``: 0 .. 32767 (``smallint``).
- ``ts``: from the Unix epoch to 9999-12-30 (Python's ``datetime`` ends with year 9999, one day
  less keeps every time zone inside it; PostgreSQL's range is far wider), and at most a maximum
  clock skew ahead of the reader's clock (``DEFAULT_MAX_FUTURE_SKEW``, one day, by default).
- Strings: no NUL character (PostgreSQL's ``text`` cannot hold U+0000, and one ``\\u0000``
  anywhere in a JSON value fails the whole batch's ``json_to_recordset``), and at most
  ``MAX_TEXT_BYTES`` of UTF-8 (``MAX_STREAM_BYTES`` for the stream name,
  ``MAX_LABEL_VALUE_BYTES`` for a label value). The indexed ones (uuid, hostname, stream, and
  container, pod and namespace together in ``telemetry_gpu_time``) stay far below the ~2.7 kB
  a btree entry may hold; 256 bytes is more than any DCGM or Kubernetes name needs (253).
- At most ``MAX_LABELS`` labels; values are finite numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from .records import to_micros

MAX_SEQ: Final = 2**63 - 1
MAX_GPU_INDEX: Final = 2**15 - 1
MIN_TS_US: Final = 0
MAX_TS_US: Final = to_micros(datetime(9999, 12, 30, tzinfo=UTC))
DEFAULT_MAX_FUTURE_SKEW: Final = 86_400.0
MAX_TEXT_BYTES: Final = 256
MAX_STREAM_BYTES: Final = 200
MAX_LABEL_VALUE_BYTES: Final = 1024
MAX_LABELS: Final = 64


def text_problem(value: str, limit: int = MAX_TEXT_BYTES) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL, invalid UTF-8, too long), or ``None``."""
    if "\x00" in value:
        return "holds a NUL character (U+0000)"
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: an undecodable byte of a CSV file
            return "is not valid UTF-8"
    if size > limit:
        return f"is {size} bytes long (at most {limit})"
    return None


def labels_problem(labels: Mapping[str, str]) -> str | None:
    """Why a label set is outside the domain (count, names, values), or ``None``."""
    if len(labels) > MAX_LABELS:
        return f"has {len(labels)} labels (at most {MAX_LABELS})"
    for name, value in labels.items():
        reason = text_problem(name)
        if reason is not None:
            return f"label name {_short(name)} {reason}"
        reason = text_problem(value, MAX_LABEL_VALUE_BYTES)
        if reason is not None:
            return f"value of label {_short(name)} {reason}"
    return None


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")

"""Query parameters the schema cannot check alone: RFC 3339 times, steps, page limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Final
from urllib.parse import urlencode

from pydantic import Field
from quart import request
from telemetry_kit import APIError

from .db import state
from .settings import MAX_LIMIT

_MAX_FRACTION: Final = 32
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,32}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)
_STEP: Final = re.compile(r"([1-9][0-9]{0,7})(s|m|h|d)")
_STEP_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_STEP: Final = timedelta(days=366)


@dataclass(frozen=True, slots=True, order=True)
class Instant:
    """An RFC 3339 time to the nanosecond and beyond: ``at`` (microseconds, what PostgreSQL
    stores) plus the digits past it, so bounds between two microseconds stay exact."""

    at: datetime
    beyond: str = ""

    @property
    def floor(self) -> datetime:
        """The latest storable time at or before this instant (an inclusive end bound)."""
        return self.at

    @property
    def ceil(self) -> datetime:
        """The earliest storable time at or after this instant (an inclusive start bound)."""
        return self.at + timedelta(microseconds=1) if self.beyond.strip("0") else self.at


def parse_time(name: str, text: str) -> Instant:
    """Parse an RFC 3339 time with an offset; a 400 ``INVALID_TIME`` or ``NAIVE_TIME`` if not."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise APIError(400, "INVALID_TIME", f"{name} is not an RFC 3339 time: {text[:64]!r}")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    if zulu is None and sign is None:
        raise APIError(
            400, "NAIVE_TIME", f"{name} has no UTC offset; add Z or +HH:MM: {text[:64]!r}"
        )
    digits = frac or ""
    try:
        offset = timedelta(0)
        if sign is not None:
            if int(off_m) > 59:
                raise ValueError("offset minutes out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            offset = -offset if sign == "-" else offset
        at = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(digits[:6].ljust(6, "0")),
            UTC if offset == timedelta(0) else timezone(offset),
        )
        # In UTC: PostgreSQL takes offsets up to 15:59 only, RFC 3339 up to 23:59.
        instant = Instant(at.astimezone(UTC), digits[6:].ljust(_MAX_FRACTION - 6, "0"))
        _ = instant.ceil  # the last microsecond of year 9999 cannot round up: a 400
    except (ValueError, OverflowError) as e:
        raise APIError(400, "INVALID_TIME", f"{name} is not a valid time: {e}") from e
    return instant


def parse_step(text: str) -> timedelta:
    """Parse a bucket width such as ``30s``, ``5m``, ``1h`` or ``1d`` (at most 366 days)."""
    m = _STEP.fullmatch(text)
    if m is None:
        raise APIError(400, "INVALID_STEP", f"step must look like 30s, 5m, 1h or 1d: {text[:32]!r}")
    step = timedelta(seconds=int(m.group(1)) * _STEP_UNITS[m.group(2)])
    if step > MAX_STEP:
        raise APIError(400, "INVALID_STEP", "step must be at most 366 days")
    return step


def page_limit(limit: int | None) -> int:
    """The requested page size, or the default; above the configured maximum is a 400."""
    settings = state().settings
    if limit is None:
        return settings.default_limit
    if not 1 <= limit <= settings.max_limit:
        raise APIError(400, "INVALID_LIMIT", f"limit must be between 1 and {settings.max_limit}")
    return limit


def next_link(cursor: str | None) -> str | None:
    """This request's path and query with ``cursor`` replaced: the next page's URL."""
    if cursor is None:
        return None
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
    args.append(("cursor", cursor))
    return f"{request.path}?{urlencode(args)}"


Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT)]
LIMIT_DOC: Final = (
    "Page size: at most this many items. Default 1000 (API_DEFAULT_LIMIT), maximum 10000;"
    " a deployment may lower the maximum (API_MAX_LIMIT)."
)
CURSOR_DOC: Final = (
    "Opaque position from the previous page's next_cursor; pass it with the same filters."
)

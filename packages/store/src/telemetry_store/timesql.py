"""Times as SQL: microseconds since the Unix epoch to and from ``timestamptz``, exactly."""

from __future__ import annotations

from typing import Final

from psycopg2.extensions import ISQLQuote

# PostgreSQL's timestamps run from 4714-11-24 BC to 294276-12-31 AD: in microseconds since
# the Unix epoch, BEGIN_US <= t < END_US. Keys of ±infinity (a value only a hand-written
# INSERT can store) are END_US and BEGIN_US - 1, just outside.
BEGIN_US: Final = -210_866_803_200_000_000
END_US: Final = 9_224_318_016_000_000_000
_DAY_US: Final = 86_400_000_000


class at:  # noqa: N801 - reads as SQL: at(key.ts_us)
    """A time given in microseconds since the Unix epoch, as an SQL ``timestamptz`` parameter.

    Any time PostgreSQL holds, and ±infinity for keys outside its range (see ``BEGIN_US``):
    the SQL adds whole days and microseconds to the epoch as a plain timestamp, exact and
    free of time zones, so no Python datetime (years 1-9999 only) is involved.
    """

    __slots__ = ("micros",)

    def __init__(self, micros: int) -> None:
        self.micros = micros

    def __conform__(self, protocol: object) -> at | None:
        return self if protocol is ISQLQuote else None

    def getquoted(self) -> bytes:
        """The SQL of this time (psycopg2's adaptation protocol)."""
        if self.micros >= END_US:
            return b"'infinity'::timestamptz"
        if self.micros < BEGIN_US:
            return b"'-infinity'::timestamptz"
        days, micros = divmod(self.micros, _DAY_US)
        return (
            f"((timestamp '1970-01-01' + {days} * interval '1 day'"
            f" + {micros} * interval '1 microsecond') AT TIME ZONE 'UTC')"
        ).encode()

    def __repr__(self) -> str:
        return f"at({self.micros})"


def _micros(column: str) -> str:
    """SQL of the timestamptz ``column`` as microseconds since the Unix epoch (numeric:
    exact for every time PostgreSQL holds; ±infinity as the keys ``at`` reads back).

    Through an interval from 2000-01-01, PostgreSQL's own epoch: ``extract(epoch FROM ts)``
    loses microseconds in the last decades of the range, where they overflow an int64."""
    return (
        f"CASE WHEN {column} = 'infinity' THEN {END_US}"
        f" WHEN {column} = '-infinity' THEN {BEGIN_US - 1}"
        f" ELSE extract(epoch FROM {column} - timestamptz '2000-01-01 00:00:00+00') * 1000000"
        " + 946684800000000 END"
    )

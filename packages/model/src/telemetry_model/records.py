"""Record types shared by every service: the GPU identity, a CSV sample, a stamped datapoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Gpu:
    """A GPU as DCGM reports it. ``uuid`` is its identity; ``index`` is only unique per host."""

    uuid: str
    hostname: str
    index: int
    device: str
    model: str
    driver_version: str | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of a DCGM scrape: a metric value of one GPU at the scrape time."""

    line: int
    timestamp: datetime
    metric: str
    value: float
    gpu: Gpu
    container: str | None = None
    pod: str | None = None
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Datapoint:
    """A sample stamped by a streamer: ``(stream, seq)`` is its idempotency key."""

    stream: str
    seq: int
    ts_us: int
    metric: str
    value: float
    gpu: Gpu
    container: str | None = None
    pod: str | None = None
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def timestamp(self) -> datetime:
        """The processing time as an aware UTC datetime."""
        return EPOCH + timedelta(microseconds=self.ts_us)

    @property
    def id(self) -> str:
        """The datapoint's unique id, ``<stream>:<seq>``."""
        return f"{self.stream}:{self.seq}"


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch for an aware datetime."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    return (ts - EPOCH) // timedelta(microseconds=1)

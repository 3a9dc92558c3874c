"""Record types shared by every service: the GPU identity, a CSV sample, a stamped datapoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Between a GPU's uuid and the GPU instance id in a MIG instance's identity: no GPU uuid holds
# a colon, and a colon needs no escaping in a URL path (the API's /gpus/{id}).
MIG_SEPARATOR: Final = ":mig"


def mig_uuid(parent: str, instance: int) -> str:
    """The identity of MIG instance ``instance`` (``GPU_I_ID``) of the GPU ``parent``."""
    return f"{parent}{MIG_SEPARATOR}{instance}"


@dataclass(frozen=True, slots=True)
class Gpu:
    """A GPU as DCGM reports it. ``uuid`` is its identity; ``index`` is only unique per host.

    A MIG instance (a GPU instance of a partitioned GPU, dcgm-exporter's ``GPU_I_PROFILE`` and
    ``GPU_I_ID`` labels) is a device of its own: ``uuid`` is ``mig_uuid(parent, instance)``,
    the parent's uuid with ``:mig<GPU_I_ID>``, so its datapoints never mix with the parent's;
    ``index``, ``device`` and ``model`` are the parent's.
    """

    uuid: str
    hostname: str
    index: int
    device: str
    model: str
    driver_version: str | None = None
    mig_profile: str | None = None
    mig_instance: int | None = None

    @property
    def parent_uuid(self) -> str | None:
        """The uuid of the physical GPU a MIG instance belongs to; ``None`` for a GPU."""
        if self.mig_instance is None:
            return None
        return self.uuid.removesuffix(f"{MIG_SEPARATOR}{self.mig_instance}")

    @property
    def physical_uuid(self) -> str:
        """The uuid of the physical GPU: its own, or its parent's for a MIG instance."""
        return self.parent_uuid or self.uuid


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

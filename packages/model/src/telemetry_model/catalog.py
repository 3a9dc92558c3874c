"""The DCGM metric catalog: every metric the pipeline accepts, with its unit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Metric:
    """One DCGM field: its exporter name, unit and meaning."""

    id: int
    name: str
    unit: str
    description: str


METRICS: Final[tuple[Metric, ...]] = (
    Metric(1, "DCGM_FI_DEV_GPU_UTIL", "%", "GPU utilization"),
    Metric(2, "DCGM_FI_DEV_MEM_COPY_UTIL", "%", "Memory copy engine utilization"),
    Metric(3, "DCGM_FI_DEV_ENC_UTIL", "%", "Video encoder utilization"),
    Metric(4, "DCGM_FI_DEV_DEC_UTIL", "%", "Video decoder utilization"),
    Metric(5, "DCGM_FI_DEV_POWER_USAGE", "W", "Power draw"),
    Metric(6, "DCGM_FI_DEV_GPU_TEMP", "C", "GPU temperature"),
    Metric(7, "DCGM_FI_DEV_FB_USED", "MiB", "Framebuffer memory used"),
    Metric(8, "DCGM_FI_DEV_FB_FREE", "MiB", "Framebuffer memory free"),
    Metric(9, "DCGM_FI_DEV_SM_CLOCK", "MHz", "Streaming multiprocessor clock"),
    Metric(10, "DCGM_FI_DEV_MEM_CLOCK", "MHz", "Memory clock"),
)

METRICS_BY_NAME: Final[dict[str, Metric]] = {m.name: m for m in METRICS}
METRICS_BY_ID: Final[dict[int, Metric]] = {m.id: m for m in METRICS}


def metric(name: str) -> Metric:
    """Return the catalog entry for ``name``; raise ``KeyError`` for an unknown metric."""
    return METRICS_BY_NAME[name]

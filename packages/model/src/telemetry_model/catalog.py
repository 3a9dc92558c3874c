"""The DCGM metric catalog: every metric the pipeline knows, with its unit and kind.

The first ten are the fields of the CSV in ``data/`` (ids 1..10, fixed since the first schema);
the rest are what NVIDIA's dcgm-exporter publishes with its default counters
(``etc/default-counters.csv``: clocks, temperatures, power and energy, PCIe, utilisation, XID
errors, framebuffer, NVLink, vGPU licence, row remapping, the ``DCGM_FI_PROF_*`` profiling
ratios) and the fields that file lists commented out, ready to switch on (throttling
violations, ECC, retired pages, NVLink errors, more profiling ratios). Ids are stable: a new
field gets the next free id, an id is never reused. ``migrate()`` writes the catalog into the
``metrics`` table.

A ``DCGM_FI_*`` field outside the catalog can still be stored (the streamer's allow-list
decides): the collector registers it in ``metrics`` on first sight, with an id from 10000 up
and an empty unit (``telemetry_store.ensure_metrics``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One DCGM field: its exporter name, unit, meaning and Prometheus type."""

    id: int
    name: str
    unit: str
    description: str
    kind: Kind = "gauge"


METRICS: Final[tuple[Metric, ...]] = (
    # The CSV's ten.
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
    # dcgm-exporter's default counters beyond the CSV's ten.
    Metric(11, "DCGM_FI_DEV_MEMORY_TEMP", "C", "Memory temperature"),
    Metric(
        12,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "mJ",
        "Total energy consumption since boot",
        "counter",
    ),
    Metric(13, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "count", "Total PCIe retries", "counter"),
    Metric(14, "DCGM_FI_DEV_XID_ERRORS", "xid", "Value of the last XID error encountered"),
    Metric(15, "DCGM_FI_DEV_FB_RESERVED", "MiB", "Framebuffer memory reserved"),
    Metric(
        16,
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "B",
        "NVLink bandwidth counter, all lanes",
        "counter",
    ),
    Metric(17, "DCGM_FI_DEV_VGPU_LICENSE_STATUS", "state", "vGPU license status"),
    Metric(
        18,
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "count",
        "Rows remapped for uncorrectable errors",
        "counter",
    ),
    Metric(
        19,
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "count",
        "Rows remapped for correctable errors",
        "counter",
    ),
    Metric(20, "DCGM_FI_DEV_ROW_REMAP_FAILURE", "bool", "Whether remapping of rows has failed"),
    Metric(
        21, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "ratio", "Ratio of time the graphics engine is active"
    ),
    Metric(
        22,
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "ratio",
        "Ratio of cycles the tensor (HMMA) pipe is active",
    ),
    Metric(
        23,
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "ratio",
        "Ratio of cycles the device memory interface is active sending or receiving data",
    ),
    Metric(
        24,
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "B/s",
        "Rate of data transmitted over PCIe",
    ),
    Metric(25, "DCGM_FI_PROF_PCIE_RX_BYTES", "B/s", "Rate of data received over PCIe"),
    # Listed commented out in the default counters: switched on by many fleets.
    Metric(
        26,
        "DCGM_FI_PROF_SM_ACTIVE",
        "ratio",
        "Ratio of cycles an SM has at least one warp assigned",
    ),
    Metric(27, "DCGM_FI_PROF_SM_OCCUPANCY", "ratio", "Ratio of warps resident on an SM"),
    Metric(28, "DCGM_FI_PROF_PIPE_FP64_ACTIVE", "ratio", "Ratio of cycles the fp64 pipes are busy"),
    Metric(29, "DCGM_FI_PROF_PIPE_FP32_ACTIVE", "ratio", "Ratio of cycles the fp32 pipes are busy"),
    Metric(30, "DCGM_FI_PROF_PIPE_FP16_ACTIVE", "ratio", "Ratio of cycles the fp16 pipes are busy"),
    Metric(
        31,
        "DCGM_FI_DEV_POWER_VIOLATION",
        "ns",
        "Throttling duration due to power constraints",
        "counter",
    ),
    Metric(
        32,
        "DCGM_FI_DEV_THERMAL_VIOLATION",
        "ns",
        "Throttling duration due to thermal constraints",
        "counter",
    ),
    Metric(
        33,
        "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
        "ns",
        "Throttling duration due to sync-boost constraints",
        "counter",
    ),
    Metric(
        34,
        "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
        "ns",
        "Throttling duration due to board limit constraints",
        "counter",
    ),
    Metric(
        35,
        "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
        "ns",
        "Throttling duration due to low utilization",
        "counter",
    ),
    Metric(
        36,
        "DCGM_FI_DEV_RELIABILITY_VIOLATION",
        "ns",
        "Throttling duration due to reliability constraints",
        "counter",
    ),
    Metric(
        37,
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "count",
        "Single-bit volatile ECC errors",
        "counter",
    ),
    Metric(
        38,
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "count",
        "Double-bit volatile ECC errors",
        "counter",
    ),
    Metric(
        39,
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "count",
        "Single-bit persistent ECC errors",
        "counter",
    ),
    Metric(
        40,
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "count",
        "Double-bit persistent ECC errors",
        "counter",
    ),
    Metric(
        41,
        "DCGM_FI_DEV_RETIRED_SBE",
        "pages",
        "Pages retired due to single-bit errors",
        "counter",
    ),
    Metric(
        42,
        "DCGM_FI_DEV_RETIRED_DBE",
        "pages",
        "Pages retired due to double-bit errors",
        "counter",
    ),
    Metric(43, "DCGM_FI_DEV_RETIRED_PENDING", "pages", "Pages pending retirement", "counter"),
    Metric(
        44,
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
        "count",
        "NVLink flow-control CRC errors",
        "counter",
    ),
    Metric(
        45,
        "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
        "count",
        "NVLink data CRC errors",
        "counter",
    ),
    Metric(
        46,
        "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
        "count",
        "NVLink retries",
        "counter",
    ),
    Metric(
        47,
        "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
        "count",
        "NVLink recovery errors",
        "counter",
    ),
    Metric(
        48,
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0",
        "B",
        "Active NVLink rx or tx data on lane 0, headers and payload",
        "counter",
    ),
)

METRICS_BY_NAME: Final[dict[str, Metric]] = {m.name: m for m in METRICS}
METRICS_BY_ID: Final[dict[int, Metric]] = {m.id: m for m in METRICS}

# The fields of the CSV in data/ (the catalog before it grew).
CSV_METRICS: Final[tuple[Metric, ...]] = METRICS[:10]

# The first id of a field registered at run time (outside the catalog); catalog ids stay below.
FIRST_DYNAMIC_METRIC_ID: Final = 10_000

# What a DCGM field is called: DCGM_FI_<GROUP>_<NAME> in capitals, digits and underscores.
_DCGM_FIELD: Final = re.compile(r"DCGM_FI_[A-Z0-9_]+\Z")


def metric(name: str) -> Metric:
    """Return the catalog entry for ``name``; raise ``KeyError`` for an unknown metric."""
    return METRICS_BY_NAME[name]


def is_dcgm_field(name: str) -> bool:
    """Whether ``name`` is shaped like a DCGM field (``DCGM_FI_...``), known or not."""
    return len(name) <= 128 and _DCGM_FIELD.match(name) is not None

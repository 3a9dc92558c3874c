"""Per-target health of the targets this streamer scrapes, exported at scrape time.

One series per target and metric, labelled ``target`` (the exporter's URL). That label is one
value per exporter, bounded by the fleet, and is what per-target health needs; each series
exists only while this streamer holds the target, so a target that moves to another streamer
moves its series with it (counters start again from zero there, which ``rate()`` handles).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .scrape import FAILURE_KINDS


@dataclass
class TargetHealth:
    """What the last scrapes of one target did."""

    address: str
    up: bool = False
    duration: float = 0.0
    last_success: float = 0.0  # Unix time of the last scrape that returned an exposition
    samples: int = 0
    bad_lines: int = 0
    slots: int = 0
    missed: int = 0
    consecutive_failures: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def failed(self, kind: str, duration: float) -> None:
        """Record a failed scrape."""
        self.up = False
        self.duration = duration
        self.consecutive_failures += 1
        self.failures[kind] += 1

    def succeeded(self, at: float, duration: float, samples: int, bad_lines: int) -> None:
        """Record a scrape that returned an exposition."""
        self.up = True
        self.duration = duration
        self.last_success = at
        self.samples = samples
        self.bad_lines += bad_lines
        self.consecutive_failures = 0


class TargetHealthCollector(Collector):
    """The health of the targets in ``targets`` (this streamer's, kept up to date by it)."""

    def __init__(self, targets: dict[int, TargetHealth]) -> None:
        self._targets = targets

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The families, read at scrape time."""
        prefix = "telemetry_streamer_target"
        up = GaugeMetricFamily(
            f"{prefix}_up", "1 if the last scrape of the target succeeded.", labels=["target"]
        )
        duration = GaugeMetricFamily(
            f"{prefix}_scrape_duration_seconds",
            "How long the last scrape of the target took.",
            labels=["target"],
        )
        success = GaugeMetricFamily(
            f"{prefix}_last_success_timestamp_seconds",
            "Unix time of the target's last successful scrape (0: none yet).",
            labels=["target"],
        )
        samples = GaugeMetricFamily(
            f"{prefix}_samples",
            "Samples kept from the target's last successful scrape.",
            labels=["target"],
        )
        failures = CounterMetricFamily(
            f"{prefix}_scrape_failures",
            "Failed scrapes of the target, by kind.",
            labels=["target", "kind"],
        )
        slots = CounterMetricFamily(
            f"{prefix}_slots", "Slots of the target stored by this streamer.", labels=["target"]
        )
        missed = CounterMetricFamily(
            f"{prefix}_slots_missed",
            "Slots of the target no streamer stored (seen at the next stored one).",
            labels=["target"],
        )
        bad = CounterMetricFamily(
            f"{prefix}_bad_lines",
            "Exposition lines of the target the parser refused.",
            labels=["target"],
        )
        for h in list(self._targets.values()):
            t = [h.address]
            up.add_metric(t, 1.0 if h.up else 0.0)
            duration.add_metric(t, h.duration)
            success.add_metric(t, h.last_success)
            samples.add_metric(t, h.samples)
            for kind in FAILURE_KINDS:
                failures.add_metric([h.address, kind], h.failures[kind])
            slots.add_metric(t, h.slots)
            missed.add_metric(t, h.missed)
            bad.add_metric(t, h.bad_lines)
        yield from (up, duration, success, samples, failures, slots, missed, bad)

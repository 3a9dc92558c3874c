"""Small line charts as inline SVG for the fleet view, and the colour scale of its grid.

No charting library: a chart is a few polylines, two axis labels per axis and a frame, which
the template writes as SVG. Coordinates are computed here so the template only places them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

WIDTH: Final = 640
HEIGHT: Final = 170
# Room for the axis labels: left, right, top, bottom.
PAD: Final = (52, 12, 10, 24)


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis label at ``at`` (x or y in the chart's coordinates)."""

    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """One metric's series, ready to draw: polylines (a gap splits them), axis ticks."""

    width: int
    height: int
    lines: list[str] = field(default_factory=list)
    dots: list[tuple[float, float]] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    points: int = 0

    @property
    def plot(self) -> tuple[float, float, float, float]:
        """The plot area: left, top, right, bottom."""
        return (PAD[0], PAD[2], self.width - PAD[1], self.height - PAD[3])


def number(value: float) -> str:
    """``value`` short enough for a label: 63, 156.6, 0.012, 7.3e+04."""
    if value == 0 or math.isnan(value):
        return "0" if value == 0 else "nan"
    magnitude = abs(value)
    if magnitude >= 100_000 or magnitude < 0.001:
        return f"{value:.2g}"
    if magnitude >= 100 or value == int(value):
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def line_chart(
    series: list[tuple[datetime, float]],
    start: datetime,
    end: datetime,
    step: timedelta,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """The chart of ``series`` (bucket start, value; oldest first) over [start, end].

    Buckets further apart than usual (one and a half steps, or two and a half times the
    series' median spacing when the datapoints are sparser than the buckets) are not joined:
    no line across a gap.
    """
    if not series:
        return Chart(width, height)
    left, top, right, bottom = PAD[0], PAD[2], width - PAD[1], height - PAD[3]
    low = min(v for _, v in series)
    high = max(v for _, v in series)
    if high == low:  # a flat line in the middle
        low, high = low - 1, high + 1
    span = (end - start).total_seconds() or 1.0

    def x(at: datetime) -> float:
        return round(left + (right - left) * (at - start).total_seconds() / span, 1)

    def y(value: float) -> float:
        return round(bottom - (bottom - top) * (value - low) / (high - low), 1)

    spacings = sorted(b[0] - a[0] for a, b in itertools.pairwise(series))
    usual = spacings[len(spacings) // 2] if spacings else step
    gap = max(step * 1.5, usual * 2.5)
    lines: list[str] = []
    run: list[str] = []
    previous: datetime | None = None
    for at, value in series:
        if previous is not None and at - previous > gap and run:
            lines.append(" ".join(run))
            run = []
        run.append(f"{x(at)},{y(value)}")
        previous = at
    lines.append(" ".join(run))
    middle = (low + high) / 2
    return Chart(
        width,
        height,
        lines=lines,
        dots=[(x(at), y(value)) for at, value in series] if len(series) <= 2 else [],
        y_ticks=[Tick(y(v), number(v)) for v in (high, middle, low)],
        x_ticks=[Tick(left, _time_label(start, span)), Tick(right, _time_label(end, span))],
        points=len(series),
    )


def _time_label(at: datetime, span: float) -> str:
    return at.strftime("%H:%M:%S" if span <= 86400 else "%m-%d %H:%M")


def colour(fraction: float | None) -> str:
    """The grid colour of a value at ``fraction`` of the scale (0 low: blue, 1 high: red)."""
    if fraction is None:
        return "#d9dde3"
    f = min(1.0, max(0.0, fraction))
    hue = 220 - 220 * f  # blue through green and yellow to red
    return f"hsl({hue:.0f}, 70%, {55 - 8 * f:.0f}%)"

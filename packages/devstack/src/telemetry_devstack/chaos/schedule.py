"""What a chaos run does and when: its settings and the fault schedule drawn from one seed.

The schedule is a pure function of the settings (the seed included), so a failing run can be
replayed with the same faults at the same moments (the machine's timing still varies).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

# Quiet seconds after the start (every service ready) and before the end of the faults: the
# stack warms up first, and the last fault's recovery is under way before producing stops.
WARMUP: Final = 10.0
SETTLE: Final = 15.0
# Seconds between the end of one database fault and the start of the next one.
DB_GAP: Final = 15.0


class Kind(StrEnum):
    """A kind of fault (or of scaling step)."""

    BROKER_KILL = "broker_kill"  # kill -9, then a restart on the same data dir and port
    COLLECTOR_KILL = "collector_kill"  # kill -9, then a replacement
    STREAMER_KILL = "streamer_kill"  # kill -9, then a replacement
    PG_CRASH = "pg_crash"  # kill -9 of the postmaster, then a start (crash recovery)
    PG_OUTAGE = "pg_outage"  # pg_ctl stop -m fast; PG_BACK starts it again
    PG_BACK = "pg_back"
    SCALE_UP = "scale_up"  # one more streamer or collector
    SCALE_DOWN = "scale_down"  # one fewer: SIGTERM (graceful) or kill -9


SIDES: Final = ("streamer", "collector")


@dataclass(frozen=True, slots=True)
class Event:
    """One step of the schedule, ``at`` seconds after the faults begin."""

    at: float
    kind: Kind
    side: str = ""  # scaling: "streamer" or "collector"
    graceful: bool = True  # scale-down: SIGTERM if true, else kill -9


@dataclass(frozen=True)
class ChaosConfig:
    """A chaos run: how long, how fast, which faults (counts default to a rate per 10 min)."""

    minutes: float = 30.0
    seed: int = 0
    outage_seconds: float = 120.0
    rate: float = 300.0  # datapoints per second per streamer
    chunk_size: int = 50
    max_streamers: int = 10
    max_collectors: int = 10
    broker_kills: int | None = None
    collector_kills: int | None = None
    streamer_kills: int | None = None
    pg_crashes: int | None = None
    pg_outages: int | None = None
    scale_cycles: int | None = None
    graceful_share: float = 0.5  # of the scale-down steps (the rest are kill -9)
    csv_path: Path = Path("data/dcgm_metrics_20250718_134233.csv")
    stream: str = "dcgm"
    topic: str = "telemetry"
    chunk_lease: float = 10.0  # STREAMER_CHUNK_LEASE: a killed streamer's chunk waits this long
    ack_wait: float = 30.0  # COLLECTOR_ACK_WAIT: a killed collector's leases wait this long
    drain_timeout: float = 300.0  # seconds without progress before the drain gives up
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Length of the faulted phase (producing), in seconds."""
        return self.minutes * 60.0

    def count(self, kind: Kind) -> int:
        """How many faults of ``kind`` (scale cycles for ``SCALE_UP``) the run makes."""
        per_10min = self.seconds / 600.0
        given, default = {
            Kind.BROKER_KILL: (self.broker_kills, 4 * per_10min),
            Kind.COLLECTOR_KILL: (self.collector_kills, 4 * per_10min),
            Kind.STREAMER_KILL: (self.streamer_kills, 4 * per_10min),
            Kind.PG_CRASH: (self.pg_crashes, per_10min),
            Kind.PG_OUTAGE: (self.pg_outages, per_10min),
            Kind.SCALE_UP: (self.scale_cycles, per_10min),
        }[kind]
        return given if given is not None else max(1, round(default))


def build_schedule(config: ChaosConfig) -> list[Event]:
    """Every fault and scaling step of the run, in time order (seeded by ``config.seed``).

    Raises ``ValueError`` when the database faults (outages with their length) do not fit in
    the run one after another.
    """
    rng = random.Random(config.seed)
    start, end = WARMUP, config.seconds - SETTLE
    if end <= start:
        raise ValueError(f"a run of {config.minutes} min is too short (at least 0.5 min)")
    events: list[Event] = []
    for kind in (Kind.BROKER_KILL, Kind.COLLECTOR_KILL, Kind.STREAMER_KILL):
        events += [Event(rng.uniform(start, end), kind) for _ in range(config.count(kind))]
    events += _database_faults(config, rng, start, end)
    cycles = config.count(Kind.SCALE_UP)
    if cycles:
        length = (end - start) / cycles
        for i in range(cycles):
            for side, top in (
                ("streamer", config.max_streamers),
                ("collector", config.max_collectors),
            ):
                events += _scale_cycle(rng, side, top, start + i * length, length, config)
    return sorted(events, key=lambda e: e.at)


def _database_faults(
    config: ChaosConfig, rng: random.Random, start: float, end: float
) -> list[Event]:
    """Crashes and outages, one at a time: each in a slot of its own, at a random moment."""
    kinds = [Kind.PG_CRASH] * config.count(Kind.PG_CRASH)
    kinds += [Kind.PG_OUTAGE] * config.count(Kind.PG_OUTAGE)
    if not kinds:
        return []
    rng.shuffle(kinds)
    slot = (end - start) / len(kinds)
    events = []
    for i, kind in enumerate(kinds):
        length = config.outage_seconds if kind is Kind.PG_OUTAGE else 0.0
        room = slot - length - DB_GAP
        if room < 0:
            raise ValueError(
                f"{len(kinds)} database faults (outages of {config.outage_seconds:g} s) do not"
                f" fit in {config.minutes:g} min; make the run longer or the outages fewer"
            )
        at = start + i * slot + rng.uniform(0, room)
        events.append(Event(at, kind))
        if kind is Kind.PG_OUTAGE:
            events.append(Event(at + length, Kind.PG_BACK))
    return events


def _scale_cycle(
    rng: random.Random, side: str, top: int, begin: float, length: float, config: ChaosConfig
) -> list[Event]:
    """1 -> ``top`` over the first 40 % of the window, ``top`` -> 1 over the last 40 %."""
    steps = top - 1
    if steps <= 0:
        return []
    ups = sorted(rng.uniform(begin, begin + 0.4 * length) for _ in range(steps))
    downs = sorted(rng.uniform(begin + 0.6 * length, begin + length) for _ in range(steps))
    graceful = [rng.random() < config.graceful_share for _ in range(steps)]
    if steps > 1 and 0 < config.graceful_share < 1 and len(set(graceful)) == 1:
        # Both ways of leaving in every cycle: SIGTERM (must exit 0) and kill -9.
        graceful[rng.randrange(steps)] = not graceful[0]
    return [Event(t, Kind.SCALE_UP, side) for t in ups] + [
        Event(t, Kind.SCALE_DOWN, side, g) for t, g in zip(downs, graceful, strict=True)
    ]


def describe(events: list[Event]) -> dict[str, int]:
    """Counts by kind (scale steps by side and how they leave)."""
    counts: dict[str, int] = {}
    for e in events:
        key = str(e.kind)
        if e.kind is Kind.SCALE_UP:
            key = f"scale_up_{e.side}"
        elif e.kind is Kind.SCALE_DOWN:
            key = f"scale_down_{e.side}_{'sigterm' if e.graceful else 'kill'}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def limit_for(next_seq: int, rows: int) -> int:
    """The loop count that covers every sequence number below ``next_seq``."""
    return max(1, math.ceil(next_seq / rows))

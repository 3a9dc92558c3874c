"""``task chaos``: the whole pipeline as processes under seeded faults, then exact accounting."""

from .accounting import Accounting, account
from .runner import Outcome, run_chaos, stable_port
from .schedule import ChaosConfig, Event, Kind, build_schedule, describe

__all__ = [
    "Accounting",
    "ChaosConfig",
    "Event",
    "Kind",
    "Outcome",
    "account",
    "build_schedule",
    "describe",
    "run_chaos",
    "stable_port",
]
